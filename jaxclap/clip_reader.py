"""One clip's audio file -> a record: the reader ``python -m jaxclap.prepare``, the
``data/`` builders and Beam's workers (``jaxclap.prepare_beam``) all use.

Kept apart from ``jaxclap.prepare`` (which imports the training config, and so JAX) so a
Beam worker process starts in a fraction of the time: it imports only this, numpy,
libsndfile, librosa's resampler and the record format.
"""

from __future__ import annotations

import os
from typing import NamedTuple

import numpy as np

from jaxclap.corpus import records


def _wav_truncation(path: str) -> str | None:
  """Why a RIFF/WAVE file is truncated (its ``data`` chunk declares more bytes than the
  file holds), else None. libsndfile reads such a file as a shorter clip without a word,
  so the header is checked here; other containers are left to their decoders."""
  with open(path, "rb") as f:
    head = f.read(12)
    if head[:4] != b"RIFF" or head[8:12] != b"WAVE":
      return None
    size = os.fstat(f.fileno()).st_size
    while True:
      chunk = f.read(8)
      if len(chunk) < 8:
        return None
      cid, n = chunk[:4], int.from_bytes(chunk[4:], "little")
      if cid == b"data":
        have = size - f.tell()
        return (f"WAV file is truncated: its header declares {n} bytes of audio, the file "
                f"holds {have}") if have < n else None
      f.seek(n + (n & 1), 1)


def _not_a_file(path: str) -> str:
  if os.path.isdir(path):
    return f"audio path is a directory, not a file: {path}"
  if os.path.islink(path):
    try:
      os.stat(path)
    except OSError as e:   # ELOOP for a loop, ENOENT for a dangling link
      return f"audio path is a broken symlink ({e.strerror}): {path}"
  return f"audio file not found: {path}"


def _read_audio(path: str, start: float | None, end: float | None,
                max_seconds: float) -> tuple[np.ndarray, int]:
  """Decodes (a segment of) a file as float32 [samples, channels] or [samples].

  An over-long segment is refused from the header, before hours of audio are decoded.
  """
  import soundfile as sf

  truncated = _wav_truncation(path)
  if truncated:
    raise records.BadRecord(truncated)
  try:
    info = sf.info(path)
    first = int(round((start or 0.0) * info.samplerate))
    last = int(round(end * info.samplerate)) if end is not None else -1
    frames = (last if last >= 0 else info.frames) - first
    if info.frames > 0 and frames / info.samplerate > max_seconds:
      raise records.BadRecord(
          f"audio is {frames / info.samplerate:.1f} s long, longer than max_seconds="
          f"{max_seconds} (cut long recordings into segments with start/end)")
    wave, sr = sf.read(path, start=first, stop=None if last < 0 else last, dtype="float32",
                       always_2d=False)
    return wave, sr
  except (sf.LibsndfileError, RuntimeError, TypeError) as sf_err:
    # libsndfile lacks some codecs on some systems; librosa falls back to audioread.
    import librosa
    try:
      duration = None if end is None else end - (start or 0.0)
      wave, sr = librosa.load(path, sr=None, mono=False, offset=start or 0.0,
                              duration=duration, dtype=np.float32)
      return wave.T, sr
    except Exception as e:  # noqa: BLE001 - any decoder failure is a bad file
      raise records.BadRecord(f"cannot decode audio ({sf_err}; {type(e).__name__}: {e})") from None


def load_audio(path: str, start: float | None, end: float | None, *, sample_rate: int,
               max_seconds: float) -> tuple[np.ndarray, int]:
  """One clip's file (or its ``start``-``end`` segment) -> (mono float32 waveform at
  ``sample_rate``, the file's own rate); raises ``records.BadRecord`` naming what is
  wrong. What ``prepare`` and the ``data/`` builders read every clip with."""
  import librosa

  if not os.path.isfile(path):
    raise records.BadRecord(_not_a_file(path))
  if os.path.getsize(path) == 0:
    raise records.BadRecord(f"audio file is empty (0 bytes): {path}")
  wave, sr = _read_audio(path, start, end, max_seconds)
  wave = records.check_waveform(wave, sr, max_seconds=max_seconds)
  if sr != sample_rate:
    wave = librosa.resample(wave, orig_sr=sr, target_sr=sample_rate).astype(np.float32)
  peak = float(np.max(np.abs(wave)))
  if peak > 1.0:   # resampling overshoot or float files above full scale: scale, don't clip
    wave = wave / peak
  return wave, sr


class Item(NamedTuple):
  """One clip with everything but its audio read and checked: what a listing (a manifest,
  a ``data/`` builder) hands to ``decode``, in the single process and on Beam's workers
  alike (plain values, so it pickles and round-trips through JSON)."""
  key: str                          # the record's key in the TFDS writer
  where: str                        # names the clip in a skip message (file:line (audio))
  id: str
  path: str
  start: float | None
  end: float | None
  captions: tuple[str, ...]
  fine_captions: tuple[str, ...]
  metadata: dict                    # "original_sample_rate" is added by ``decode``


def decode(item: Item, *, sample_rate: int, max_seconds: float) -> dict:
  """An item -> its record (audio read, mono, at ``sample_rate``); raises
  ``records.BadRecord`` naming what is wrong with the audio."""
  wave, sr = load_audio(item.path, item.start, item.end, sample_rate=sample_rate,
                        max_seconds=max_seconds)
  return records.make_record(
      id=item.id, wave=wave, sample_rate=sample_rate, captions=list(item.captions),
      fine_captions=list(item.fine_captions),
      metadata=dict(item.metadata, original_sample_rate=int(sr)))
