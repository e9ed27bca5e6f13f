"""Audio features computed on the accelerator: resampling, log-mel spectrograms, Kaldi fbank.

Every recipe's front end lives here, so that a batch of raw waveforms goes to the device
once and features are computed inside the jitted step instead of on the host:

  resample         == librosa.resample(res_type="fft" | "polyphase")
  melspectrogram   == librosa.feature.melspectrogram (same arguments, same defaults)
  power_to_db      == librosa.power_to_db   (top_db/"max" per example, see below)
  amplitude_to_db  == librosa.amplitude_to_db
  fbank            == kaldi_native_fbank.OnlineFbank with dither=0 (AudioMAE's front end)
  melspectrogram_num_frames, fbank_num_frames, resampled_length: output lengths for
                   true clip lengths (frame masks for padded batches)

All functions are pure functions of jnp arrays over any leading batch dims
(``[..., samples]``). Scalar parameters are keyword-only Python values: they choose
shapes and constant matrices, so bind them before jitting, e.g.
``jax.jit(functools.partial(melspectrogram, sr=16000, n_fft=512))``. Constant matrices
(windows, mel filters, FIR filters) are built in numpy at trace time, from librosa and
scipy wherever those define them, and cached. Parameters are validated in Python at
trace time, so a bad value raises a ``ValueError`` naming it instead of failing in XLA.

Computation is float32 (float64 only if the input is float64 and x64 is enabled);
matmuls ask for ``Precision.HIGHEST`` because the GPU default (TF32) would cost about
three decimal digits of the mel power.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

_HIGHEST = jax.lax.Precision.HIGHEST

# Beyond this many entries in the dense polyphase matrix (rates whose reduced ratio
# has large terms, e.g. 44100 -> 44099) the FFT method is the sensible one.
_MAX_POLYPHASE_ENTRIES = 1 << 24


# ----------------------------------------------------------------------------- helpers


def _as_float(x: Any, name: str) -> jax.Array:
  x = jnp.asarray(x)
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise TypeError(f"{name} must be a floating-point array, got dtype {x.dtype} "
                    "(convert int16 PCM first, e.g. jaxclap.corpus.records.from_pcm16)")
  if x.dtype.itemsize < 4:  # float16/bfloat16 would lose the spectrum's low end
    x = x.astype(jnp.float32)
  return x


def _check_positive_int(value: Any, name: str) -> int:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
    raise ValueError(f"{name}={value!r} must be a positive integer")
  return int(value)


def _check_positive(value: Any, name: str) -> float:
  if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) or not value > 0:
    raise ValueError(f"{name}={value!r} must be a positive number")
  return float(value)


def _frame(x: jax.Array, frame_length: int, hop: int, num_frames: int) -> jax.Array:
  """[..., n] -> [..., num_frames, frame_length]; frame t is x[t*hop : t*hop + frame_length].

  Built from reshapes and static slices rather than a gather, so no index table as large
  as the output is needed and XLA emits one copy loop: the signal is cut into hop-sized
  blocks and each frame is ceil(frame_length/hop) consecutive blocks.
  """
  k = -(-frame_length // hop)
  n_blocks = num_frames + k - 1
  need = n_blocks * hop
  n = x.shape[-1]
  if need > n:
    # Only the tail of the last block is padded, past the end of the last frame.
    x = jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, need - n)])
  else:
    x = x[..., :need]
  blocks = x.reshape(*x.shape[:-1], n_blocks, hop)
  if k == 1:
    return blocks[..., :num_frames, :frame_length]
  # Stacking on a new axis and merging it is a plain copy for XLA; concatenating on the
  # last axis compiled to a loop about 3x slower on CPU.
  parts = jnp.stack([blocks[..., i:i + num_frames, :] for i in range(k)], axis=-2)
  return parts.reshape(*parts.shape[:-2], k * hop)[..., :frame_length]


# Per-chunk working set of the CPU path of _by_rows, in elements of its largest
# intermediate (frames x n_fft for a spectrogram): 8 MiB of float32.
_CPU_CHUNK_ELEMENTS = 1 << 21


def _by_rows(fn, x: jax.Array, row_elements: int) -> jax.Array:
  """fn over the rows of x [..., n] (fn maps [rows, n] -> [rows, ...]), chunked on CPU.

  XLA's CPU runtime allocates each call's intermediates afresh, and buffers beyond
  glibc's mmap threshold (at most 32 MiB) come back as fresh pages every call: at batch
  scale (64 x 10 s -> a 130 MB frame matrix) the first-touch page faults took as long
  as the arithmetic. On CPU the rows therefore go through lax.map a few at a time, so
  the intermediates stay a few MiB and are reused (measured 2-3x faster for the
  64 x 10 s log-mel and fbank); accelerators take the batch in one go.
  """
  lead = x.shape[:-1]
  rows = math.prod(lead)
  flat = x.reshape(rows, x.shape[-1])
  per_chunk = max(1, _CPU_CHUNK_ELEMENTS // max(1, row_elements))
  if per_chunk >= rows:
    out = fn(flat)
  else:
    chunked = lambda v: jax.lax.map(lambda row: fn(row[None])[0], v, batch_size=per_chunk)
    out = jax.lax.platform_dependent(flat, cpu=chunked, default=fn)
  return out.reshape(*lead, *out.shape[1:])


# ----------------------------------------------------------------------------- resample


_RES_TYPES = ("fft", "scipy", "polyphase")


def resampled_length(num_samples: int, orig_sr: float, target_sr: float) -> int:
  """Output length of ``resample`` (librosa's ``ceil(n * target_sr / orig_sr)``)."""
  if orig_sr == target_sr:
    return int(num_samples)
  return int(np.ceil(num_samples * (float(target_sr) / orig_sr)))


def resample(y: Any, orig_sr: float, target_sr: float, *, res_type: str = "fft",
             axis: int = -1) -> jax.Array:
  """Resamples ``y`` along ``axis`` from ``orig_sr`` to ``target_sr`` Hz.

  res_type:
    "fft" (or "scipy"): ``librosa.resample(res_type="fft")``, i.e.
      ``scipy.signal.resample``: truncate or zero-pad the spectrum, with the unpaired
      Nyquist bin of an even length split or merged as scipy does. Periodic: the two
      ends of the clip leak into each other. When n * target_sr / orig_sr is not whole,
      the output samples the clip on a grid of n / n_out input periods, i.e. stretched
      by up to one output sample over the clip (librosa's result too).
    "polyphase": ``librosa.resample(res_type="polyphase")``, i.e.
      ``scipy.signal.resample_poly`` with its default Kaiser(5.0) FIR from
      ``scipy.signal.firwin``; the rates must be integers.
  librosa's default, soxr_hq, is a host library and is not reproduced; both methods here
  agree with it on band-limited content away from the clip edges. On CPU "polyphase" is
  the fast one (XLA's clip-length FFTs are slower than soxr; benchmarks/features.py).

  The output length is ``ceil(n * target_sr / orig_sr)`` (``resampled_length``).
  """
  orig = _check_positive(orig_sr, "orig_sr")
  target = _check_positive(target_sr, "target_sr")
  if res_type not in _RES_TYPES:
    raise ValueError(f"res_type={res_type!r} is not supported on the device; use one of "
                     f"{_RES_TYPES} (soxr/resampy/samplerate run on the host only)")
  y = _as_float(y, "y")
  if y.ndim == 0:
    raise ValueError("y must have at least one dimension (samples)")
  if orig == target:
    return y
  y = jnp.moveaxis(y, axis, -1)
  n = y.shape[-1]
  if n == 0:
    raise ValueError("y has 0 samples along the resampling axis")
  n_out = resampled_length(n, orig, target)
  if res_type == "polyphase":
    if int(orig) != orig or int(target) != target:
      raise ValueError(f"res_type='polyphase' needs integer rates, got orig_sr={orig_sr!r}, "
                       f"target_sr={target_sr!r}")
    up, down, _, _, groups = _polyphase_plan(int(orig), int(target))
    out = _by_rows(functools.partial(_resample_poly, orig=int(orig), target=int(target)), y,
                   n * up // down // up * sum(hi - lo for lo, hi, _ in groups))
    if out.shape[-1] != n_out:  # librosa's fix_length: its float ceil may differ by one
      m = out.shape[-1]
      out = (out[..., :n_out] if m > n_out
             else jnp.pad(out, [(0, 0)] * (out.ndim - 1) + [(0, n_out - m)]))
  else:
    # Not chunked: clip-length FFTs in a lax.map measured no faster on CPU.
    out = _resample_fft(y, n_out)
  return jnp.moveaxis(out, -1, axis)


def _resample_fft(y: jax.Array, num: int) -> jax.Array:
  n = y.shape[-1]
  m = min(num, n)
  m2 = m // 2 + 1
  # scipy's spectrum edits as one static per-bin scale (fused into a single pass):
  scale = np.full(m2, num / n)
  if m % 2 == 0:
    # the bin at m/2 is unpaired in the shorter of the two spectra: merged or split
    scale[m // 2] *= 2.0 if num < n else 0.5
  # Keep only the real part of DC and of the output's own Nyquist bin: pocketfft's irfft
  # ignores those imaginary parts, GPU FFT libraries need not.
  real_only = np.zeros(m2, bool)
  real_only[0] = True
  if num % 2 == 0 and m2 == num // 2 + 1:
    real_only[m2 - 1] = True
  spec = jnp.fft.rfft(y, axis=-1)[..., :m2]
  scale = jnp.asarray(scale, y.dtype)
  spec = jax.lax.complex(spec.real * scale, jnp.where(real_only, 0, spec.imag * scale))
  return jnp.fft.irfft(spec, n=num, axis=-1).astype(y.dtype)


# The polyphase resampler's phases go to at most this many matmuls (see _polyphase_plan):
# more groups skip more zero taps but cost more ops to compile and launch.
_POLYPHASE_GROUPS = 8


@functools.lru_cache(maxsize=64)
def _polyphase_plan(orig: int, target: int):
  """resample_poly(up, down) as matmuls: numpy filter blocks, built once per rate pair.

  scipy computes out[m] = sum_n x[n] * h[half_len + m*down - n*up] (h is the firwin
  filter times `up`, centred by its pre/post padding). Writing m = a*up + b, output b of
  block a reads input samples a*down + q_b + j, j in a small window, with taps
  h[half_len + r_b - j*up], where b*down = q_b*up + r_b. So every output block is one
  strided input frame of `length` samples times a fixed [length, up] matrix. That
  matrix is mostly zeros (each phase uses ~2*half_len/up taps), so the phases are
  split into a few groups of consecutive phases, each with only the rows its taps touch:
  returns (up, down, left_pad, length, ((row_lo, row_hi, w[row_hi-row_lo, phases]), ...)).
  """
  import scipy.signal

  g = math.gcd(orig, target)
  up, down = target // g, orig // g
  max_rate = max(up, down)
  half_len = 10 * max_rate  # scipy.signal.resample_poly's choice
  j_min = -(half_len // up)
  j_max = (half_len + up - 1) // up
  b = np.arange(up)
  q = (b * down) // up
  r = (b * down) % up
  length = int(q.max()) + j_max - j_min + 1
  if length * up > _MAX_POLYPHASE_ENTRIES:
    raise ValueError(f"res_type='polyphase' from {orig} to {target} Hz reduces to up={up}, "
                     f"down={down}: too large a filter bank for the device; use res_type='fft'")
  h = scipy.signal.firwin(2 * half_len + 1, 1.0 / max_rate, window=("kaiser", 5.0)) * up
  l = np.arange(length)[:, None]
  tap = half_len + r[None, :] - (l - q[None, :] + j_min) * up
  valid = (tap >= 0) & (tap <= 2 * half_len)
  w = np.where(valid, h[np.clip(tap, 0, 2 * half_len)], 0.0)
  groups = []
  group = -(-up // _POLYPHASE_GROUPS)
  for b0 in range(0, up, group):
    wg = w[:, b0:b0 + group]
    rows = np.flatnonzero(np.any(wg != 0, axis=1))
    lo, hi = int(rows.min()), int(rows.max()) + 1
    groups.append((lo, hi, wg[lo:hi]))
  return up, down, -j_min, length, tuple(groups)


def _resample_poly(y: jax.Array, orig: int, target: int) -> jax.Array:
  up, down, left, length, groups = _polyphase_plan(orig, target)
  n = y.shape[-1]
  n_out = -(-n * up // down)  # scipy's ceil(n * up / down)
  blocks = -(-n_out // up)
  need = (blocks - 1) * down + length
  y = jnp.pad(y, [(0, 0)] * (y.ndim - 1) + [(left, max(0, need - n - left))])
  outs = []
  for lo, hi, wg in groups:
    frames = _frame(y[..., lo:], hi - lo, down, blocks)  # [..., blocks, hi - lo]
    outs.append(jnp.einsum("...al,lb->...ab", frames, jnp.asarray(wg, y.dtype),
                           precision=_HIGHEST))
  out = jnp.concatenate(outs, axis=-1) if len(outs) > 1 else outs[0]
  return out.reshape(*out.shape[:-2], blocks * up)[..., :n_out]


# ----------------------------------------------------------------------------- mel


@functools.lru_cache(maxsize=64)
def _stft_window(window: Any, win_length: int) -> np.ndarray:
  import librosa

  try:
    return np.asarray(librosa.filters.get_window(window, win_length, fftbins=True), np.float64)
  except Exception as e:  # scipy raises ValueError for unknown names, TypeError for bad tuples
    raise ValueError(f"window={window!r} is not a window librosa/scipy know ({e})") from None


@functools.lru_cache(maxsize=64)
def _mel_basis(sr: float, n_fft: int, n_mels: int, fmin: float, fmax: float, htk: bool,
               norm: Any) -> np.ndarray:
  import warnings

  import librosa

  with warnings.catch_warnings():
    # librosa warns about empty filters; that is the caller's choice of n_mels/n_fft.
    warnings.simplefilter("ignore")
    return librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax,
                               htk=htk, norm=norm)  # float32, like librosa's default


def _stft_params(n_fft, hop_length, win_length):
  n_fft = _check_positive_int(n_fft, "n_fft")
  win_length = n_fft if win_length is None else _check_positive_int(win_length, "win_length")
  if win_length > n_fft:
    raise ValueError(f"n_fft={n_fft} < win_length={win_length}: the window must fit in the FFT")
  hop_length = (win_length // 4) if hop_length is None else hop_length
  hop_length = _check_positive_int(hop_length, "hop_length")
  return n_fft, hop_length, win_length


def melspectrogram_num_frames(num_samples: Any, *, n_fft: int = 2048, hop_length: int | None = None,
                              win_length: int | None = None, center: bool = True) -> Any:
  """Frames ``melspectrogram`` makes from ``num_samples`` (int or int array, jit-safe).

  With center=True and pad_mode="constant", frames [0, melspectrogram_num_frames(n)) of a
  zero-padded batch equal those of the unpadded clip, so this gives a frame mask.
  """
  n_fft, hop_length, _ = _stft_params(n_fft, hop_length, win_length)
  padded = num_samples + 2 * (n_fft // 2) if center else num_samples
  return (padded >= n_fft) * (1 + (padded - n_fft) // hop_length)


def melspectrogram(y: Any, *, sr: float, n_fft: int = 2048, hop_length: int | None = None,
                   win_length: int | None = None, window: Any = "hann", center: bool = True,
                   pad_mode: str = "constant", power: float = 2.0, n_mels: int = 128,
                   fmin: float = 0.0, fmax: float | None = None, htk: bool = False,
                   norm: Any = "slaney") -> jax.Array:
  """``librosa.feature.melspectrogram``: [..., samples] -> [..., n_mels, frames].

  Same argument names and defaults as librosa 0.11 (hop_length=win_length//4,
  pad_mode="constant"), except that ``sr`` has no default (librosa's 22050 would
  silently mis-scale every 16 kHz recipe); pad_mode is "constant" or "reflect". The
  window is ``librosa.filters.get_window(window, win_length)`` and the filters
  ``librosa.filters.mel(...)`` (float32, as librosa uses them).
  """
  n_fft, hop_length, win_length = _stft_params(n_fft, hop_length, win_length)
  sr = _check_positive(sr, "sr")
  n_mels = _check_positive_int(n_mels, "n_mels")
  power = _check_positive(power, "power")
  fmax_v = sr / 2 if fmax is None else float(fmax)
  if fmax_v > sr / 2:
    raise ValueError(f"fmax={fmax} > sr/2={sr / 2}: above the Nyquist frequency")
  if not 0 <= float(fmin) < fmax_v:
    raise ValueError(f"fmin={fmin} must be >= 0 and below fmax={fmax_v}")
  if pad_mode not in ("constant", "reflect"):
    raise ValueError(f"pad_mode={pad_mode!r} must be 'constant' or 'reflect'")
  if isinstance(window, (list, np.ndarray)) or callable(window):
    raise ValueError(f"window={window!r}: pass a window name or tuple (it is cached)")
  win = _stft_window(window, win_length)
  basis = _mel_basis(sr, n_fft, n_mels, float(fmin), fmax_v, bool(htk), norm)

  y = _as_float(y, "y")
  if y.ndim == 0 or y.shape[-1] == 0:
    raise ValueError(f"y has shape {y.shape}; expected [..., samples] with samples > 0")
  if center:
    if pad_mode == "reflect" and y.shape[-1] < 2:
      raise ValueError("pad_mode='reflect' needs at least 2 samples")
    y = jnp.pad(y, [(0, 0)] * (y.ndim - 1) + [(n_fft // 2, n_fft // 2)], mode=pad_mode)
  n = y.shape[-1]
  if n < n_fft:
    raise ValueError(f"n_fft={n_fft} is too large for uncentered analysis of input signal "
                     f"of length={n}")
  num = 1 + (n - n_fft) // hop_length
  # librosa zero-pads the window to n_fft around its centre. Only |STFT| is used, which
  # is invariant to the circular shift of a frame, so frame just the win_length samples
  # under the window and zero-pad them at the end.
  lpad = (n_fft - win_length) // 2
  win = jnp.asarray(win, y.dtype)
  basis = jnp.asarray(basis, y.dtype)

  def rows(v):  # [rows, samples] -> [rows, n_mels, frames]
    frames = _frame(v[:, lpad:], win_length, hop_length, num) * win
    frames = jnp.pad(frames, [(0, 0), (0, 0), (0, n_fft - win_length)])
    spec = jnp.fft.rfft(frames, axis=-1)
    if power == 2.0:
      mag = jnp.square(spec.real) + jnp.square(spec.imag)
    elif power == 1.0:
      mag = jnp.abs(spec)
    else:
      mag = jnp.abs(spec) ** power
    # Contract into [rows, frames, n_mels] and transpose the (smaller) result: asking
    # the dot for [rows, n_mels, frames] directly was twice as slow on CPU.
    mel = jnp.einsum("rtf,mf->rtm", mag.astype(v.dtype), basis, precision=_HIGHEST)
    return jnp.swapaxes(mel, -1, -2)

  return _by_rows(rows, y, num * n_fft)


# ----------------------------------------------------------------------------- dB


def _example_axes(x: jax.Array) -> tuple[int, ...]:
  return (-2, -1) if x.ndim >= 2 else (-1,)


def _db_from_power(power: jax.Array, ref_power: Any, amin: float, top_db: float | None):
  log_spec = 10.0 * jnp.log10(jnp.maximum(amin, power))
  log_spec = log_spec - 10.0 * jnp.log10(jnp.maximum(amin, ref_power))
  if top_db is not None:
    peak = jnp.max(log_spec, axis=_example_axes(log_spec), keepdims=True)
    log_spec = jnp.maximum(log_spec, peak - top_db)
  return log_spec


def _check_db_args(ref, amin, top_db):
  if not (isinstance(ref, str) and ref == "max") and ref not in (np.max, jnp.max) and (
      isinstance(ref, bool) or not isinstance(ref, (int, float, np.number))):
    raise ValueError(f"ref={ref!r} must be a number or 'max'")
  if not amin > 0:
    raise ValueError(f"amin={amin!r} must be strictly positive")
  if top_db is not None and top_db < 0:
    raise ValueError(f"top_db={top_db!r} must be non-negative")


def power_to_db(S: Any, *, ref: float | str = 1.0, amin: float = 1e-10,
                top_db: float | None = 80.0) -> jax.Array:
  """``librosa.power_to_db``, one example at a time.

  ``S`` is [..., n_mels, frames]; each example is its last two axes. ``ref="max"`` (or
  ``np.max``) uses each example's own maximum, and ``top_db`` clips to each example's own
  peak minus top_db. librosa takes both over the whole array it is given, so the two
  agree on a single clip and this version keeps one clip's dB independent of the others
  in its batch.
  """
  _check_db_args(ref, amin, top_db)
  S = _as_float(S, "S")
  if isinstance(ref, str) or callable(ref):
    ref_value = jnp.max(S, axis=_example_axes(S), keepdims=True)
  else:
    ref_value = abs(float(ref))
  return _db_from_power(S, ref_value, amin, top_db)


def amplitude_to_db(S: Any, *, ref: float | str = 1.0, amin: float = 1e-5,
                    top_db: float | None = 80.0) -> jax.Array:
  """``librosa.amplitude_to_db`` (= power_to_db of |S|**2 with ref**2, amin**2), per example."""
  _check_db_args(ref, amin, top_db)
  S = jnp.asarray(S)
  magnitude = jnp.abs(S) if jnp.iscomplexobj(S) else _as_float(jnp.abs(S), "S")
  if isinstance(ref, str) or callable(ref):
    ref_value = jnp.max(magnitude, axis=_example_axes(magnitude), keepdims=True)
  else:
    ref_value = abs(float(ref))
  return _db_from_power(jnp.square(magnitude), ref_value ** 2, amin ** 2, top_db)


# ----------------------------------------------------------------------------- Kaldi fbank


_KALDI_WINDOWS = ("povey", "hanning", "hamming", "rectangular", "blackman")


def _kaldi_frame_sizes(sample_frequency, frame_length_ms, frame_shift_ms, round_to_power_of_two):
  # Kaldi keeps these options in float32 and multiplies in double:
  # static_cast<int32_t>(samp_freq * 0.001 * frame_length_ms).
  sf = float(np.float32(sample_frequency))
  length = int(sf * 0.001 * float(np.float32(frame_length_ms)))
  shift = int(sf * 0.001 * float(np.float32(frame_shift_ms)))
  if length <= 0:
    raise ValueError(f"frame_length_ms={frame_length_ms} gives a frame of {length} samples")
  if shift <= 0:
    raise ValueError(f"frame_shift_ms={frame_shift_ms} gives a shift of {shift} samples")
  padded = 1 << (length - 1).bit_length() if round_to_power_of_two else length
  if padded % 2:
    raise ValueError(f"frame_length_ms={frame_length_ms} gives an odd frame of {length} "
                     "samples; Kaldi needs an even FFT size (use round_to_power_of_two=True)")
  return length, shift, padded


def fbank_num_frames(num_samples: Any, *, sample_frequency: float = 16000.0,
                     frame_length_ms: float = 25.0, frame_shift_ms: float = 10.0,
                     snip_edges: bool = True) -> Any:
  """Frames ``fbank`` makes from ``num_samples`` (int or int array, jit-safe); Kaldi's NumFrames.

  With snip_edges=True, frames [0, fbank_num_frames(n)) of a zero-padded batch equal
  those of the unpadded clip.
  """
  length, shift, _ = _kaldi_frame_sizes(sample_frequency, frame_length_ms, frame_shift_ms, True)
  if snip_edges:
    return (num_samples >= length) * (1 + (num_samples - length) // shift)
  return (num_samples + shift // 2) // shift


@functools.lru_cache(maxsize=32)
def _kaldi_window(window_type: str, length: int) -> np.ndarray:
  import librosa

  # Kaldi's windows are the symmetric ones (cosines of 2*pi*i/(N-1)), i.e. scipy's with
  # fftbins=False; povey is the symmetric Hann raised to 0.85, blackman uses Kaldi's
  # default blackman_coeff=0.42, which is scipy's Blackman.
  name = {"povey": "hann", "hanning": "hann", "hamming": "hamming",
          "rectangular": "boxcar", "blackman": "blackman"}[window_type]
  w = np.asarray(librosa.filters.get_window(name, length, fftbins=False), np.float64)
  if window_type == "povey":
    w = w ** 0.85
  return w.astype(np.float32)  # Kaldi stores the window as float


@functools.lru_cache(maxsize=32)
def _kaldi_mel_banks(num_bins: int, padded: int, sample_frequency: float, low_freq: float,
                     high_freq: float) -> np.ndarray:
  """Kaldi's mel filter bank as a dense [padded // 2, num_bins] float32 matrix.

  Not librosa.filters.mel: Kaldi's triangles are linear in mel (1127 ln(1 + f/700)),
  not in Hz, are not area-normalised, span low_freq..high_freq (not 0..sr/2 by
  default) and cover FFT bins 0..padded/2 - 1 (never the Nyquist bin). Computed in
  float32 step by step as MelBanks::InitKaldiMelBanks does, so the bin edges fall where
  Kaldi's fall. A bin narrower than the FFT resolution covers no FFT bin: Kaldi and
  kaldi-native-fbank refuse such settings, torchaudio.compliance.kaldi.fbank (which
  AudioMAE uses, with 128 bins over a 512-point FFT) leaves the bin zero. We follow
  torchaudio: its log energy is the floor, log(float32 eps).
  """
  f32 = np.float32
  mel = lambda f: f32(1127.0) * np.log(f32(1.0) + f / f32(700.0)).astype(f32)
  num_fft_bins = padded // 2
  sf = f32(sample_frequency)
  nyquist = f32(0.5) * sf
  low = f32(low_freq)
  high = f32(high_freq) if high_freq > 0 else nyquist + f32(high_freq)
  if low < 0 or low >= nyquist or high <= 0 or high > nyquist or high <= low:
    raise ValueError(f"low_freq={low_freq}, high_freq={high_freq}: need 0 <= low_freq < "
                     f"high_freq <= {float(nyquist)} (high_freq <= 0 counts back from Nyquist)")
  fft_bin_width = sf / f32(padded)
  mel_low, mel_high = mel(low), mel(high)
  delta = (mel_high - mel_low) / f32(num_bins + 1)
  fft_mel = mel(fft_bin_width * np.arange(num_fft_bins, dtype=f32))
  banks = np.zeros((num_fft_bins, num_bins), f32)
  for b in range(num_bins):
    left = mel_low + f32(b) * delta
    center = mel_low + f32(b + 1) * delta
    right = mel_low + f32(b + 2) * delta
    inside = (fft_mel > left) & (fft_mel < right)
    up = (fft_mel - left) / (center - left)
    down = (right - fft_mel) / (right - center)
    banks[:, b] = np.where(inside, np.where(fft_mel <= center, up, down), 0)
  return banks


def fbank(waveform: Any, *, sample_frequency: float = 16000.0, frame_length_ms: float = 25.0,
          frame_shift_ms: float = 10.0, num_mel_bins: int = 128, window_type: str = "povey",
          low_freq: float = 20.0, high_freq: float = 0.0, preemph_coeff: float = 0.97,
          remove_dc_offset: bool = True, round_to_power_of_two: bool = True,
          snip_edges: bool = True, use_log_fbank: bool = True, use_power: bool = True) -> jax.Array:
  """Kaldi log mel filter bank: [..., samples] -> [..., frames, num_mel_bins].

  Equals ``kaldi_native_fbank.OnlineFbank`` with dither=0 and use_energy=False (no
  energy column), the settings AudioMAE uses through torchaudio.compliance.kaldi.fbank
  (window_type "hanning", 128 bins; for the one empty bin that gives, see
  _kaldi_mel_banks). The waveform is taken as given: Kaldi tools feed int16-scaled samples,
  AudioMAE feeds floats in [-1, 1], which shifts every log energy by log(32768**2).
  The log floor is float32 epsilon (log(1.19e-7) = -15.9), as in Kaldi.
  snip_edges=True frames only whole windows from sample 0; snip_edges=False centres
  frames on multiples of the shift and reflects the signal at both ends like Kaldi.
  """
  if window_type not in _KALDI_WINDOWS:
    raise ValueError(f"window_type={window_type!r} must be one of {_KALDI_WINDOWS}")
  num_mel_bins = _check_positive_int(num_mel_bins, "num_mel_bins")
  if num_mel_bins < 3:
    raise ValueError(f"num_mel_bins={num_mel_bins} must be at least 3 (Kaldi's limit)")
  if not 0.0 <= preemph_coeff <= 1.0:
    raise ValueError(f"preemph_coeff={preemph_coeff} must be in [0, 1]")
  _check_positive(sample_frequency, "sample_frequency")
  length, shift, padded = _kaldi_frame_sizes(sample_frequency, frame_length_ms, frame_shift_ms,
                                             round_to_power_of_two)
  banks = _kaldi_mel_banks(num_mel_bins, padded, float(sample_frequency), float(low_freq),
                           float(high_freq))
  win = _kaldi_window(window_type, length)

  x = _as_float(waveform, "waveform")
  if x.ndim == 0:
    raise ValueError("waveform must have at least one dimension (samples)")
  n = x.shape[-1]
  num = int(fbank_num_frames(n, sample_frequency=sample_frequency,
                             frame_length_ms=frame_length_ms, frame_shift_ms=frame_shift_ms,
                             snip_edges=snip_edges))
  if num <= 0:
    raise ValueError(f"waveform has {n} samples, fewer than one frame of "
                     f"frame_length_ms={frame_length_ms} ({length} samples) with "
                     f"snip_edges={snip_edges}")
  if not snip_edges:
    # Frame t starts at t*shift + shift//2 - length//2; Kaldi reflects out-of-range
    # indices as -1 -> 0, n -> n-1, which is numpy's "symmetric" padding.
    start = shift // 2 - length // 2
    end = start + (num - 1) * shift + length
    left, right = max(0, -start), max(0, end - n)
    x = jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(left, right)], mode="symmetric")
    x = x[..., start + left:]
  win = jnp.asarray(win, x.dtype)
  banks = jnp.asarray(banks, x.dtype)

  def rows(v):  # [rows, samples] -> [rows, frames, num_mel_bins]
    frames = _frame(v, length, shift, num)
    if remove_dc_offset:
      frames = frames - jnp.mean(frames, axis=-1, keepdims=True)
    if preemph_coeff != 0.0:
      # Kaldi: w[i] -= c * w[i-1] for i >= 1 and w[0] -= c * w[0].
      prev = jnp.concatenate([frames[..., :1], frames[..., :-1]], axis=-1)
      frames = frames - jnp.asarray(preemph_coeff, frames.dtype) * prev
    frames = jnp.pad(frames * win, [(0, 0), (0, 0), (0, padded - length)])
    spec = jnp.fft.rfft(frames, axis=-1)[..., :padded // 2]
    energy = jnp.square(spec.real) + jnp.square(spec.imag)
    if not use_power:
      energy = jnp.sqrt(energy)
    mel = jnp.einsum("rtf,fm->rtm", energy.astype(v.dtype), banks, precision=_HIGHEST)
    if use_log_fbank:
      mel = jnp.log(jnp.maximum(mel, jnp.finfo(jnp.float32).eps))
    return mel

  return _by_rows(rows, x, num * padded)
