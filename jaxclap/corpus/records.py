"""The one record format every jaxclap corpus is stored in, and the checks on its way in.

A corpus (the embedded espeak-ng corpus, a user's manifest, a public dataset builder) is
a TFDS dataset written with ``file_format="array_record"`` so that ``tfds.data_source``
and grain read any record at random without TensorFlow. Each record is one clip:

  id             str    unique within the corpus
  audio          int16  [samples] mono PCM, full scale 32767 <-> 1.0. TFDS's ``Audio``
                        feature needs TensorFlow, so waveforms are stored as tensors.
  sample_rate    int32  Hz
  captions       [str]  global captions, at least one (one is drawn per training step)
  fine_captions  [str]  fine-grained captions narrating a change inside the clip (CLSP);
                        may be empty
  metadata       str    a JSON object with whatever the corpus knows (speaker, labels...)

Bad input is caught here, before anything reaches jit: ``check_waveform`` and
``check_captions`` either return a cleaned value or raise ``BadRecord`` with a reason;
writers decide (``on_error``) whether that aborts or becomes a counted, logged skip.
"""

from __future__ import annotations

import collections
import json
import logging
import re
from typing import Any, Callable, Iterable, Mapping

import numpy as np

FEATURE_KEYS = ("id", "audio", "sample_rate", "captions", "fine_captions", "metadata")


class BadRecord(ValueError):
  """A clip that cannot become a record. ``str(e)`` names what is wrong."""


def features():
  """The TFDS ``FeaturesDict`` of a jaxclap record (imported lazily: tfds is slow)."""
  import tensorflow_datasets as tfds

  return tfds.features.FeaturesDict({
      "id": tfds.features.Text(),
      # Raw little-endian bytes: 2 bytes a sample (the default proto encoding spends ~6).
      "audio": tfds.features.Tensor(shape=(None,), dtype=np.int16,
                                    encoding=tfds.features.Encoding.BYTES),
      "sample_rate": tfds.features.Scalar(dtype=np.int32),
      "captions": tfds.features.Sequence(tfds.features.Text()),
      "fine_captions": tfds.features.Sequence(tfds.features.Text()),
      "metadata": tfds.features.Text(),
  })


def to_pcm16(wave: np.ndarray) -> np.ndarray:
  """Float waveform in [-1, 1] -> int16 PCM (clipped, rounded)."""
  return np.clip(np.round(np.asarray(wave, np.float64) * 32767.0), -32768, 32767).astype(np.int16)


def from_pcm16(pcm: np.ndarray) -> np.ndarray:
  return np.asarray(pcm, np.float32) / np.float32(32767.0)


def check_waveform(wave: np.ndarray, sr: int, *, max_seconds: float,
                   min_seconds: float = 0.05) -> np.ndarray:
  """Validates a decoded waveform; returns it as mono float32.

  Multi-channel audio is averaged to mono (a conversion, not an error). Empty, too
  short, all-zero, non-finite and over-long audio raise ``BadRecord``.
  """
  wave = np.asarray(wave)
  if wave.ndim == 2:  # soundfile gives [samples, channels]
    wave = wave.mean(axis=1)
  if wave.ndim != 1:
    raise BadRecord(f"audio has shape {wave.shape}; expected [samples] or [samples, channels]")
  if not isinstance(sr, (int, np.integer)) or sr <= 0:
    raise BadRecord(f"sample rate {sr!r} is not a positive integer")
  if wave.size == 0:
    raise BadRecord("audio is empty (0 samples)")
  if not np.all(np.isfinite(wave)):
    raise BadRecord(f"audio has {int(np.sum(~np.isfinite(wave)))} NaN/Inf samples")
  seconds = wave.size / sr
  if seconds < min_seconds:
    raise BadRecord(f"audio is {seconds:.3f} s long, shorter than min_seconds={min_seconds}")
  if seconds > max_seconds:
    raise BadRecord(f"audio is {seconds:.1f} s long, longer than max_seconds={max_seconds} "
                    "(cut long recordings into segments before preparing them)")
  if not np.any(wave):
    raise BadRecord("audio is all zeros (digital silence)")
  return wave.astype(np.float32)


def check_captions(captions: Any, *, max_chars: int, field: str = "captions",
                   required: bool = True) -> list[str]:
  """Validates a list of captions; returns it stripped.

  Captions longer than ``max_chars`` raise: silently truncating a description could
  change what it says. Non-strings, bytes that are not UTF-8 and empty strings raise.
  """
  if captions is None:
    captions = []
  if isinstance(captions, (str, bytes)):
    captions = [captions]
  if not isinstance(captions, (list, tuple)):
    raise BadRecord(f"{field} must be a list of strings, got {type(captions).__name__}")
  out = []
  for i, c in enumerate(captions):
    if isinstance(c, bytes):
      try:
        c = c.decode("utf-8")
      except UnicodeDecodeError as e:
        raise BadRecord(f"{field}[{i}] is not valid UTF-8 ({e})") from None
    if not isinstance(c, str):
      raise BadRecord(f"{field}[{i}] is {type(c).__name__}, not a string")
    c = " ".join(c.split())
    if not c:
      raise BadRecord(f"{field}[{i}] is empty")
    if "\ufffd" in c:
      raise BadRecord(f"{field}[{i}] contains U+FFFD: it was not valid UTF-8 in the source")
    if len(c) > max_chars:
      raise BadRecord(f"{field}[{i}] has {len(c)} characters, more than max_chars={max_chars}")
    out.append(c)
  if required and not out:
    raise BadRecord(f"{field} is empty: every clip needs at least one caption")
  return out


