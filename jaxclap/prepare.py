r"""Bring your own data: a JSONL manifest of audio files -> a jaxclap corpus.

  python -m jaxclap.prepare --manifest clips.jsonl --out ~/corpora [--name my_corpus]
  python -m jaxclap.prepare --manifest train=tr.jsonl --manifest test=te.jsonl --out DIR

Each manifest line is one clip:

  {"audio": "wav/0001.flac", "captions": ["A calm older man ..."], ...}

  audio          path of a WAV/FLAC/OGG/MP3 file; relative paths resolve against the
                 manifest's folder
  captions       one caption or a list of them (global captions; at least one)
  fine_captions  optional list of fine-grained captions
  id             optional, unique; defaults to "<split>/<line number>"
  start, end     optional seconds: use only this segment of the file
  anything else  kept as the clip's metadata (JSON), e.g. speaker, labels

The output is the array_record TFDS dataset every jaxclap corpus uses
(``jaxclap.corpus.records``), at ``<out>/<name>/1.0.0``; name it as an input source in a
config (``input.sources = [dict(path=".../<name>/1.0.0", split="train")]``).

``--tasks FILE`` declares the corpus's evaluation tasks (binary, multi-class, graded: the
format of ``jaxclap.corpus.records``' docstring); it is checked before anything is written
and stored beside the splits as tasks.json, where evaluators find it.

Audio is converted to mono (channels averaged) at ``--sample_rate``. A line that is not
JSON, names a missing, empty, undecodable or truncated (WAV) file, a directory or a broken
symlink, holds empty/silent/NaN/over-long audio or empty/over-long/non-UTF-8 captions, or
repeats an id, is skipped, counted and logged with its line number
(``--on_error=skip``, the default), or stops the run with that message
(``--on_error=raise``). The run ends with a report of what was kept and skipped.
The sample rate and caption limit default to training's (``configs.base``'s ``input``), so
a corpus prepared with the defaults is one training reads.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
from typing import Iterator

import numpy as np

from jaxclap import configs
from jaxclap.corpus import records

# Training's input settings: restating them here is how the two drifted apart.
_TRAINING_INPUT = configs.base({}).input
SAMPLE_RATE = int(_TRAINING_INPUT.sample_rate)
MAX_CAPTION_CHARS = int(_TRAINING_INPUT.max_caption_chars)


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


def examples(manifest: str, split: str, *, sample_rate: int, max_seconds: float,
             max_caption_chars: int, skips: records.SkipCounter) -> Iterator[tuple[str, dict]]:
  """Yields ``(key, record)`` for each good line of ``manifest``; bad lines go to
  ``skips`` (which raises instead when its policy is 'raise')."""

  root = os.path.dirname(os.path.abspath(manifest))
  seen_ids: dict[str, int] = {}
  with open(manifest, "rb") as f:
    for lineno, raw in enumerate(f, start=1):
      where = f"{manifest}:{lineno}"
      if not raw.strip():
        continue
      try:
        try:
          line = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError as e:
          raise records.BadRecord(f"line is not valid UTF-8 ({e})") from None
        except json.JSONDecodeError as e:
          raise records.BadRecord(f"line is not JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(line, dict):
          raise records.BadRecord(f"line is a JSON {type(line).__name__}, not an object")
        if "audio" not in line:
          raise records.BadRecord("line has no 'audio' key")
        path = os.path.join(root, str(line["audio"]))
        where = f"{manifest}:{lineno} ({line['audio']})"
        captions = records.check_captions(line.get("captions"), max_chars=max_caption_chars)
        fine = records.check_captions(line.get("fine_captions"), max_chars=max_caption_chars,
                                      field="fine_captions", required=False)
        wave, sr = load_audio(path, line.get("start"), line.get("end"),
                              sample_rate=sample_rate, max_seconds=max_seconds)
        clip_id = str(line.get("id", f"{split}/{lineno}"))
        if clip_id in seen_ids:
          raise records.BadRecord(f"id {clip_id!r} already used on line {seen_ids[clip_id]}")
        seen_ids[clip_id] = lineno
        meta = {k: v for k, v in line.items()
                if k not in ("captions", "fine_captions", "id")}
        meta["original_sample_rate"] = sr
      except records.BadRecord as e:
        skips.skip(where, e)
        continue
      skips.kept += 1
      yield f"{lineno:09d}", records.make_record(
          id=clip_id, wave=wave, sample_rate=sample_rate, captions=captions,
          fine_captions=fine, metadata=meta)


def prepare(manifests: dict[str, str], out: str, name: str, *,
            sample_rate: int = SAMPLE_RATE, max_seconds: float = 600.0,
            max_caption_chars: int = MAX_CAPTION_CHARS, on_error: str = "skip",
            overwrite: bool = False, tasks: str | None = None) -> tuple[str, dict]:
  """Writes the manifests (split -> path) as a corpus; returns (dataset dir, skip counters).
  ``tasks``: a tasks JSON file (``records.read_tasks``' format) to declare with it."""
  if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
    raise ValueError(f"--name {name!r}: use lower-case letters, digits and underscores")
  for split, path in manifests.items():
    if not os.path.isfile(path):
      raise FileNotFoundError(f"--manifest {split}={path}: no such file")
  declared = _read_tasks_file(tasks) if tasks else None  # before hours of audio are read
  target = os.path.join(out, name, "1.0.0")
  if os.path.exists(target):
    if not overwrite:
      raise FileExistsError(f"{target} exists; pass --overwrite to replace it")
    import shutil
    shutil.rmtree(target)
  counters = {s: records.SkipCounter(f"{s} clip", on_error) for s in manifests}

  def split_fn(split):
    return lambda: examples(manifests[split], split, sample_rate=sample_rate,
                            max_seconds=max_seconds, max_caption_chars=max_caption_chars,
                            skips=counters[split])

  path = records.write_tfds(
      name, {s: split_fn(s) for s in manifests}, out,
      description=f"Prepared by jaxclap.prepare from {sorted(manifests.values())}")
  if declared:
    records.write_tasks(path, declared)
  return path, counters


def _read_tasks_file(path: str) -> dict:
  if not os.path.isfile(path):
    raise FileNotFoundError(f"--tasks {path}: no such file")
  with open(path, encoding="utf-8") as f:
    try:
      obj = json.load(f)
    except ValueError as e:
      raise ValueError(f"{path}: not JSON ({e})") from None
  return records.parse_tasks(obj, path)


def _parse_manifests(values: list[str]) -> dict[str, str]:
  out = {}
  for v in values:
    split, sep, path = v.partition("=")
    if not sep:
      split, path = "train", v
    if split in out:
      raise ValueError(f"--manifest: split {split!r} given twice")
    out[split] = path
  return out


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
      prog="python -m jaxclap.prepare", description=__doc__.split("\n\n")[0],
      formatter_class=argparse.RawDescriptionHelpFormatter,
      epilog="See the module docstring (python -c 'import jaxclap.prepare; "
             "help(jaxclap.prepare)') for the manifest format.")
  p.add_argument("--manifest", action="append", required=True, metavar="[SPLIT=]FILE",
                 help="JSONL manifest; repeat with SPLIT=FILE for several splits "
                      "(a bare FILE is the 'train' split)")
  p.add_argument("--out", required=True, help="folder to write the dataset under")
  p.add_argument("--name", default=None,
                 help="dataset name (default: the first manifest's file name)")
  p.add_argument("--sample_rate", type=int, default=SAMPLE_RATE,
                 help=f"rate all audio is stored at, Hz (default {SAMPLE_RATE}, training's)")
  p.add_argument("--max_seconds", type=float, default=600.0,
                 help="longer clips are bad input; cut them into segments with "
                      "start/end first (default 600)")
  p.add_argument("--max_caption_chars", type=int, default=MAX_CAPTION_CHARS,
                 help=f"longer captions are bad input (default {MAX_CAPTION_CHARS}: "
                      "training refuses longer ones)")
  p.add_argument("--on_error", choices=("skip", "raise"), default="skip",
                 help="skip bad lines (counted, logged) or stop at the first (default skip)")
  p.add_argument("--overwrite", action="store_true", help="replace an existing dataset")
  p.add_argument("--tasks", default=None, metavar="FILE",
                 help="JSON file declaring the corpus's evaluation tasks (see "
                      "jaxclap.corpus.records), written beside the splits as tasks.json")
  return p


def main(argv=None):
  args = _parser().parse_args(argv)
  logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
  manifests = _parse_manifests(args.manifest)
  name = args.name or re.sub(r"[^a-z0-9_]", "_",
                             os.path.splitext(os.path.basename(next(iter(manifests.values()))))[0].lower())
  if not name or not name[0].isalpha():
    name = "corpus_" + name
  try:
    path, counters = prepare(manifests, args.out, name, sample_rate=args.sample_rate,
                             max_seconds=args.max_seconds,
                             max_caption_chars=args.max_caption_chars,
                             on_error=args.on_error, overwrite=args.overwrite,
                             tasks=args.tasks)
  except (records.BadRecord, FileNotFoundError, FileExistsError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  for c in counters.values():
    print(c.summary())
  print(f"wrote {path}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
