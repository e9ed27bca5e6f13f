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