def make_record(*, id: str, wave: np.ndarray, sample_rate: int, captions: list[str],
                fine_captions: list[str] = (), metadata: Mapping[str, Any] | None = None):
  """A record dict ready for the TFDS writer (waveform already checked)."""
  return {
      "id": id,
      "audio": to_pcm16(wave),
      "sample_rate": int(sample_rate),
      "captions": list(captions),
      "fine_captions": list(fine_captions),
      "metadata": json.dumps(dict(metadata or {}), sort_keys=True, ensure_ascii=False),
  }


def decode(record: Mapping[str, Any]) -> dict[str, Any]:
  """A record as read by ``tfds.data_source`` -> python/numpy values (str, float32 audio)."""
  text = lambda b: b.decode("utf-8") if isinstance(b, bytes) else str(b)
  return {
      "id": text(record["id"]),
      "audio": from_pcm16(record["audio"]),
      "sample_rate": int(record["sample_rate"]),
      "captions": [text(c) for c in record["captions"]],
      "fine_captions": [text(c) for c in record["fine_captions"]],
      "metadata": json.loads(text(record["metadata"])),
  }


class SkipCounter:
  """Counts skipped items by reason and logs each one, so nothing is lost silently."""

  def __init__(self, what: str, on_error: str = "skip", log_first: int = 20):
    if on_error not in ("skip", "raise"):
      raise ValueError(f"on_error must be 'skip' or 'raise', got {on_error!r}")
    self.what, self.on_error, self.log_first = what, on_error, log_first
    self.reasons: collections.Counter = collections.Counter()
    self.kept = 0

  def skip(self, where: str, err: Exception):
    """Records a bad item at ``where`` (a file/line/record name); raises if on_error='raise'."""
    if self.on_error == "raise":
      raise BadRecord(f"{where}: {err}") from err
    self.reasons[_reason_key(err)] += 1
    if sum(self.reasons.values()) <= self.log_first:
      logging.warning("skipping %s %s: %s", self.what, where, err)

  @property
  def skipped(self) -> int:
    return sum(self.reasons.values())

  def summary(self) -> str:
    lines = [f"{self.what}s kept: {self.kept}, skipped: {self.skipped}"]
    for reason, n in self.reasons.most_common():
      lines.append(f"  {n:6d}  {reason}")
    return "\n".join(lines)


def _reason_key(err: Exception) -> str:
  """Groups skip messages by kind: the message with numbers and quoted names removed."""
  msg = str(err)
  msg = re.sub(r"'[^']*'|\"[^\"]*\"", "'…'", msg)
  msg = re.sub(r"\d+(\.\d+)?", "N", msg)
  return msg[:100]


def write_tfds(name: str, splits: Mapping[str, Callable[[], Iterable[tuple[str, dict]]]],
               data_dir: str, *, description: str, version: str = "1.0.0") -> str:
  """Writes ``splits`` (split -> callable yielding ``(key, record)``) as an array_record
  TFDS dataset ``<data_dir>/<name>/<version>`` and returns that directory.

  Readable with ``tfds.data_source(name, data_dir=data_dir)`` or
  ``tfds.builder_from_directory(path)``, without TensorFlow.
  """
  import types
  import tensorflow_datasets as tfds

  def body(ns):
    ns["VERSION"] = tfds.core.Version(version)
    ns["__module__"] = __name__
    # No write-time shuffle: grain shuffles at read time, and tfds's shuffle buffer
    # spills to disk through TensorFlow (not installed) once a split passes 1 GB.
    ns["_info"] = lambda self: self.dataset_info_from_configs(
        description=description, features=features(), disable_shuffling=True)
    ns["_split_generators"] = lambda self, dl_manager: {
        split: self._generate_examples(gen) for split, gen in splits.items()}
    ns["_generate_examples"] = lambda self, gen: gen()

  cls = types.new_class(_camel(name), (tfds.core.GeneratorBasedBuilder,),
                        {"skip_registration": True}, body)
  cls.name = name
  builder = cls(data_dir=data_dir, file_format="array_record")
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(verify_ssl=False))
  return str(builder.data_dir)


def _camel(name: str) -> str:
  return "".join(part.capitalize() for part in name.split("_")) or "Corpus"


def open_split(path: str, split: str):
  """A random-access source over one split of a dataset written by ``write_tfds`` (or any
  array_record TFDS dataset with our features). ``path`` is the version directory, or a
  folder holding exactly one ``<name>/<version>`` tree."""
  import os
  import tensorflow_datasets as tfds

  if not os.path.exists(os.path.join(path, "dataset_info.json")):
    found = [os.path.join(r) for r, _, files in os.walk(path) if "dataset_info.json" in files]
    if len(found) != 1:
      raise FileNotFoundError(
          f"{path}: expected one TFDS dataset (a folder with dataset_info.json) under it, "
          f"found {len(found)}: {found[:5]}")
    path = found[0]
  builder = tfds.builder_from_directory(path)
  if split not in builder.info.splits:
    raise KeyError(f"{path}: no split {split!r}; it has {sorted(builder.info.splits)}")
  missing = set(FEATURE_KEYS) - set(builder.info.features.keys())
  if missing:
    raise KeyError(f"{path}: records lack the jaxclap features {sorted(missing)}")
  return builder.as_data_source(split)
