"""What every data/ builder shares: its flags, reading one clip, writing with skips counted.

A builder is a ``Corpus``: its name, a ``list_clips(args, skips)`` that reads the user's
download (CSV files, file names) into ``Clip``s per split, and the tasks it declares.
``main`` parses the shared flags (and the builder's own, ``add_flags``); ``build``
decodes each clip with ``jaxclap.clip_reader`` (``python -m jaxclap.prepare``'s reader),
in this process or on Apache Beam's workers (``--beam``), resamples it to training's rate,
checks audio and captions with ``jaxclap.corpus.records``' checks and writes the corpus
with ``records.write_tfds`` and ``records.write_tasks``. Nothing reaches the network.

Nothing bad is dropped silently: a file the listing cannot place (a name that breaks the
corpus's naming scheme, a CSV row naming no file), a clip whose audio is missing, empty,
undecodable, truncated, silent or too long, or whose captions are bad, is a skip counted
by reason and logged with its file (``--on_error=skip``, the default), or stops the run
naming it (``--on_error=raise``). The run ends with the kept / skipped report per split.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import logging
import math
import os
import sys
from typing import Any, Callable, Iterable, Mapping, NamedTuple


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:   # run from a checkout as `python data/<corpus>.py`
  sys.path.insert(0, ROOT)

from jaxclap import prepare, prepare_beam  # noqa: E402
from jaxclap.corpus import records  # noqa: E402

BadRecord = records.BadRecord


class Clip(NamedTuple):
  """One clip as a builder lists it, before its audio is read."""
  id: str                       # unique within the corpus (the record's key and id)
  path: str | None              # the audio file; None when the user could not obtain it
  captions: tuple[str, ...]     # global captions (real, or templated from labels)
  metadata: Mapping[str, Any]   # labels and provenance; "file" is added by ``build``
  start: float | None = None    # seconds: use only this segment of the file
  end: float | None = None
  error: str | None = None      # known bad at listing time: a counted skip with this reason


class Corpus(NamedTuple):
  name: str                     # dataset name: <out>/<name>/1.0.0
  doc: str                      # the builder's module docstring (--help, description)
  list_clips: Callable[[argparse.Namespace, records.SkipCounter], Mapping[str, list[Clip]]]
  tasks: Mapping[str, Mapping[str, Any]]   # records.read_tasks' shape
  add_flags: Callable[[argparse.ArgumentParser], None] | None = None


# ----------------------------------------------------------------- reading the download


def read_csv(path: str, columns: Iterable[str], *, encoding: str = "utf-8-sig",
             delimiter: str = ",") -> list[dict[str, str]]:
  """The rows of a CSV file as dicts; a missing file or missing columns raise, naming
  the file and what it lacks (the usual sign of a wrong --download_dir)."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path}: no such file (is --download_dir the corpus's folder?)")
  with open(path, newline="", encoding=encoding) as f:
    reader = csv.DictReader(f, delimiter=delimiter)
    header = [h.strip() for h in reader.fieldnames or []]
    missing = [c for c in columns if c not in header]
    if missing:
      raise ValueError(f"{path}: no column(s) {missing}; its header is {header}")
    return [{k.strip(): (v or "").strip() for k, v in row.items() if k is not None}
            for row in reader]


def files(folder: str, suffixes: tuple[str, ...] = (".wav",)) -> list[str]:
  """Every file under ``folder`` (recursively) ending in one of ``suffixes``
  (case-insensitive), sorted, so a build's order never depends on the file system."""
  if not os.path.isdir(folder):
    raise FileNotFoundError(f"{folder}: no such folder (is --download_dir the corpus's folder?)")
  out = []
  for root, dirs, names in os.walk(folder):
    dirs.sort()
    out += [os.path.join(root, n) for n in names if n.lower().endswith(suffixes)
            and not n.startswith("._")]   # macOS resource forks inside zip downloads
  return sorted(out)


