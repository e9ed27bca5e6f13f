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

A corpus may declare its evaluation tasks in ``tasks.json`` beside its splits
(``write_tasks`` / ``read_tasks``): which metadata key and values make each class and the
prompts that describe them, so an evaluator needs nothing but the corpus's path.

  {"format": 1,
   "binary":     {name: {"key", "positive": [values], "negative": [values],
                         "positive_prompt", "negative_prompt"}},
   "multiclass": {name: {"key", "classes": [values], "prompts": [one per class]}},
   "graded":     {name: {"key", "prompt", "negative_prompt": null, "exclude": [[key, value]]}}}

A prompt is a sentence or a list of phrasings (their embeddings are averaged); a section
may be left out. ``jaxclap.evaluate`` consumes the tasks (``task_label``,
``multiclass_label``, ``graded``).
"""

from __future__ import annotations

import collections
import json
import logging
import os
import re
from typing import Any, Callable, Iterable, Mapping, NamedTuple, Sequence

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


def decode(record: Mapping[str, Any], keys: Sequence[str] | None = None) -> dict[str, Any]:
  """A record as read by ``tfds.data_source`` -> python/numpy values (str, float32 audio);
  ``keys``: only those fields (a caption scan need not convert the audio)."""
  text = lambda b: b.decode("utf-8") if isinstance(b, bytes) else str(b)
  fields = {
      "id": lambda: text(record["id"]),
      "audio": lambda: from_pcm16(record["audio"]),
      "sample_rate": lambda: int(record["sample_rate"]),
      "captions": lambda: [text(c) for c in record["captions"]],
      "fine_captions": lambda: [text(c) for c in record["fine_captions"]],
      "metadata": lambda: json.loads(text(record["metadata"])),
  }
  return {k: fields[k]() for k in (fields if keys is None else keys)}


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
  folder holding exactly one ``<name>/<version>`` tree; a local folder or a ``gs://``
  URI (see ``dataset_dir``)."""
  import tensorflow_datasets as tfds

  path = dataset_dir(path)
  builder = tfds.builder_from_directory(path)
  if split not in builder.info.splits:
    raise KeyError(f"{path}: no split {split!r}; it has {sorted(builder.info.splits)}")
  missing = set(FEATURE_KEYS) - set(builder.info.features.keys())
  if missing:
    raise KeyError(f"{path}: records lack the jaxclap features {sorted(missing)}")
  return builder.as_data_source(split)


# How deep ``dataset_dir`` looks for the version directory: ``<path>/<name>/<version>``
# and a level above (on a bucket each level is one listing request per folder).
_SEARCH_DEPTH = 3


def dataset_dir(path: str) -> str:
  """The version directory of a dataset: ``path`` itself, or the one ``<name>/<version>``
  tree under it (at most ``_SEARCH_DEPTH`` levels down).

  ``path`` is anything etils' epath opens: a local folder, or ``gs://bucket/...`` (epath
  lists it with gcsfs, then TFDS reads the dataset's metadata through epath and
  array_record reads the records with its own Cloud Storage client; credentials come
  from the environment, as for ``gcloud``)."""
  from etils import epath
  root = epath.Path(path)
  if (root / "dataset_info.json").exists():
    return os.fspath(root)
  found = sorted({os.fspath(p.parent) for depth in range(1, _SEARCH_DEPTH + 1)
                  for p in root.glob("/".join(["*"] * depth) + "/dataset_info.json")})
  if len(found) != 1:
    raise FileNotFoundError(
        f"{path}: expected one TFDS dataset (a folder with dataset_info.json) in it or "
        f"up to {_SEARCH_DEPTH} levels below, found {len(found)}: {found[:5]}")
  return found[0]


# ---------------------------------------------------------------------------- tasks


