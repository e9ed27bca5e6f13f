"""AcuLa's waveform augmentations, computed on the accelerator inside the jitted step.

AcuLa (paper 004, sec. IV-B): "We apply on-the-fly data augmentation using the AugLy [23]
library, randomly selecting one transformation per sample from a set including a 5dB
volume increase, amplitude normalization, low-pass filtering (300Hz cutoff), or high-pass
filtering (3000Hz cutoff)." The paper names no filter type or order, so each transform
here is the AugLy function it names, as AugLy >= 0.2.1 (Dec 2021; 1.0.0 is the PyPI
release since 2022) implements it in ``augly/audio/functional.py``:

  gain       change_volume(volume_db=5)  -> sox ``vol 5 dB``: x * 10**(5/20), then sox
             rounds to its int32 sample type, which hard-clips to [-1, 1].
  normalize  normalize()                 -> librosa.util.normalize(x, norm=inf): peak
             normalisation, x / max|x|; a clip whose peak is below the dtype's smallest
             normal number is left as it is (librosa's threshold=None, fill=None).
  lowpass    low_pass_filter(cutoff_hz)  -> sox ``lowpass 300``; highpass_filter likewise
  highpass   high_pass_filter(cutoff_hz)    sox ``highpass 3000``. sox's default is the
             two-pole filter with Q = sqrt(1/2) ("gives a Butterworth response"), whose
             coefficients are the RBJ Audio-EQ-Cookbook ones (sox biquads.c; the same
             design as torchaudio.functional.lowpass_biquad/highpass_biquad, which round
             Q to 0.707), run in direct form I from zero state and clipped to [-1, 1]
             on output. (AugLy 0.1.x had first-order RC filters instead; its docstrings
             still say "6dB per octave", but the code has called sox since 0.2.1.)

Clipping: sox clips every output sample to its full scale, so ``clip=True`` (the default)
does the same, after the transform, for all four kinds; it only bites for the gain on a
clip whose peak exceeds 10**(-5/20) = 0.562 (and for filter overshoot near full scale).
``clip=False`` keeps float values above 1 instead: a pure volume change.

All four transforms are one biquad per row, y[n] = b0 x[n] + b1 x[n-1] + b2 x[n-2]
- a1 y[n-1] - a2 y[n-2] (gain and normalisation are b = [g, 0, 0], a = [1, 0, 0]), so
``random_augment`` gathers per-row coefficients and filters the batch once, instead of
running every transform on every row and selecting. The feed-forward half is a
vectorised 3-tap FIR; the recursive half is the linear state-space recurrence
s[n] = A s[n-1] + (u[n], 0) on s[n] = (y[n], y[n-1]), A = [[-a1, -a2], [1, 0]], solved
exactly (up to float rounding) without a per-sample Python loop, three ways:

  "chunked" (default)  blocks of L = ceil(sqrt(n)) samples: every block from zero state
                       at once, then the states entering the blocks, then each block's
                       zero-input response to its state added: ~2 sqrt(n) lax.scan steps
                       (716 for 8 s at 16 kHz), each vectorised over batch x blocks.
  "associative"        jax.lax.associative_scan over (A, v) pairs: O(log n) depth.
  "sequential"         lax.scan, one step per sample (128k steps for 8 s at 16 kHz).

Measured on this 2-core CPU (shared, noisy), random_augment on [24, 128000] float32,
jitted: chunked ~70 ms run / ~2.3 s compile, sequential ~45-60 ms / ~1.4 s, associative
~130-180 ms / 12-23 s. Chunked is the default because its step count does not grow with
the clip (a 128k-step while loop is slow on an accelerator, one kernel launch per step)
and it compiles fast; all three agree with scipy.signal.lfilter to ~5e-6.

Padded batches: ``wave`` is [batch, samples] with only the first ``lengths[i]`` samples of
row i real. The input is masked to that prefix first (so nothing in the padding reaches
the peak or the filter state), the filters are causal and start from zero state at
sample 0 (so the real part is exactly what filtering the unpadded clip gives), and the
output's padding is zeroed again (a filter's tail must not reach a later stage that
reads the padding).

Randomness is ``jax.random`` only: the kind drawn for each row is a pure function of
the key, so a run is reproducible and resumes exactly from a checkpointed key.
Parameters are Python values validated at trace time (bind them before jitting, e.g.
``jax.jit(functools.partial(random_augment, sample_rate=16000))``); a bad one raises a
``ValueError`` naming it. Computation is in the input's float dtype (float32).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

KINDS = ("gain", "normalize", "lowpass", "highpass")
# sox's lowpass/highpass default width (hilo2_getopts: "Default to Butterworth").
BUTTERWORTH_Q = math.sqrt(0.5)


# ----------------------------------------------------------------------------- helpers


def _as_float(x: Any, name: str) -> jax.Array:
  x = jnp.asarray(x)
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise TypeError(f"{name} must be a floating-point array, got dtype {x.dtype}")
  if x.dtype.itemsize < 4:  # half precision would lose the filters' stop band
    x = x.astype(jnp.float32)
  return x


def _check_number(value: Any, name: str, positive: bool = False) -> float:
  if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) or (
      not math.isfinite(value)) or (positive and not value > 0):
    raise ValueError(f"{name}={value!r} must be a {'positive ' if positive else ''}"
                     "finite number")
  return float(value)


def _check_cutoff(cutoff_hz: Any, sample_rate: Any, name: str) -> tuple[float, float]:
  sr = _check_number(sample_rate, "sample_rate", positive=True)
  fc = _check_number(cutoff_hz, name, positive=True)
  if not fc < sr / 2:  # the bilinear design needs 0 < w0 < pi
    raise ValueError(f"{name}={cutoff_hz!r} must be below the Nyquist frequency "
                     f"{sr / 2:g} Hz (sample_rate={sample_rate!r})")
  return fc, sr


def _mask(wave: jax.Array, lengths: Any) -> jax.Array | None:
  """[batch, samples] bool, True on the real prefix of each row; None = all real."""
  if lengths is None:
    return None
  lengths = jnp.asarray(lengths)
  if lengths.shape != wave.shape[:-1]:
    raise ValueError(f"lengths has shape {lengths.shape}, expected {wave.shape[:-1]} "
                     f"(one per row of wave {wave.shape})")
  return jnp.arange(wave.shape[-1]) < lengths[..., None]


def _zero_padding(x: jax.Array, mask: jax.Array | None) -> jax.Array:
  return x if mask is None else jnp.where(mask, x, jnp.zeros((), x.dtype))


def _clip(x: jax.Array, clip: bool) -> jax.Array:
  return jnp.clip(x, -1.0, 1.0) if clip else x


def biquad_coefficients(kind: str, *, sample_rate: float, cutoff_hz: float,
                        q: float = BUTTERWORTH_Q) -> tuple[np.ndarray, np.ndarray]:
  """(b, a), a[0] == 1, of sox's two-pole ``lowpass``/``highpass`` (RBJ cookbook), float64.

  Same formulas as sox biquads.c and torchaudio.functional.{low,high}pass_biquad:
  w0 = 2 pi fc / fs, alpha = sin(w0) / (2 Q), normalised by a0 = 1 + alpha.
  """
  fc, sr = _check_cutoff(cutoff_hz, sample_rate, "cutoff_hz")
  q = _check_number(q, "q", positive=True)
  w0 = 2.0 * math.pi * fc / sr
  cos_w0, alpha = math.cos(w0), math.sin(w0) / (2.0 * q)
  if kind == "lowpass":
    b = np.array([(1.0 - cos_w0) / 2.0, 1.0 - cos_w0, (1.0 - cos_w0) / 2.0])
  elif kind == "highpass":
    b = np.array([(1.0 + cos_w0) / 2.0, -(1.0 + cos_w0), (1.0 + cos_w0) / 2.0])
  else:
    raise ValueError(f"kind={kind!r} must be 'lowpass' or 'highpass'")
  a = np.array([1.0 + alpha, -2.0 * cos_w0, 1.0 - alpha])
  return b / a[0], a / a[0]


# ----------------------------------------------------------------------------- biquad


def _ar2_associative(u: jax.Array, c1: jax.Array, c2: jax.Array) -> jax.Array:
  """y[n] = u[n] + c1 y[n-1] + c2 y[n-2], zero state, along the last axis.

  Each step is the affine map s -> A s + (u[n], 0) on s = (y[n], y[n-1]) with
  A = [[c1, c2], [1, 0]]; composing maps is associative, so a parallel prefix scan over
  (A, v) pairs gives every s[n]. The 2x2 matrices are six separate arrays (four entries
  plus the two of v) so the combine is plain elementwise arithmetic. The powers of A
  shrink geometrically (poles inside the unit circle), so the scan is as well
  conditioned as the sequential loop.
  """
  shape = u.shape
  m00 = jnp.broadcast_to(c1, shape)
  m01 = jnp.broadcast_to(c2, shape)
  m10 = jnp.ones(shape, u.dtype)
  m11 = jnp.zeros(shape, u.dtype)
  v0, v1 = u, jnp.zeros(shape, u.dtype)

  def combine(first, second):
    # The map "first, then second": M = M2 M1, v = M2 v1 + v2.
    a00, a01, a10, a11, p0, p1 = first
    b00, b01, b10, b11, q0, q1 = second
    return (b00 * a00 + b01 * a10, b00 * a01 + b01 * a11,
            b10 * a00 + b11 * a10, b10 * a01 + b11 * a11,
            b00 * p0 + b01 * p1 + q0, b10 * p0 + b11 * p1 + q1)

  out = jax.lax.associative_scan(combine, (m00, m01, m10, m11, v0, v1), axis=-1)
  return out[4]


def _ar2_sequential(u: jax.Array, c1: jax.Array, c2: jax.Array) -> jax.Array:
  """Same recurrence with lax.scan over samples (one step per sample, all rows at once)."""
  lead = u.shape[:-1]
  c1 = jnp.broadcast_to(c1, lead + (1,))[..., 0]
  c2 = jnp.broadcast_to(c2, lead + (1,))[..., 0]

  def step(carry, un):
    y1, y2 = carry
    y = un + c1 * y1 + c2 * y2
    return (y, y1), y

  zero = jnp.zeros(lead, u.dtype)
  _, ys = jax.lax.scan(step, (zero, zero), jnp.moveaxis(u, -1, 0))
  return jnp.moveaxis(ys, 0, -1)


def _ar2_chunked(u: jax.Array, c1: jax.Array, c2: jax.Array) -> jax.Array:
  """Same recurrence in blocks of L ~ sqrt(n) samples: about 2 sqrt(n) sequential steps.

  1. Every block from zero state, all blocks at once: an L-step lax.scan over [.., nb].
  2. The true state entering each block: an nb-step lax.scan over the block ends, since
     the state after block k is its zero-state end plus A^L (state before it).
  3. Add each block's response to its entering state, y[j] += g0[j] s0 + g1[j] s1, where
     (g0, g1) is the zero-input response to a unit y[-1] / y[-2] (first row of A^(j+1)).
  Linear superposition of the same recurrence, so exact up to float rounding; the
  responses decay geometrically, so nothing grows.
  """
  lead, n = u.shape[:-1], u.shape[-1]
  if n < 4:  # too short to split
    return _ar2_sequential(u, c1, c2)
  length = math.isqrt(n - 1) + 1                                     # ceil(sqrt(n)) >= 2
  nb = -(-n // length)
  u = jnp.pad(u, [(0, 0)] * len(lead) + [(0, nb * length - n)])
  blocks = jnp.moveaxis(u.reshape(lead + (nb, length)), -1, 0)     # [L, ..., nb]
  c1 = jnp.broadcast_to(c1, lead + (1,))
  c2 = jnp.broadcast_to(c2, lead + (1,))

  def step(carry, un):
    y1, y2 = carry
    y = c1 * y1 + c2 * y2 if un is None else un + c1 * y1 + c2 * y2
    return (y, y1), y

  zero = jnp.zeros(lead + (nb,), u.dtype)
  _, local = jax.lax.scan(step, (zero, zero), blocks)                # [L, ..., nb]
  # Zero-input responses to the two unit initial states, stacked on a leading axis.
  unit = lambda v: jnp.broadcast_to(
      jnp.array(v, u.dtype).reshape((2,) + (1,) * c1.ndim), (2,) + c1.shape)
  init = (unit([1, 0]), unit([0, 1]))
  _, resp = jax.lax.scan(step, init, None, length=length)            # [L, 2, ..., 1]
  g0, g1 = resp[:, 0], resp[:, 1]                                    # [L, ..., 1]

  def carry_state(state, ends):
    s0, s1 = state
    e1, e2 = ends                                                    # zero-state y[L-1], y[L-2]
    new = (e1 + g0[-1, ..., 0] * s0 + g1[-1, ..., 0] * s1,
           e2 + g0[-2, ..., 0] * s0 + g1[-2, ..., 0] * s1)
    return new, state

  ends = (jnp.moveaxis(local[-1], -1, 0), jnp.moveaxis(local[-2], -1, 0))
  zero = jnp.zeros(lead, u.dtype)
  _, entering = jax.lax.scan(carry_state, (zero, zero), ends)        # 2 x [nb, ...]
  s0, s1 = (jnp.moveaxis(s, 0, -1) for s in entering)                # [..., nb]
  y = local + g0 * s0 + g1 * s1                                      # [L, ..., nb]
  return jnp.moveaxis(y, 0, -1).reshape(lead + (nb * length,))[..., :n]


def biquad(wave: Any, b: Any, a: Any, lengths: Any = None, *, clip: bool = False,
           method: str = "chunked") -> jax.Array:
  """scipy.signal.lfilter(b, a, wave) for one biquad, from zero state, on the device.

  ``b`` and ``a`` are length-3 (a[0] == 1; normalise first) for all rows, or
  [batch, 3] for one filter per row. Padding beyond ``lengths`` is zeroed before and
  after filtering. ``clip`` clips the output to [-1, 1] as sox does.
  """
  wave = _as_float(wave, "wave")
  if wave.ndim < 1:
    raise ValueError(f"wave must have a samples axis, got shape {wave.shape}")
  if method not in _METHODS:
    raise ValueError(f"method={method!r} must be one of {tuple(_METHODS)}")
  if isinstance(a, (np.ndarray, list, tuple)) and np.ndim(a) == 1 and a[0] != 1:
    raise ValueError(f"a={a!r}: a[0] must be 1 (divide b and a by a[0])")
  b = jnp.asarray(b, wave.dtype)
  a = jnp.asarray(a, wave.dtype)
  if b.shape[-1:] != (3,) or a.shape[-1:] != (3,):
    raise ValueError(f"b and a must have 3 coefficients each, got shapes {b.shape}, {a.shape}")
  mask = _mask(wave, lengths)
  x = _zero_padding(wave, mask)
  n = x.shape[-1]
  # Feed-forward half: a 3-tap FIR with zeros before sample 0 (the zero initial state).
  xp = jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(2, 0)])
  coef = lambda c, i: c[..., i, None] if c.ndim > 1 else c[i]
  u = coef(b, 0) * x + coef(b, 1) * xp[..., 1:n + 1] + coef(b, 2) * xp[..., :n]
  y = _METHODS[method](u, -coef(a, 1), -coef(a, 2))
  return _zero_padding(_clip(y, clip), mask)


_METHODS = {"chunked": _ar2_chunked, "associative": _ar2_associative,
            "sequential": _ar2_sequential}


# ----------------------------------------------------------------------------- transforms


def gain(wave: Any, lengths: Any = None, *, gain_db: float = 5.0,
         clip: bool = True) -> jax.Array:
  """AugLy change_volume / sox ``vol``: wave * 10**(gain_db/20); clip=True clips to [-1, 1]
  as sox does, clip=False keeps the float values above 1."""
  wave = _as_float(wave, "wave")
  factor = 10.0 ** (_check_number(gain_db, "gain_db") / 20.0)
  mask = _mask(wave, lengths)
  return _zero_padding(_clip(wave * jnp.asarray(factor, wave.dtype), clip), mask)


def _peak_scale(x: jax.Array) -> jax.Array:
  """[..., 1] factor 1/max|x| (x already masked); 1 where the peak is below the dtype's
  smallest normal number, as librosa.util.normalize(threshold=None, fill=None) does."""
  peak = jnp.max(jnp.abs(x), axis=-1, keepdims=True)
  tiny = jnp.asarray(np.finfo(x.dtype).tiny, x.dtype)
  return jnp.where(peak < tiny, jnp.ones((), x.dtype), 1.0 / jnp.where(peak < tiny, 1.0, peak))


def normalize(wave: Any, lengths: Any = None) -> jax.Array:
  """AugLy normalize / librosa.util.normalize(norm=inf): peak of the real part -> 1.

  The peak is taken over the first lengths[i] samples only. (The reference divides by
  the peak; multiplying by its reciprocal differs by at most an ulp and matches how
  random_augment applies it.)
  """
  wave = _as_float(wave, "wave")
  mask = _mask(wave, lengths)
  x = _zero_padding(wave, mask)
  return x * _peak_scale(x)


def lowpass(wave: Any, lengths: Any = None, *, sample_rate: float, cutoff_hz: float = 300.0,
            q: float = BUTTERWORTH_Q, clip: bool = True,
            method: str = "chunked") -> jax.Array:
  """AugLy low_pass_filter / sox ``lowpass``: two-pole RBJ low-pass, Q = sqrt(1/2)."""
  b, a = biquad_coefficients("lowpass", sample_rate=sample_rate, cutoff_hz=cutoff_hz, q=q)
  return biquad(wave, b, a, lengths, clip=clip, method=method)


def highpass(wave: Any, lengths: Any = None, *, sample_rate: float,
             cutoff_hz: float = 3000.0, q: float = BUTTERWORTH_Q, clip: bool = True,
             method: str = "chunked") -> jax.Array:
  """AugLy high_pass_filter / sox ``highpass``: two-pole RBJ high-pass, Q = sqrt(1/2)."""
  b, a = biquad_coefficients("highpass", sample_rate=sample_rate, cutoff_hz=cutoff_hz, q=q)
  return biquad(wave, b, a, lengths, clip=clip, method=method)


# ----------------------------------------------------------------------------- random


def _check_kinds(kinds: Any) -> tuple[str, ...]:
  if isinstance(kinds, str):  # "gain" would otherwise iterate as 'g', 'a', ...
    kinds = (kinds,)
  kinds = tuple(kinds)
  if not kinds:
    raise ValueError("kinds must name at least one transform")
  for kind in kinds:
    if kind not in KINDS:
      raise ValueError(f"unknown augmentation kind {kind!r} in kinds={kinds!r}; "
                       f"choose from {KINDS}")
  return kinds


def draw_kinds(rng: jax.Array, batch: int, kinds: Sequence[str] = KINDS) -> jax.Array:
  """[batch] int32 indices into ``kinds``, uniform: the draw random_augment makes.

  A kind listed twice is drawn twice as often.
  """
  kinds = _check_kinds(kinds)
  return jax.random.randint(rng, (batch,), 0, len(kinds), dtype=jnp.int32)


def random_augment(rng: jax.Array, wave: Any, lengths: Any, *, sample_rate: float,
                   kinds: Sequence[str] = KINDS, gain_db: float = 5.0,
                   lowpass_hz: float = 300.0, highpass_hz: float = 3000.0,
                   q: float = BUTTERWORTH_Q, clip: bool = True,
                   method: str = "chunked") -> jax.Array:
  """One transform per row, drawn uniformly from ``kinds`` with ``rng``: AcuLa's recipe.

  wave: [batch, samples] float; lengths: [batch] ints (None = every sample is real).
  Row i is exactly what gain / normalize / lowpass / highpass (same keywords) give for
  that row, with kinds[draw_kinds(rng, batch, kinds)[i]]. Returns [batch, samples] in
  wave's dtype with the padding zero.
  """
  kinds = _check_kinds(kinds)
  # Checked here too so that the error names random_augment's own keyword.
  _check_cutoff(lowpass_hz, sample_rate, "lowpass_hz")
  _check_cutoff(highpass_hz, sample_rate, "highpass_hz")
  wave = _as_float(wave, "wave")
  if wave.ndim != 2:
    raise ValueError(f"wave must be [batch, samples], got shape {wave.shape}")
  # Every row's transform as biquad coefficients (b0, b1, b2, a1, a2); normalisation's
  # b0 is the row's 1/peak, filled in below. Coefficients are built in float64.
  table = []
  for kind in kinds:
    if kind == "gain":
      table.append([10.0 ** (_check_number(gain_db, "gain_db") / 20.0), 0, 0, 0, 0])
    elif kind == "normalize":
      table.append([1.0, 0, 0, 0, 0])
    else:
      b, a = biquad_coefficients(kind, sample_rate=sample_rate, q=q,
                                 cutoff_hz=lowpass_hz if kind == "lowpass" else highpass_hz)
      table.append([b[0], b[1], b[2], a[1], a[2]])
  table = jnp.asarray(np.asarray(table, np.float64), wave.dtype)
  index = draw_kinds(rng, wave.shape[0], kinds)
  coef = table[index]                                               # [batch, 5]
  if "normalize" in kinds:
    mask = _mask(wave, lengths)
    scale = _peak_scale(_zero_padding(wave, mask))[:, 0]
    is_norm = jnp.asarray([k == "normalize" for k in kinds])[index]
    coef = coef.at[:, 0].set(jnp.where(is_norm, scale, coef[:, 0]))
  ones = jnp.ones_like(coef[:, :1])
  return biquad(wave, coef[:, :3], jnp.concatenate([ones, coef[:, 3:]], axis=1), lengths,
                clip=clip, method=method)


# ----------------------------------------------------------------------------- recording chain
#
# The recording chain: what happens to a voice between the mouth and the file, so that a
# model trained on clean synthetic speech hears people recorded in rooms, on phones and
# through codecs. Stages run in the physical order, each drawn independently per clip
# with its own probability (so a clip gets none, one or several):
#
#   reverb  room reverberation: convolution with an impulse response simulated on the
#           device as a unit direct path plus Gaussian noise under an exponential decay of
#           60 dB in a drawn RT60 (Schroeder's statistical model of a diffuse tail; the
#           same model pyroomacoustics and Habets' generator use for the late part), its
#           tail energy set to a drawn direct-to-reverberant ratio (DRR).
#   noise   additive noise at a drawn SNR over the clip's real samples: white, pink
#           (1/f power) or brown (1/f^2), drawn per clip.
#   eq      random equalisation: ``eq_bands`` RBJ-cookbook peaking biquads with drawn
#           centre frequency (log-uniform), gain (uniform in +-eq_gain_db) and Q.
#   band    a band limit drawn from ``bands`` ((low_hz, high_hz) pairs, 0 = no edge; the
#           telephone band is (300, 3400)): 4th-order Butterworth high- and low-pass
#           (two RBJ sections each, Q = 1/(2 sin((2k-1) pi/8)): scipy.signal.butter(4)).
#   codec   mu-law companding with 8-bit quantisation (G.711's curve, as WaveNet and
#           librosa.mu_compress/mu_expand(quantize=True) implement it), input clipped.
#   gain    a level change drawn uniformly in ``gain_db`` (lo, hi), clipped to [-1, 1].
#
# ``keep_level`` (default True) rescales every clip, before the gain stage, to the RMS its
# real samples had on entry: reverb, noise and EQ then leave the level a loudness label
# describes where it was (the demo's corpus labels quiet / normal / loud 6+ dB apart), and
# only the gain stage, kept small, moves it.
#
# Cost: the linear stages (reverb, EQ, band) are LTI, so each clip's whole linear part is
# one spectrum: the stages' frequency responses multiplied on one rFFT grid and applied
# with one rFFT / irFFT pair (reverb before the noise, EQ and band after it: two pairs).
# An IIR response sampled on an N-point grid is its impulse response aliased modulo N, so
# N leaves ``tail_pad`` samples (default 4096, 0.26 s at 16 kHz) after the clip and the
# impulse response: the slowest biquad drawn here (a 12 dB peak at 60 Hz, Q 4) decays
# below 1e-7 within 4096 samples, so the result is lfilter's to float32 rounding.
#
# Padding: the input is masked to each row's real prefix, filters start from zero state
# at sample 0, every level (SNR, keep_level) is measured over the real samples only, the
# reverb tail past a clip's end is cut (the clip keeps its length) and the output's
# padding is zero.

CHAIN_STAGES = ("reverb", "noise", "eq", "band", "codec", "gain")
NOISE_COLORS = ("white", "pink", "brown")
TELEPHONE_BAND = (300.0, 3400.0)
# 4th-order Butterworth as two second-order sections: Q_k = 1 / (2 sin((2k - 1) pi / 8)).
BUTTERWORTH4_Q = tuple(1.0 / (2.0 * math.sin((2 * k - 1) * math.pi / 8)) for k in (1, 2))


def _check_range(value: Any, name: str, lo: float | None = None,
                 hi: float | None = None) -> tuple[float, float]:
  """A (low, high) pair of finite numbers, low <= high, inside [lo, hi] where given."""
  try:
    a, b = value
  except (TypeError, ValueError):
    raise ValueError(f"{name}={value!r} must be a (low, high) pair") from None
  a, b = _check_number(a, name), _check_number(b, name)
  if not a <= b or (lo is not None and a < lo) or (hi is not None and b > hi):
    raise ValueError(f"{name}={value!r} must be (low, high) with low <= high"
                     + (f" inside [{lo:g}, {hi:g}]" if lo is not None and hi is not None else
                        f", low >= {lo:g}" if lo is not None else ""))
  return a, b


def _check_probability(value: Any, name: str) -> float:
  p = _check_number(value, name)
  if not 0.0 <= p <= 1.0:
    raise ValueError(f"{name}={value!r} must be a probability in [0, 1]")
  return p


def rbj_coefficients(kind: str, w0: Any, q: Any, gain_db: Any = 0.0):
  """(b [..., 3], a [..., 3]), a[..., 0] == 1: RBJ Audio-EQ-Cookbook biquads ``lowpass``,
  ``highpass`` or ``peaking`` for arrays of w0 = 2 pi f / fs (radians/sample), Q and (for
  peaking) gain in dB, in jnp so they may be drawn on the device."""
  w0, q = jnp.asarray(w0), jnp.asarray(q)
  cos_w0, alpha = jnp.cos(w0), jnp.sin(w0) / (2.0 * q)
  one = jnp.ones_like(w0)
  if kind == "lowpass":
    b = [(1 - cos_w0) / 2, 1 - cos_w0, (1 - cos_w0) / 2]
    a = [1 + alpha, -2 * cos_w0, 1 - alpha]
  elif kind == "highpass":
    b = [(1 + cos_w0) / 2, -(1 + cos_w0), (1 + cos_w0) / 2]
    a = [1 + alpha, -2 * cos_w0, 1 - alpha]
  elif kind == "peaking":
    amp = 10.0 ** (jnp.asarray(gain_db) / 40.0)
    b = [1 + alpha * amp, -2 * cos_w0, 1 - alpha * amp]
    a = [1 + alpha / amp, -2 * cos_w0, 1 - alpha / amp]
  else:
    raise ValueError(f"kind={kind!r} must be 'lowpass', 'highpass' or 'peaking'")
  b = jnp.stack([c * one for c in b], -1)
  a = jnp.stack([c * one for c in a], -1)
  return b / a[..., :1], a / a[..., :1]


def biquad_response(b: jax.Array, a: jax.Array, n_fft: int) -> jax.Array:
  """[..., n_fft // 2 + 1] complex frequency response of biquads (b, a) [..., 3] on the
  rFFT grid of n_fft points: scipy.signal.freqz(b, a, worN=n_fft // 2 + 1,
  include_nyquist=True)."""
  w = 2.0 * jnp.pi * jnp.arange(n_fft // 2 + 1) / n_fft
  z1 = jnp.exp(-1j * w)                                             # z^-1
  z2 = z1 * z1
  num = b[..., 0:1] + b[..., 1:2] * z1 + b[..., 2:3] * z2
  den = a[..., 0:1] + a[..., 1:2] * z1 + a[..., 2:3] * z2
  return num / den


def fft_size(n: int) -> int:
  """The smallest 2^a 3^b 5^c >= n: FFTs of these sizes are as fast per point as powers of
  two, and a 3 s clip plus a 0.5 s impulse response (55,999 samples) takes 56,250 points
  rather than 65,536."""
  best = 1 << max(n - 1, 0).bit_length()
  p5 = 1
  while p5 < best:
    p35 = p5
    while p35 < best:
      m = p35
      while m < n:
        m *= 2
      best = min(best, m)
      p35 *= 3
    p5 *= 5
  return best


def _rms(x: jax.Array, count: jax.Array) -> jax.Array:
  """[..., 1] RMS over a row's real samples (x already masked; count = their number)."""
  return jnp.sqrt(jnp.sum(x * x, axis=-1, keepdims=True) / jnp.maximum(count, 1))


def _lengths_or_full(wave: jax.Array, lengths: Any) -> jax.Array:
  if lengths is None:
    return jnp.full(wave.shape[:-1], wave.shape[-1], jnp.int32)
  _mask(wave, lengths)  # checks the shape
  return jnp.asarray(lengths)


def reverb(wave: Any, ir: Any, lengths: Any = None) -> jax.Array:
  """scipy.signal.fftconvolve(wave[i, :lengths[i]], ir[i])[:lengths[i]] for every row:
  convolution with an impulse response ([ir_len] for all rows or [batch, ir_len]), the
  tail past each clip's end cut, the padding zero."""
  wave = _as_float(wave, "wave")
  ir = jnp.asarray(ir, wave.dtype)
  mask = _mask(wave, lengths)
  x = _zero_padding(wave, mask)
  n = x.shape[-1]
  n_fft = fft_size(n + ir.shape[-1] - 1)                            # linear, not circular
  y = jnp.fft.irfft(jnp.fft.rfft(x, n_fft) * jnp.fft.rfft(ir, n_fft), n_fft)[..., :n]
  return _zero_padding(y.astype(wave.dtype), mask)


def simulated_ir(rng: jax.Array, rt60: Any, drr_db: Any, *, sample_rate: float,
                 ir_seconds: float = 0.5) -> jax.Array:
  """[batch, ir_seconds * sample_rate] room impulse responses, one per (rt60, drr_db) row.

  h[0] = 1 (the direct path); h[k] = c e[k] 10**(-3 k / (rt60 fs)) for k >= 1, e white
  Gaussian: the energy decays 60 dB in rt60 seconds. c sets the tail's energy to
  10**(-drr_db / 10), the direct-to-reverberant ratio drr_db.
  """
  sr = _check_number(sample_rate, "sample_rate", positive=True)
  n = int(round(_check_number(ir_seconds, "ir_seconds", positive=True) * sr))
  if n < 2:
    raise ValueError(f"ir_seconds={ir_seconds!r} is shorter than 2 samples at {sr:g} Hz")
  rt60 = jnp.asarray(rt60, jnp.float32)[:, None]
  drr_db = jnp.asarray(drr_db, jnp.float32)[:, None]
  k = jnp.arange(1, n, dtype=jnp.float32)
  tail = jax.random.normal(rng, (rt60.shape[0], n - 1)) * 10.0 ** (-3.0 * k / (rt60 * sr))
  energy = jnp.sum(tail * tail, axis=-1, keepdims=True)
  tail = tail * jnp.sqrt(10.0 ** (-drr_db / 10.0) / jnp.maximum(energy, 1e-30))
  return jnp.concatenate([jnp.ones_like(rt60), tail], axis=-1)


def colored_noise(rng: jax.Array, shape: tuple[int, int], exponent: Any) -> jax.Array:
  """[batch, samples] Gaussian noise whose power spectrum goes as 1/f**exponent per row
  (0 white, 1 pink, 2 brown), DC removed; unit RMS before any masking. Shaped in the
  frequency domain: a complex Gaussian spectrum times f**(-exponent / 2), one irFFT."""
  batch, n = shape
  n_fft = fft_size(max(n, 2))
  bins = n_fft // 2 + 1
  re, im = jax.random.normal(rng, (2, batch, bins))
  f = jnp.arange(bins, dtype=jnp.float32)
  exponent = jnp.asarray(exponent, jnp.float32).reshape(-1, 1)
  shape_f = jnp.where(f > 0, jnp.maximum(f, 1.0) ** (-exponent / 2.0), 0.0)
  noise = jnp.fft.irfft((re + 1j * im) * shape_f, n_fft)[..., :n]
  return noise / jnp.maximum(jnp.sqrt(jnp.mean(noise * noise, -1, keepdims=True)), 1e-30)


def add_noise(wave: Any, noise: Any, snr_db: Any, lengths: Any = None) -> jax.Array:
  """wave + s * noise with s per row such that 10 log10(P_wave / P_(s noise)) = snr_db,
  both powers over the row's real samples; a silent row stays silent."""
  wave = _as_float(wave, "wave")
  mask = _mask(wave, lengths)
  count = _lengths_or_full(wave, lengths)[..., None]
  x = _zero_padding(wave, mask)
  nz = _zero_padding(jnp.asarray(noise, wave.dtype), mask)
  snr = jnp.asarray(snr_db, wave.dtype).reshape(-1, 1)
  scale = _rms(x, count) / jnp.maximum(_rms(nz, count), 1e-30) * 10.0 ** (-snr / 20.0)
  return _zero_padding(x + scale * nz, mask)


def mu_law(wave: Any, lengths: Any = None, *, mu: int = 255) -> jax.Array:
  """8-bit mu-law codec round trip: librosa.mu_expand(librosa.mu_compress(clip(x, -1, 1),
  mu, quantize=True), mu, quantize=True). Companded y = sign(x) ln(1 + mu|x|) / ln(1 + mu)
  is quantised to the mu + 1 bins of numpy.digitize(y, linspace(-1, 1, mu + 1),
  right=True), then decoded."""
  if isinstance(mu, bool) or not isinstance(mu, (int, np.integer)) or mu < 1:
    raise ValueError(f"mu={mu!r} must be a positive integer (255: 8-bit mu-law)")
  wave = _as_float(wave, "wave")
  mask = _mask(wave, lengths)
  x = jnp.clip(_zero_padding(wave, mask), -1.0, 1.0)
  y = jnp.sign(x) * jnp.log1p(mu * jnp.abs(x)) / math.log1p(mu)
  # digitize(right=True) over the edges -1 + 2 i / mu is i = ceil((y + 1) mu / 2), by
  # arithmetic rather than a search (a search over 256 edges costs 4x the whole codec).
  # 1e-4 bin of slack: XLA's float32 log1p puts full scale at |y| = 1 - 6e-8, which would
  # otherwise move -1 into the next bin; samples that close to another edge are ~1e-4.
  code = jnp.clip(jnp.ceil((y + 1.0) * (mu / 2.0) - 1e-4), 0, mu) - (mu + 1) // 2
  y = code.astype(wave.dtype) * (2.0 / (1 + mu))
  x = jnp.sign(y) / mu * jnp.expm1(jnp.abs(y) * math.log1p(mu))   # (1 + mu)^|y| - 1
  return _zero_padding(x.astype(wave.dtype), mask)


def band_coefficients(low_hz: float, high_hz: float, sample_rate: float):
  """(b [4, 3], a [4, 3]) float64: 4th-order Butterworth high-pass at low_hz then low-pass
  at high_hz as RBJ sections (identity where an edge is 0): the ``band`` stage."""
  sr = _check_number(sample_rate, "sample_rate", positive=True)
  b, a = [], []
  for kind, fc in (("highpass", low_hz), ("lowpass", high_hz)):
    for q in BUTTERWORTH4_Q:
      if fc:
        bb, aa = biquad_coefficients(kind, sample_rate=sr, cutoff_hz=fc, q=q)
      else:
        bb, aa = np.array([1.0, 0, 0]), np.array([1.0, 0, 0])
      b.append(bb)
      a.append(aa)
  return np.stack(b), np.stack(a)


def _check_bands(bands: Any, sample_rate: float) -> tuple[tuple[float, float], ...]:
  try:
    bands = tuple((float(lo), float(hi)) for lo, hi in bands)
  except (TypeError, ValueError):
    raise ValueError(f"bands={bands!r} must be (low_hz, high_hz) pairs, e.g. "
                     f"({TELEPHONE_BAND},)") from None
  if not bands:
    raise ValueError("bands must hold at least one (low_hz, high_hz) pair")
  for lo, hi in bands:
    if not (0 <= lo < sample_rate / 2 and 0 <= hi < sample_rate / 2
            and (not lo or not hi or lo < hi) and (lo or hi)):
      raise ValueError(f"bands={bands!r}: ({lo:g}, {hi:g}) must have 0 <= low < high < "
                       f"Nyquist {sample_rate / 2:g} Hz (0 = no edge, not both 0)")
  return bands


def draw_chain(rng: jax.Array, batch: int, *, sample_rate: float,
               p_reverb: float = 0.0, rt60: Sequence[float] = (0.2, 0.8),
               drr_db: Sequence[float] = (0.0, 12.0),
               p_noise: float = 0.0, snr_db: Sequence[float] = (5.0, 30.0),
               noise_colors: Sequence[str] = NOISE_COLORS,
               p_eq: float = 0.0, eq_bands: int = 2, eq_hz: Sequence[float] = (60.0, 6000.0),
               eq_gain_db: float = 6.0, eq_q: Sequence[float] = (0.5, 4.0),
               p_band: float = 0.0, bands: Sequence[Sequence[float]] = (TELEPHONE_BAND,),
               p_codec: float = 0.0, p_gain: float = 0.0,
               gain_db: Sequence[float] = (-2.0, 2.0)) -> dict:
  """Every clip's draw for ``recording_chain``: which stages it gets and their parameters.

  Returns a dict of [batch] arrays (bools ``<stage>`` for each of CHAIN_STAGES, and rt60,
  drr_db, snr_db, noise_exponent, band_index (into bands), gain_db) plus eq_w0, eq_q,
  eq_gain_db [batch, eq_bands]. A pure function of rng: the run is reproducible.
  """
  sr = _check_number(sample_rate, "sample_rate", positive=True)
  probs = {s: _check_probability(p, f"p_{s}") for s, p in zip(CHAIN_STAGES, (
      p_reverb, p_noise, p_eq, p_band, p_codec, p_gain))}
  rt60 = _check_range(rt60, "rt60", 1e-3)
  drr_db = _check_range(drr_db, "drr_db")
  snr_db = _check_range(snr_db, "snr_db")
  colors = (noise_colors,) if isinstance(noise_colors, str) else tuple(noise_colors)
  if not colors or any(c not in NOISE_COLORS for c in colors):
    raise ValueError(f"noise_colors={noise_colors!r} must name some of {NOISE_COLORS}")
  if isinstance(eq_bands, bool) or not isinstance(eq_bands, (int, np.integer)) or eq_bands < 0:
    raise ValueError(f"eq_bands={eq_bands!r} must be a non-negative integer")
  eq_hz = _check_range(eq_hz, "eq_hz", 1e-3, sr / 2 * 0.999)
  eq_gain_db = _check_number(eq_gain_db, "eq_gain_db")
  eq_q = _check_range(eq_q, "eq_q", 1e-3)
  bands = _check_bands(bands, sr)
  gain_db = _check_range(gain_db, "gain_db")
  keys = jax.random.split(rng, 14)
  u = lambda k, r, shape=(batch,): jax.random.uniform(k, shape, jnp.float32, r[0], r[1])
  loguniform = lambda k, r, shape: jnp.exp(u(k, (math.log(r[0]), math.log(r[1])), shape))
  draw = {s: jax.random.bernoulli(keys[i], probs[s], (batch,))
          for i, s in enumerate(CHAIN_STAGES)}
  exponents = jnp.asarray([NOISE_COLORS.index(c) for c in colors], jnp.float32)
  draw.update(
      rt60=u(keys[6], rt60), drr_db=u(keys[7], drr_db), snr_db=u(keys[8], snr_db),
      noise_exponent=exponents[jax.random.randint(keys[9], (batch,), 0, len(colors))],
      band_index=jax.random.randint(keys[10], (batch,), 0, len(bands)),
      gain_db=u(keys[11], gain_db),
      eq_w0=2 * math.pi / sr * loguniform(keys[12], eq_hz, (batch, int(eq_bands))),
      eq_q=loguniform(jax.random.fold_in(keys[13], 0), eq_q, (batch, int(eq_bands))),
      eq_gain_db=u(jax.random.fold_in(keys[13], 1), (-abs(eq_gain_db), abs(eq_gain_db)),
                   (batch, int(eq_bands))))
  return draw


def recording_chain(rng: jax.Array, wave: Any, lengths: Any, *, sample_rate: float,
                    rows: float = 1.0, ir_seconds: float = 0.5, mu: int = 255,
                    keep_level: bool = True, tail_pad: int = 4096, clip: bool = True,
                    **draw_kwargs) -> jax.Array:
  """The recording chain (see the comment above CHAIN_STAGES) on [batch, samples] waves.

  ``rows``: the share of the batch that enters the chain, round(rows * batch) clips
  drawn uniformly without replacement each call; the others pass unchanged. The chain's
  cost is per row entered, so rows=0.5 halves it (and halves every stage's rate).
  ``draw_kwargs`` are draw_chain's (p_<stage> probabilities, all 0 by default, and each
  stage's parameter ranges). A row entered is exactly reverb -> add_noise -> peaking
  biquads -> band biquads -> mu_law -> gain applied to it with the parameters draw_chain
  drew for it (see chain_rows), the level restored before the gain if ``keep_level``,
  clipped to [-1, 1] if ``clip``.
  """
  wave = _as_float(wave, "wave")
  if wave.ndim != 2:
    raise ValueError(f"wave must be [batch, samples], got shape {wave.shape}")
  lengths = _lengths_or_full(wave, lengths)
  picked, rng = chain_picks(rng, wave.shape[0], rows)
  out = chain_rows(rng, wave[picked], lengths[picked], sample_rate=sample_rate,
                   ir_seconds=ir_seconds, mu=mu, keep_level=keep_level, tail_pad=tail_pad,
                   clip=clip, **draw_kwargs)
  if picked.shape[0] == wave.shape[0]:   # every row, in order
    return out
  return _zero_padding(wave, _mask(wave, lengths)).at[picked].set(out)


def chain_picks(rng: jax.Array, batch: int, rows: float = 1.0) -> jax.Array:
  """The rows recording_chain(rng, ...) sends through the chain, in chain_rows' order,
  and the key chain_rows gets: (rows [k], key)."""
  pick_rng, rng = jax.random.split(rng)
  k = int(round(_check_probability(rows, "rows") * batch))
  if k == batch:
    return jnp.arange(batch), rng
  return jax.random.permutation(pick_rng, batch)[:k], rng


def chain_rows(rng: jax.Array, wave: Any, lengths: Any, *, sample_rate: float,
               ir_seconds: float = 0.5, mu: int = 255, keep_level: bool = True,
               tail_pad: int = 4096, clip: bool = True, **draw_kwargs) -> jax.Array:
  """recording_chain on every row: rng splits into (draw, ir, noise) keys, the draw is
  ``draw_chain(draw_key, batch, sample_rate=..., **draw_kwargs)``, the impulse responses
  ``simulated_ir(ir_key, ...)``, the noise ``colored_noise(noise_key, ...)``."""
  wave = _as_float(wave, "wave")
  if wave.ndim != 2:
    raise ValueError(f"wave must be [batch, samples], got shape {wave.shape}")
  if isinstance(tail_pad, bool) or not isinstance(tail_pad, (int, np.integer)) or tail_pad < 0:
    raise ValueError(f"tail_pad={tail_pad!r} must be a non-negative integer (samples)")
  sr = _check_number(sample_rate, "sample_rate", positive=True)
  bands = _check_bands(draw_kwargs.get("bands", (TELEPHONE_BAND,)), sr)
  batch, n = wave.shape
  draw_rng, ir_rng, noise_rng = jax.random.split(rng, 3)
  d = draw_chain(draw_rng, batch, sample_rate=sr, **draw_kwargs)
  mask = _mask(wave, lengths)
  count = _lengths_or_full(wave, lengths)[..., None]
  x = _zero_padding(wave, mask)
  level = _rms(x, count)
  dtype = x.dtype
  # reverb: rows without it convolve with the unit impulse (exactly the identity).
  ir = simulated_ir(ir_rng, d["rt60"], d["drr_db"], sample_rate=sr, ir_seconds=ir_seconds)
  ir = jnp.where(d["reverb"][:, None], ir, jnp.zeros_like(ir).at[:, 0].set(1.0))
  x = jnp.where(d["reverb"][:, None], reverb(x, ir, lengths), x)
  # noise
  nz = colored_noise(noise_rng, (batch, n), d["noise_exponent"])
  x = jnp.where(d["noise"][:, None], add_noise(x, nz, d["snr_db"], lengths), x)
  # eq and band: one spectrum per row, applied with one rFFT pair.
  n_fft = fft_size(n + tail_pad)
  resp = jnp.ones((batch, n_fft // 2 + 1), jnp.complex64)
  if d["eq_w0"].shape[-1]:
    b, a = rbj_coefficients("peaking", d["eq_w0"], d["eq_q"], d["eq_gain_db"])
    eq = jnp.prod(biquad_response(b, a, n_fft), axis=-2)             # [batch, bins]
    resp = jnp.where(d["eq"][:, None], eq, resp)
  tables = [band_coefficients(lo, hi, sr) for lo, hi in bands]       # float64
  bb = jnp.asarray(np.stack([t[0] for t in tables]), jnp.float32)    # [bands, 4, 3]
  aa = jnp.asarray(np.stack([t[1] for t in tables]), jnp.float32)
  band = jnp.prod(biquad_response(bb, aa, n_fft), axis=-2)[d["band_index"]]
  resp = jnp.where(d["band"][:, None], resp * band, resp)
  filtered = jnp.fft.irfft(jnp.fft.rfft(x, n_fft) * resp, n_fft)[..., :n].astype(dtype)
  x = jnp.where((d["eq"] | d["band"])[:, None], _zero_padding(filtered, mask), x)
  # codec
  x = jnp.where(d["codec"][:, None], mu_law(x, lengths, mu=mu), x)
  if keep_level:  # back to the entry level (a silent row stays silent)
    x = x * (level / jnp.maximum(_rms(x, count), 1e-30))
  x = x * jnp.where(d["gain"], 10.0 ** (d["gain_db"] / 20.0), 1.0)[:, None].astype(dtype)
  return _zero_padding(_clip(x, clip), mask)


# Named by what they do, not by the recipe that uses them (AcuLa's is "one_of").
RECIPES = ("one_of", "recording_chain")


def apply(rng: jax.Array, wave: Any, lengths: Any, *, sample_rate: float,
          recipe: str = "one_of", **kwargs) -> jax.Array:
  """config.augment's entry point: ``recipe`` "one_of" (default) is random_augment (one
  of KINDS per clip), "recording_chain" is recording_chain; the other keys are that
  function's keywords."""
  if recipe == "one_of":
    return random_augment(rng, wave, lengths, sample_rate=sample_rate, **kwargs)
  if recipe == "recording_chain":
    return recording_chain(rng, wave, lengths, sample_rate=sample_rate, **kwargs)
  raise ValueError(f"augment.recipe={recipe!r} must be one of {RECIPES}")