def speaker_splits(groups: Mapping[str, Iterable[str]], *, validation: float = 0.1,
                   test: float = 0.2) -> dict[str, str]:
  """speaker -> "train" / "validation" / "test", speaker-disjoint, for a corpus that
  defines no split. Within each group (e.g. sex), speakers sorted by id: the last
  ``ceil(test * n)`` are test, the ``ceil(validation * n)`` before them validation, the
  rest train; so every split has both groups and the rule can be stated in one line."""
  out = {}
  for _, speakers in sorted(groups.items()):
    speakers = sorted(set(speakers))
    n_test = math.ceil(test * len(speakers))
    n_val = math.ceil(validation * len(speakers))
    n_train = len(speakers) - n_test - n_val
    for i, s in enumerate(speakers):
      out[s] = "train" if i < n_train else "validation" if i < n_train + n_val else "test"
  return out


def article(phrase: str) -> str:
  """ "angry voice" -> "an angry voice"."""
  return ("an " if phrase[:1].lower() in "aeiou" else "a ") + phrase


def emotion_prompt(emotion: str) -> str:
  """The zero-shot prompt of an emotion adjective, one wording for every speech corpus."""
  return f"A person speaking in {article(emotion + ' voice')}."


def words(label: str) -> str:
  """A label as words: "door_wood_knock" -> "door wood knock"."""
  return " ".join(label.replace("_", " ").split())


# ------------------------------------------------------------------------- one clip


def _items(clips: list[Clip], root: str, skips: records.SkipCounter, *,
           max_caption_chars: int) -> list[prepare.Item]:
  """The clips whose listing is good (no known error, an id not listed before, good
  captions) as ``prepare.Item``s, in order; the others go to ``skips``."""
  seen, items = set(), []
  for clip in clips:
    rel = os.path.relpath(clip.path, root) if clip.path else None
    where = f"{clip.id} ({rel})" if rel else clip.id
    try:
      if clip.error:
        raise BadRecord(clip.error)
      if clip.id in seen:
        raise BadRecord(f"id {clip.id!r} is listed twice")
      captions = records.check_captions(list(clip.captions), max_chars=max_caption_chars)
    except BadRecord as e:
      skips.skip(where, e)
      continue
    seen.add(clip.id)
    items.append(prepare.Item(key=clip.id, where=where, id=clip.id, path=clip.path,
                              start=clip.start, end=clip.end, captions=tuple(captions),
                              fine_captions=(), metadata=dict(clip.metadata, file=rel)))
  return items


# ------------------------------------------------------------------------ the build


def build(corpus: Corpus, args: argparse.Namespace):
  """Lists, decodes and writes ``corpus`` from ``args`` (``parser``'s flags); returns
  (dataset directory, {"files" | split: SkipCounter})."""
  args.download_dir = os.path.abspath(os.path.expanduser(args.download_dir))
  args.out = os.path.abspath(os.path.expanduser(args.out))
  if not os.path.isdir(args.download_dir):
    raise FileNotFoundError(f"--download_dir {args.download_dir}: no such folder")
  listing = records.SkipCounter("listed file", args.on_error)
  splits = {s: list(c) for s, c in corpus.list_clips(args, listing).items() if c}
  listing.kept = sum(len(c) for c in splits.values())
  if not splits:
    raise ValueError(f"--download_dir {args.download_dir}: found no clips of {corpus.name} "
                     "(see the expected layout in the builder's --help)")
  target = os.path.join(args.out, args.name, "1.0.0")
  if os.path.exists(target) and not args.overwrite:   # before any audio is read
    raise FileExistsError(f"{target} exists; pass --overwrite to replace it")
  counters = {s: records.SkipCounter(f"{s} clip", args.on_error) for s in splits}
  items = {s: _items(splits[s], args.download_dir, counters[s],
                     max_caption_chars=args.max_caption_chars) for s in splits}
  description = (corpus.doc.strip().split("\n\n")[0] +
                 f"\nBuilt by data/{corpus.name}.py from {args.download_dir}")
  if getattr(args, "beam_args", None) is not None:
    path = prepare_beam.write(args.name, items, args.out,
                              counters, sample_rate=args.sample_rate,
                              max_seconds=args.max_seconds, description=description,
                              beam_args=args.beam_args, shard_clips=args.shard_clips,
                              overwrite=args.overwrite)
  else:
    path = _write_here(args, items, counters, description)
  if any(corpus.tasks.values()):
    records.write_tasks(path, corpus.tasks)
  missing = [(s, c) for s, clips in splits.items() for c in clips
             if c.path is None or not os.path.isfile(c.path)]
  if missing:   # what the user could not obtain, to fetch and rebuild
    with open(os.path.join(path, MISSING_FILE), "w", encoding="utf-8") as f:
      f.write("split\tid\treason\n")
      f.writelines(f"{s}\t{c.id}\t{c.error or 'no file ' + c.path}\n" for s, c in missing)
  return path, {"files": listing, **counters}