class BinaryTask(NamedTuple):
  """A zero-shot antonym task: clips with ``metadata[key]`` in ``positive`` / ``negative``
  (others are excluded), scored against two prompts (SLAP: antonyms, never negations).
  A prompt may be a tuple of phrasings: a class that is a union ("a foreign language") is
  described by its generic phrase and by each member, and the embeddings are averaged."""
  key: str
  positive: tuple[str, ...]
  negative: tuple[str, ...]
  positive_prompt: str | tuple[str, ...]
  negative_prompt: str | tuple[str, ...]


class MultiClassTask(NamedTuple):
  """``metadata[key] == classes[i]`` -> class i, described by ``prompts[i]`` (a sentence or
  a tuple of phrasings whose embeddings are averaged)."""
  key: str
  classes: tuple[str, ...]
  prompts: tuple[str | tuple[str, ...], ...]


class GradedTask(NamedTuple):
  """``metadata[key]`` (a number; None = not measured) against the similarity to
  ``prompt``, minus that to ``negative_prompt`` if one is given. Clips with
  ``metadata[k] == v`` for a pair (k, v) of ``exclude`` are left out."""
  key: str
  prompt: str | tuple[str, ...]
  negative_prompt: str | tuple[str, ...] | None = None
  exclude: tuple[tuple[str, str], ...] = ()


TASKS_FILE = "tasks.json"
_TASKS_FORMAT = 1
TASK_KINDS = {"binary": BinaryTask, "multiclass": MultiClassTask, "graded": GradedTask}


def _text(v, where):
  if not isinstance(v, str) or not v.strip():
    raise ValueError(f"{where}: expected a non-empty string, got {v!r}")
  return v


def _prompt(v, where):
  """A sentence, or a list of phrasings -> str or tuple."""
  if isinstance(v, list):
    if not v:
      raise ValueError(f"{where}: expected a sentence or a non-empty list of them, got []")
    return tuple(_text(p, f"{where}[{i}]") for i, p in enumerate(v))
  return _text(v, where)


def _values(v, where):
  """Metadata values: strings, numbers or booleans (JSON null is "no value", never a class)."""
  if not isinstance(v, list) or not v:
    raise ValueError(f"{where}: expected a non-empty list of metadata values, got {v!r}")
  for i, x in enumerate(v):
    if not isinstance(x, (str, int, float, bool)):
      raise ValueError(f"{where}[{i}]: expected a string, number or boolean, got {x!r}")
  return tuple(v)


def _prompts(v, where):
  if not isinstance(v, list) or not v:
    raise ValueError(f"{where}: expected a list of prompts, one per class, got {v!r}")
  return tuple(_prompt(p, f"{where}[{i}]") for i, p in enumerate(v))


def _pairs(v, where):
  if not isinstance(v, list):
    raise ValueError(f"{where}: expected a list of [key, value] pairs, got {v!r}")
  for i, pair in enumerate(v):
    if not (isinstance(pair, list) and len(pair) == 2):
      raise ValueError(f"{where}[{i}]: expected a [key, value] pair, got {pair!r}")
    _text(pair[0], f"{where}[{i}][0]")
  return tuple(tuple(pair) for pair in v)


def _optional(check):
  return lambda v, where: None if v is None else check(v, where)


_FIELDS = {
    BinaryTask: {"key": _text, "positive": _values, "negative": _values,
                 "positive_prompt": _prompt, "negative_prompt": _prompt},
    MultiClassTask: {"key": _text, "classes": _values, "prompts": _prompts},
    GradedTask: {"key": _text, "prompt": _prompt, "negative_prompt": _optional(_prompt),
                 "exclude": _pairs},
}


