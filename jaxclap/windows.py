"""Clips -> training-window waveforms and back, shared by the input pipeline, ``jaxclap.load``
and the PyTorch export (``jaxclap.torch_model``), so all three cut, pad and pool alike.

Numpy only: ``jaxclap.torch_model`` imports it without JAX.

  crop_or_pad   one waveform -> exactly the training window (random or start crop; zero
                or LAION's "repeatpad" padding) and how many samples are real
  clip_list     one clip or a batch of clips (paths, 1-D or 2-D arrays / tensors) -> a list
  hop           the half-window hop ``windows`` is called with
  windows       a clip -> windows of the training length with a half-window hop (the
                tail covered too; SLAP's 10 s / 5 s for a 10 s window), short clips padded
  pool          window embeddings -> each clip's mean, re-normalised
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np


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
  those -> a list of clips."""
  ndim = getattr(clips, "ndim", None)
  if isinstance(clips, (str, os.PathLike)) or ndim == 1:
    return [clips]
  return list(clips)


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


def pool(embs: np.ndarray, owner: np.ndarray, num_clips: int) -> np.ndarray:
  """Mean of each clip's window embeddings (``owner[i]`` = clip of window i), L2-normalised."""
  pooled = np.stack([embs[owner == i].mean(0) for i in range(num_clips)])
  return pooled / np.linalg.norm(pooled, axis=1, keepdims=True)