def _write_here(args, items, counters, description):
  """The single-process path: this process decodes and TFDS's writer writes."""
  prepare.replace_existing(os.path.join(args.out, args.name, "1.0.0"), args.overwrite)
  # TFDS cannot write an empty split: each split's first good clip is read before
  # anything is written, and a split with none (say, AudioCaps' test clips not obtained)
  # is left out, with its skips reported.
  generators = {}
  for split in items:
    gen = prepare.decoded(items[split], counters[split], sample_rate=args.sample_rate,
                          max_seconds=args.max_seconds)
    first = next(gen, None)
    if first is None:
      logging.warning("split %s: every one of its clips was skipped; it is left out", split)
    else:
      generators[split] = (lambda first, gen: lambda: itertools.chain([first], gen))(first, gen)
  if not generators:
    raise ValueError(f"--download_dir {args.download_dir}: every clip was skipped:\n" +
                     "\n".join(c.summary() for c in counters.values()))
  return records.write_tfds(args.name, generators, args.out, description=description)


MISSING_FILE = "missing_audio.tsv"


def parser(corpus: Corpus) -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog=f"python data/{corpus.name}.py",
                              description=corpus.doc,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--download_dir", required=True,
                 help="the corpus as downloaded and unpacked (layout above); read only")
  p.add_argument("--out", required=True, help="folder to write the dataset under "
                 f"(<out>/{corpus.name}/1.0.0)")
  p.add_argument("--name", default=corpus.name, help=f"dataset name (default {corpus.name})")
  p.add_argument("--sample_rate", type=int, default=prepare.SAMPLE_RATE,
                 help=f"rate the audio is stored at, Hz (default {prepare.SAMPLE_RATE}, "
                      "training's)")
  p.add_argument("--max_seconds", type=float, default=600.0,
                 help="longer clips are bad input (default 600)")
  p.add_argument("--max_caption_chars", type=int, default=prepare.MAX_CAPTION_CHARS,
                 help=f"longer captions are bad input (default {prepare.MAX_CAPTION_CHARS}, "
                      "training's limit)")
  p.add_argument("--on_error", choices=("skip", "raise"), default="skip",
                 help="skip bad files (counted, logged) or stop at the first (default skip)")
  p.add_argument("--overwrite", action="store_true", help="replace an existing dataset")
  prepare_beam.add_flags(p)
  if corpus.add_flags:
    corpus.add_flags(p)
  return p


def main(corpus: Corpus, argv=None) -> int:
  args, args.beam_args = prepare_beam.parse_args(parser(corpus), argv)
  logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
  try:
    path, counters = build(corpus, args)
  except (BadRecord, FileNotFoundError, FileExistsError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  for name, c in counters.items():
    if name != "files" or c.skipped:
      print(c.summary())
  if os.path.exists(os.path.join(path, MISSING_FILE)):
    print(f"clips whose audio was not found are listed in {os.path.join(path, MISSING_FILE)}")
  print(f"wrote {path}")
  return 0