def parse_tasks(obj: Any, where: str) -> dict[str, dict[str, Any]]:
  """A parsed tasks.json -> ``{"binary": {name: BinaryTask}, "multiclass": {...},
  "graded": {...}}``; anything malformed raises ``ValueError`` naming ``where`` (the
  file) and the key."""
  if not isinstance(obj, dict):
    raise ValueError(f"{where}: expected a JSON object, got {type(obj).__name__}")
  unknown = set(obj) - set(TASK_KINDS) - {"format"}
  if unknown:
    raise ValueError(f"{where}: unknown keys {sorted(unknown)}; expected 'format' and "
                     f"task kinds {sorted(TASK_KINDS)}")
  if obj.get("format", _TASKS_FORMAT) != _TASKS_FORMAT:
    raise ValueError(f"{where}: format {obj['format']!r}; this jaxclap reads format {_TASKS_FORMAT}")
  out = {}
  for kind, cls in TASK_KINDS.items():
    section = obj.get(kind, {})
    if not isinstance(section, dict):
      raise ValueError(f"{where}: {kind}: expected an object of named tasks, got "
                       f"{type(section).__name__}")
    out[kind] = {}
    for name, spec in section.items():
      at = f"{where}: {kind}.{name}"
      if not isinstance(spec, dict):
        raise ValueError(f"{at}: expected an object with keys {list(cls._fields)}, got {spec!r}")
      fields = _FIELDS[cls]
      unknown = set(spec) - set(fields)
      missing = [f for f in fields if f not in spec and f not in cls._field_defaults]
      if unknown or missing:
        raise ValueError(f"{at}: " + "; ".join(
            ([f"unknown keys {sorted(unknown)}"] if unknown else []) +
            ([f"missing keys {missing}"] if missing else [])) + f" (a {kind} task has {list(fields)})")
      task = cls(**{f: check(spec[f], f"{at}.{f}") for f, check in fields.items() if f in spec})
      if cls is MultiClassTask and len(task.prompts) != len(task.classes):
        raise ValueError(f"{at}.prompts: {len(task.prompts)} prompts for "
                         f"{len(task.classes)} classes")
      out[kind][name] = task
  return out


def tasks_json(tasks: Mapping[str, Mapping[str, Any]]) -> str:
  """The text of a tasks.json declaring ``tasks`` (``read_tasks``' shape; kinds may be
  left out). The same tasks always give the same text."""
  unknown = set(tasks) - set(TASK_KINDS)
  if unknown:
    raise ValueError(f"tasks: unknown kinds {sorted(unknown)}; expected {sorted(TASK_KINDS)}")
  obj = {"format": _TASKS_FORMAT}
  for kind, cls in TASK_KINDS.items():
    obj[kind] = {}
    for name, task in tasks.get(kind, {}).items():
      if not isinstance(task, cls):
        raise ValueError(f"tasks: {kind}.{name} is a {type(task).__name__}, not a {cls.__name__}")
      obj[kind][name] = task._asdict()
  text = json.dumps(obj, indent=1, ensure_ascii=False) + "\n"
  parse_tasks(json.loads(text), "tasks")  # what is written must read back
  return text


def write_tasks(path: str, tasks: Mapping[str, Mapping[str, Any]]) -> str:
  """Declares ``tasks`` in ``<path>/tasks.json`` (path: a dataset's version directory);
  returns the file. A file that already says the same is left untouched."""
  text = tasks_json(tasks)
  file = os.path.join(path, TASKS_FILE)
  try:
    with open(file, encoding="utf-8") as f:
      if f.read() == text:
        return file
  except OSError:
    pass
  # Replaced whole: a reader never sees half a file.
  with open(file + ".tmp", "w", encoding="utf-8") as f:
    f.write(text)
  os.replace(file + ".tmp", file)
  return file


def read_tasks(path: str) -> dict[str, dict[str, Any]]:
  """The tasks a corpus declares: ``{"binary": {name: BinaryTask}, "multiclass": {name:
  MultiClassTask}, "graded": {name: GradedTask}}``, each kind empty when it declares none
  (or has no tasks.json). ``path`` as for ``open_split``."""
  from etils import epath
  file = epath.Path(dataset_dir(path)) / TASKS_FILE
  if not file.exists():
    return {kind: {} for kind in TASK_KINDS}
  try:
    obj = json.loads(file.read_text(encoding="utf-8"))
  except ValueError as e:
    raise ValueError(f"{file}: not JSON ({e})") from None
  return parse_tasks(obj, os.fspath(file))
