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
``--beam`` does the audio work on Apache Beam (``jaxclap.prepare_beam``: DirectRunner
with N worker processes, Dataflow / Flink / Spark on a cluster; sharded, resumable, the
same records and report); flags this command does not know are Beam's options.
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


from jaxclap import configs
from jaxclap.clip_reader import Item, decode
from jaxclap.corpus import records

# Training's input settings: restating them here is how the two drifted apart.
_TRAINING_INPUT = configs.base({}).input
SAMPLE_RATE = int(_TRAINING_INPUT.sample_rate)
MAX_CAPTION_CHARS = int(_TRAINING_INPUT.max_caption_chars)


def list_manifest(manifest: str, split: str, *, max_caption_chars: int,
                  skips: records.SkipCounter) -> list[Item]:
  """The good lines of ``manifest`` as ``Item``s, without reading audio; bad lines (not
  JSON, no audio, bad captions, an id already used by an earlier line) go to ``skips``
  (which raises instead when its policy is 'raise')."""
  root = os.path.dirname(os.path.abspath(manifest))
  seen_ids: dict[str, int] = {}
  items = []
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
        where = f"{manifest}:{lineno} ({line['audio']})"
        captions = records.check_captions(line.get("captions"), max_chars=max_caption_chars)
        fine = records.check_captions(line.get("fine_captions"), max_chars=max_caption_chars,
                                      field="fine_captions", required=False)
        clip_id = str(line.get("id", f"{split}/{lineno}"))
        if clip_id in seen_ids:
          raise records.BadRecord(f"id {clip_id!r} already used on line {seen_ids[clip_id]}")
      except records.BadRecord as e:
        skips.skip(where, e)
        continue
      seen_ids[clip_id] = lineno
      items.append(Item(
          key=f"{lineno:09d}", where=where, id=clip_id,
          path=os.path.join(root, str(line["audio"])), start=line.get("start"),
          end=line.get("end"), captions=tuple(captions), fine_captions=tuple(fine),
          metadata={k: v for k, v in line.items()
                    if k not in ("captions", "fine_captions", "id")}))
  return items


def decoded(items: list[Item], skips: records.SkipCounter, *, sample_rate: int,
            max_seconds: float) -> Iterator[tuple[str, dict]]:
  """Yields ``(key, record)`` for each item whose audio is good, in order; the others go
  to ``skips``. The single-process path (``jaxclap.prepare_beam`` is the parallel one)."""
  for item in items:
    try:
      record = decode(item, sample_rate=sample_rate, max_seconds=max_seconds)
    except records.BadRecord as e:
      skips.skip(item.where, e)
      continue
    skips.kept += 1
    yield item.key, record


def examples(manifest: str, split: str, *, sample_rate: int, max_seconds: float,
             max_caption_chars: int, skips: records.SkipCounter) -> Iterator[tuple[str, dict]]:
  """Yields ``(key, record)`` for each good line of ``manifest``; bad lines go to
  ``skips`` (which raises instead when its policy is 'raise')."""
  items = list_manifest(manifest, split, max_caption_chars=max_caption_chars, skips=skips)
  yield from decoded(items, skips, sample_rate=sample_rate, max_seconds=max_seconds)


def prepare(manifests: dict[str, str], out: str, name: str, *,
            sample_rate: int = SAMPLE_RATE, max_seconds: float = 600.0,
            max_caption_chars: int = MAX_CAPTION_CHARS, on_error: str = "skip",
            overwrite: bool = False, tasks: str | None = None,
            beam_args: list[str] | None = None,
            shard_clips: int | None = None) -> tuple[str, dict]:
  """Writes the manifests (split -> path) as a corpus; returns (dataset dir, skip counters).
  ``tasks``: a tasks JSON file (``records.read_tasks``' format) to declare with it.
  ``beam_args``: run the audio work on Apache Beam with these pipeline options
  (``jaxclap.prepare_beam``; ``[]`` is DirectRunner, one worker per core), writing
  ``shard_clips`` clips a shard; None: this process, through TFDS's writer."""
  if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
    raise ValueError(f"--name {name!r}: use lower-case letters, digits and underscores")
  for split, path in manifests.items():
    if not os.path.isfile(path):
      raise FileNotFoundError(f"--manifest {split}={path}: no such file")
  declared = _read_tasks_file(tasks) if tasks else None  # before hours of audio are read
  counters = {s: records.SkipCounter(f"{s} clip", on_error) for s in manifests}
  description = f"Prepared by jaxclap.prepare from {sorted(manifests.values())}"
  if beam_args is not None:
    from jaxclap import prepare_beam

    items = {s: list_manifest(m, s, max_caption_chars=max_caption_chars, skips=counters[s])
             for s, m in manifests.items()}
    path = prepare_beam.write(name, items, out, counters, sample_rate=sample_rate,
                              max_seconds=max_seconds, description=description,
                              beam_args=beam_args, shard_clips=shard_clips,
                              overwrite=overwrite)
  else:
    replace_existing(os.path.join(out, name, "1.0.0"), overwrite)

    def split_fn(split):
      return lambda: examples(manifests[split], split, sample_rate=sample_rate,
                              max_seconds=max_seconds, max_caption_chars=max_caption_chars,
                              skips=counters[split])

    path = records.write_tfds(name, {s: split_fn(s) for s in manifests}, out,
                              description=description)
  if declared:
    records.write_tasks(path, declared)
  return path, counters


def replace_existing(target: str, overwrite: bool):
  """Refuses to write over a finished dataset unless ``overwrite``, which removes it."""
  if os.path.exists(target):
    if not overwrite:
      raise FileExistsError(f"{target} exists; pass --overwrite to replace it")
    import shutil
    shutil.rmtree(target)


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
  from jaxclap import prepare_beam   # its flags only; apache_beam is imported with --beam
  prepare_beam.add_flags(p)
  return p


def main(argv=None):
  from jaxclap import prepare_beam

  args, beam_args = prepare_beam.parse_args(_parser(), argv)
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
                             tasks=args.tasks, beam_args=beam_args,
                             shard_clips=args.shard_clips)
  except (records.BadRecord, FileNotFoundError, FileExistsError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  for c in counters.values():
    print(c.summary())
  print(f"wrote {path}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
