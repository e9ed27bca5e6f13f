"""Clips -> training-window waveforms and back, shared by the input pipeline, ``jaxclap.load``
and the PyTorch export (``jaxclap.torch_model``), so all three cut, pad and pool alike.

Numpy only: ``jaxclap.torch_model`` imports it without JAX.

  crop_or_pad   one waveform -> exactly the training window (random or start crop; zero
                or LAION's "repeatpad" padding) and how many samples are real
  clip_list     one clip or a batch of clips (paths, 1-D or 2-D arrays / tensors) -> a list,
                multi-channel arrays mixed down to mono (logged)
  read_clip     one clip of that list -> (mono waveform, its rate); bad clips named
  hop           the half-window hop ``windows`` is called with
  windows       a clip -> windows of the training length with a half-window hop (the
                tail covered too; SLAP's 10 s / 5 s for a 10 s window), short clips padded
  pool          window embeddings -> each clip's mean, re-normalised; NaN/Inf refused
  check_finite  embeddings or scores -> NonFiniteError naming what and how many rows

``NonFiniteError`` is the one error for non-finite embeddings or scores, raised by the
inference API, the PyTorch export's and the metrics (``jaxclap.evaluate``): a NaN
compares false with everything, so a metric computed from it is a wrong number (every
retrieval rank 0: R@1 = 100%), never an honest one.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import numpy as np

# The most channels a clip may have (prepare mixes 8-channel files too): a 2-D array with
# an axis this short holds channels, never clips or samples (8 samples are 0.5 ms at
# 16 kHz: no clip is that short).
MAX_CHANNELS = 8


class NonFiniteError(ValueError):
  """Embeddings or scores hold NaN/Inf (a diverged model, usually): what was being
  computed and how many rows, instead of a number computed from them."""


def check_finite(x: Any, what: str, rows: str = "rows") -> None:
  """Raises ``NonFiniteError`` when ``x`` ([n, ...]) has a NaN/Inf, naming ``what`` and
  how many of its ``rows`` do."""
  x = np.asarray(x)
  ok = np.isfinite(x)
  if ok.all():
    return
  bad = int(np.sum(~ok.reshape(len(x), -1).all(1))) if x.ndim else 1
  raise NonFiniteError(f"{what}: {bad} of {len(x) if x.ndim else 1} {rows} are non-finite "
                       "(NaN/Inf); no number is computed from them. A model that gives "
                       "NaN has non-finite parameters (a run that diverged: train it "
                       "with a lower optim.lr, or use an earlier checkpoint)")


def crop_or_pad(wave: np.ndarray, length: int, rng: np.random.Generator | None = None,
                pad: str = "zero") -> tuple[np.ndarray, int]:
  """A waveform of exactly ``length`` samples and how many of them are real audio.

  Longer clips are cropped at a random offset (``rng``) or at the start (``rng=None``).
  Shorter clips are zero-padded (``pad="zero"``; the length returned is the clip's) or
  repeated a whole number of times and then zero-padded (``pad="repeat"``, LAION-CLAP's
  and transformers' ClapFeatureExtractor's "repeatpad"; the length returned covers the
  repeats).
  """
  n = wave.shape[0]
  if n >= length:
    start = 0 if rng is None or n == length else int(rng.integers(0, n - length + 1))
    return wave[start:start + length], length
  if pad == "repeat":
    out = np.zeros(length, np.float32)
    n *= length // n
    out[:n] = np.tile(wave, length // wave.shape[0])
  elif pad == "zero":
    out = np.zeros(length, np.float32)
    out[:n] = wave
  else:
    raise ValueError(f"input.pad must be 'zero' or 'repeat', got {pad!r}")
  return out, n


def clip_list(clips: Any) -> list:
  """A path, a 1-D waveform, a 2-D [clips, samples] array / tensor, or a sequence of
  those -> a non-empty list of clips (paths, 1-D waveforms).

  Channels: an array whose second axis is at most ``MAX_CHANNELS`` long and shorter than
  its first, [samples, channels] (soundfile's layout, ``sf.read``), is one clip. An
  element of a sequence is always one clip, so a 2-D element is [samples, channels] or
  [channels, samples] (librosa's and torchaudio's layout), whichever axis is at most
  ``MAX_CHANNELS`` long. Such clips are mixed down to mono (the channels' mean, as for
  files), with a logged warning. A 2-D array [c, samples] with c <= ``MAX_CHANNELS`` is a
  batch of c clips, as documented, with a warning saying how to pass one clip of c
  channels instead (``[array]``, a list of one clip).
  """
  if isinstance(clips, (str, os.PathLike)):
    return [clips]
  ndim = getattr(clips, "ndim", None)
  if ndim == 1:
    return [clips]
  if ndim == 2:
    rows, cols = clips.shape
    if cols <= MAX_CHANNELS and cols < rows:
      return [_mixed_down(clips, "the array")]
    if 0 < rows <= MAX_CHANNELS and rows < cols:
      logging.warning("a [%d, %d] array is taken as %d clips of %d samples ([clips, "
                      "samples]); for one clip of %d channels pass [array] (a list of "
                      "one clip), or a [samples, channels] array", rows, cols, rows, cols,
                      rows)
    out = list(clips)
  elif ndim is not None:
    raise ValueError(f"clips: a {ndim}-D array of shape {tuple(clips.shape)}; pass one "
                     "clip (1-D [samples] or 2-D [samples, channels]), a [clips, samples] "
                     "array, or a list of clips")
  else:
    out = [_mixed_down(c, f"clip {i}") if getattr(c, "ndim", None) == 2 else c
           for i, c in enumerate(clips)]
  if not out:
    raise ValueError("clips is empty: pass at least one clip (a path or a waveform)")
  return out


def read_clip(clip: Any, i: int, sample_rate: int | None) -> tuple[np.ndarray, int]:
  """Clip ``i`` of a call (a path, or a mono waveform from ``clip_list`` at ``sample_rate``)
  -> (float32 mono waveform, its rate). A file is read at its header's rate, channels
  averaged; a missing, unreadable, empty or non-finite clip raises, naming it."""
  if isinstance(clip, (str, os.PathLike)):
    import soundfile as sf
    where = f"clip {i} ({os.fspath(clip)!r})"
    if not os.path.isfile(clip):
      raise FileNotFoundError(f"{where}: no such file" if not os.path.exists(clip)
                              else f"{where}: not a file")
    try:
      wave, sr = sf.read(os.fspath(clip), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError) as e:
      raise ValueError(f"{where}: not readable as audio: {e}") from e
    wave = wave.mean(axis=1)
  else:
    where = f"clip {i}"
    wave = clip.detach().cpu().numpy() if hasattr(clip, "detach") else clip
    wave, sr = np.asarray(wave, np.float32), sample_rate
    if wave.ndim != 1:
      raise ValueError(f"{where}: a waveform must be 1-D [samples] (or 2-D with a "
                       f"channel axis of at most {MAX_CHANNELS}), got shape {wave.shape}")
  if wave.size == 0:
    raise ValueError(f"{where} is empty (0 samples)")
  bad = int(np.sum(~np.isfinite(wave)))
  if bad:
    raise ValueError(f"{where} has {bad} NaN/Inf samples of {wave.size}")
  return wave, int(sr)


def _mixed_down(clip: Any, where: str) -> np.ndarray:
  """A [samples, channels] or [channels, samples] clip -> its mono mean (float32)."""
  x = clip.detach().cpu().numpy() if hasattr(clip, "detach") else np.asarray(clip)
  axis = 1 if x.shape[1] <= MAX_CHANNELS and x.shape[1] < x.shape[0] else 0
  if x.shape[axis] > MAX_CHANNELS:
    raise ValueError(f"{where} has shape {x.shape}: neither axis is a channel axis (at "
                     f"most {MAX_CHANNELS} long); a clip is 1-D [samples] or 2-D [samples, "
                     "channels] / [channels, samples]; a batch is a list of clips")
  layout = "[samples, channels]" if axis == 1 else "[channels, samples]"
  logging.warning("%s of shape %s is taken as one clip of %d channels %s, mixed down to "
                  "mono", where, x.shape, x.shape[axis], layout)
  return np.asarray(x, np.float32).mean(axis)


def hop(window: int) -> int:
  """The hop between windows: half a window (SLAP's 5 s for 10 s)."""
  return max(1, window // 2)


def windows(wave: np.ndarray, window: int, hop: int, pad: str) -> tuple[list, list]:
  """(waveforms of ``window`` samples, real samples in each)."""
  n = wave.shape[0]
  if n <= window:   # padded as in training (input.pad)
    out, n = crop_or_pad(wave, window, None, pad)
    return [out], [n]
  starts = list(range(0, n - window + 1, hop))
  if starts[-1] + window < n:
    starts.append(n - window)        # the tail is covered too
  return [wave[s:s + window] for s in starts], [window] * len(starts)


def pool(embs: np.ndarray, owner: np.ndarray, num_clips: int, what: str = "audio"
         ) -> np.ndarray:
  """Mean of each clip's window embeddings (``owner[i]`` = clip of window i), L2-normalised.
  Non-finite window embeddings, or a clip's with a zero mean, raise ``NonFiniteError``
  naming ``what`` (the caller: "embed_audio", a split) and how many windows / clips."""
  embs = np.asarray(embs)
  check_finite(embs, f"{what}: window embeddings", "windows")
  pooled = np.stack([embs[owner == i].mean(0) for i in range(num_clips)])
  with np.errstate(invalid="ignore", divide="ignore"):   # a zero norm is refused below
    pooled = pooled / np.linalg.norm(pooled, axis=1, keepdims=True)
  check_finite(pooled, f"{what}: clip embeddings", "clips")
  return pooled
