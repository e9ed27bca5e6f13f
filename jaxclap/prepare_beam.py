r"""Preparation on Apache Beam: the decode / resample / write work of ``jaxclap.prepare``
and the ``data/`` builders spread over workers, for corpora a single process would take
days on.

  python -m jaxclap.prepare --manifest clips.jsonl --out DIR --beam \
      --direct_num_workers=2 --direct_running_mode=multi_processing
  python data/esc50.py --download_dir=... --out=gs://bucket/corpora --beam \
      --runner=DataflowRunner --project=P --region=R --temp_location=gs://bucket/tmp \
      --setup_file=./setup.py

``--beam`` turns it on; every flag the command does not know is handed to Beam as a
pipeline option (``--runner`` and the runner's own). Without ``--runner`` it is
DirectRunner with one worker process per CPU core. Install with ``pip install
'jaxclap[beam]'``.

The listing (manifest lines, a builder's CSV files) stays in the driver: it reads no
audio and is where ids are checked unique. The clips of each split are cut, in order,
into shards of ``--shard_clips``; a worker decodes a shard's clips with the same
``jaxclap.clip_reader.decode`` the single process uses, serializes them with the corpus's
TFDS features and writes one array_record file. So the dataset holds the same records in
the same order as the single-process path, only in other shard files.

Resumable: the work goes to ``<out>/<name>/1.0.0.beam-incomplete/``, beside the plan
(the listing's fingerprint); a shard is done once its summary (kept count, skipped clips
with reasons) is written there. Run the same command again after a crash or a preempted
job and only the missing shards are done; a changed listing or option is refused (pass
--overwrite to start over). When every shard is done the non-empty ones are moved to the
TFDS file names, ``dataset_info.json`` is written (``tfds.folder_dataset.write_metadata``)
and the staging folder is removed. The kept / skipped report is the single process's,
from the shards' summaries. With ``--on_error=raise`` the shards are finished and the
first bad clip in listing order is raised (workers cannot stop one another).

Paths: the output and staging files go through Beam's ``FileSystems`` (``gs://`` needs
``apache-beam[gcp]``); audio is read by libsndfile, so the input files must be local or
mounted on the workers.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import math
import os
import tempfile
import threading
from typing import Mapping, Sequence

from jaxclap import clip_reader
from jaxclap.corpus import records

SHARD_CLIPS = 256       # ~80 MB of 10 s clips at 16 kHz: parallel work and resume granularity
_PLAN = "plan.json"
_FORMAT = 1             # bump when a shard's content for the same plan would change


def add_flags(p):
  """The Beam flags of ``python -m jaxclap.prepare`` and every ``data/`` builder."""
  p.add_argument("--beam", action="store_true",
                 help="do the decode/resample/write work on Apache Beam (pip install "
                      "'jaxclap[beam]'); flags not listed here are Beam pipeline options, "
                      "e.g. --runner=DataflowRunner, --direct_num_workers=2 (default: "
                      "DirectRunner, multi_processing, one worker per CPU core). Resumable: "
                      "rerun the same command to finish an interrupted run")
  p.add_argument("--shard_clips", type=int, default=SHARD_CLIPS,
                 help=f"with --beam: clips per shard, the unit of parallel work and of "
                      f"resuming (default {SHARD_CLIPS})")


def parse_args(p, argv=None):
  """``(args, beam_args)``: the flags ``p`` knows, and the rest as Beam's pipeline
  options when --beam is given (None without it; then unknown flags are an error)."""
  args, rest = p.parse_known_args(argv)
  if not args.beam:
    if rest:
      p.error(f"unrecognized arguments: {' '.join(rest)} (Beam options need --beam)")
    return args, None
  try:
    importlib.import_module("apache_beam")
  except ImportError as e:
    p.error(f"--beam needs Apache Beam ({e}): pip install 'jaxclap[beam]'")
  if args.shard_clips < 1:
    p.error(f"--shard_clips={args.shard_clips}: must be at least 1")
  return args, rest


def pipeline_options(beam_args: Sequence[str]):
  """Beam ``PipelineOptions`` from the user's flags; DirectRunner defaults to one worker
  process per core (Beam's own default is one thread, no faster than the plain path), and
  workers log at WARNING (at INFO they log every bundle)."""
  from apache_beam.options.pipeline_options import PipelineOptions

  named = {a.split("=")[0].lstrip("-") for a in beam_args if a.startswith("--")}
  runner = PipelineOptions(list(beam_args)).get_all_options()["runner"]
  extra = []
  if "default_sdk_harness_log_level" not in named:
    extra.append("--default_sdk_harness_log_level=WARNING")
  if runner in (None, "DirectRunner", "direct"):
    if "direct_running_mode" not in named:
      extra.append("--direct_running_mode=multi_processing")
    if "direct_num_workers" not in named:
      extra.append(f"--direct_num_workers={os.cpu_count() or 1}")
  return PipelineOptions(list(beam_args) + extra)


def _fs():
  from apache_beam.io.filesystems import FileSystems
  return FileSystems


def _join(*parts: str) -> str:
  return _fs().join(*parts)


def _read_json(path: str):
  with _fs().open(path) as f:
    return json.loads(f.read().decode("utf-8"))


def _write_json(path: str, obj):
  # Written whole, then renamed: a summary that exists is complete (it marks a done shard).
  with _fs().create(path + ".part") as f:
    f.write(json.dumps(obj).encode("utf-8"))
  _fs().rename([path + ".part"], [path])


def _shard_name(split: str, k: int) -> str:
  return f"{split}-{k:05d}"


class _Shard:
  """A worker's job: decode one shard's clips and write them as one array_record file."""

  def __init__(self, staging: str, sample_rate: int, max_seconds: float):
    self.staging, self.sample_rate, self.max_seconds = staging, sample_rate, max_seconds
    self._features = None

  def __call__(self, task: tuple[str, int]) -> str:
    from array_record.python import array_record_module

    split, k = task
    base = _join(self.staging, _shard_name(split, k))
    if _fs().exists(base + ".json"):   # a retried bundle whose shard was already written
      return base
    if self._features is None:
      self._features = records.features()
    items = [clip_reader.Item(**d) for d in _read_json(base + ".items.json")]
    local = "://" not in base
    fd, tmp = tempfile.mkstemp(suffix=".array_record",
                               dir=self.staging if local else None)
    os.close(fd)
    writer = array_record_module.ArrayRecordWriter(tmp, "group_size:1")
    kept, skipped, num_bytes = 0, [], 0
    for item in items:
      try:
        record = clip_reader.decode(item, sample_rate=self.sample_rate,
                                max_seconds=self.max_seconds)
      except records.BadRecord as e:
        skipped.append([item.where, str(e)])
        continue
      data = self._features.serialize_example(record)
      writer.write(data)
      kept += 1
      num_bytes += len(data)
    writer.close()
    if kept and local:
      os.replace(tmp, base + ".array_record")
    else:
      if kept:
        _fs().copy([tmp], [base + ".array_record"])
      os.remove(tmp)
    _write_json(base + ".json", dict(kept=kept, num_bytes=num_bytes, skipped=skipped))
    return base


def _fingerprint(name, splits, **options) -> str:
  h = hashlib.sha256(json.dumps(
      [_FORMAT, name, options, {s: [list(i) for i in items] for s, items in splits.items()}],
      sort_keys=True, default=str).encode())
  return h.hexdigest()


def _progress(staging: str, total: int, done0: int, stop: threading.Event):
  """A progress bar over done shards, from the summaries in the staging folder (so it
  works for any runner whose workers write where the driver can read)."""
  from tqdm import tqdm

  def done():
    return len(_fs().match([_join(staging, "*-[0-9][0-9][0-9][0-9][0-9].json")])[0].metadata_list)

  with tqdm(total=total, initial=done0, unit="shard", desc="preparing", disable=None) as bar:
    while not stop.wait(1.0):
      bar.update(done() - bar.n)
    bar.update(done() - bar.n)


def write(name: str, splits: Mapping[str, Sequence[clip_reader.Item]], out: str,
          counters: Mapping[str, records.SkipCounter], *, sample_rate: int,
          max_seconds: float, description: str, beam_args: Sequence[str],
          shard_clips: int | None = None, overwrite: bool = False) -> str:
  """Writes ``splits`` (split -> listed items, in order) as ``<out>/<name>/1.0.0`` on
  Beam; the clips whose audio is bad are added to ``counters[split]`` (which raises on
  the first when its policy is 'raise'). Returns the dataset directory."""
  import apache_beam as beam
  import tensorflow_datasets as tfds

  shard_clips = shard_clips or SHARD_CLIPS
  fs = _fs()
  target = _join(out, name, "1.0.0")
  staging = target + ".beam-incomplete"
  if fs.exists(target):
    if not overwrite:
      raise FileExistsError(f"{target} exists; pass --overwrite to replace it")
    fs.delete([target])
  if overwrite and fs.exists(staging):
    fs.delete([staging])
  shards = {s: math.ceil(len(items) / shard_clips) for s, items in splits.items()}
  fingerprint = _fingerprint(name, splits, sample_rate=sample_rate, max_seconds=max_seconds,
                             shard_clips=shard_clips)
  plan = _join(staging, _PLAN)
  if fs.exists(plan):
    if _read_json(plan).get("fingerprint") != fingerprint:
      raise ValueError(f"{staging} holds an unfinished run of another listing or other "
                       "options; pass --overwrite to discard it and start over")
  else:
    if not fs.exists(staging):
      fs.mkdirs(staging)
    for s, items in splits.items():
      for k in range(shards[s]):
        _write_json(_join(staging, _shard_name(s, k) + ".items.json"),
                    [i._asdict() for i in items[k * shard_clips:(k + 1) * shard_clips]])
    _write_json(plan, dict(fingerprint=fingerprint, name=name, shards=shards))
  todo = [(s, k) for s, n in shards.items() for k in range(n)
          if not fs.exists(_join(staging, _shard_name(s, k) + ".json"))]
  total = sum(shards.values())
  if len(todo) < total:
    logging.warning("resuming %s: %d of %d shards were already written", staging,
                    total - len(todo), total)
  if todo:
    stop = threading.Event()
    bar = threading.Thread(target=_progress, args=(staging, total, total - len(todo), stop),
                           daemon=True)
    bar.start()
    try:
      with beam.Pipeline(options=pipeline_options(beam_args)) as p:
        _ = (p | "shards" >> beam.Create(todo)
               | "spread" >> beam.Reshuffle()
               | "decode_and_write" >> beam.Map(_Shard(staging, sample_rate, max_seconds)))
    finally:
      stop.set()
      bar.join()

  # Every shard is done: the report, then the dataset under TFDS's names, assembled in
  # the staging folder (a rerun after a crash here picks up where it left) and renamed.
  final = _join(staging, "dataset")
  split_infos, moves = [], []
  for s, n in shards.items():
    lengths, num_bytes, files = [], 0, []
    for k in range(n):
      summary = _read_json(_join(staging, _shard_name(s, k) + ".json"))
      for where, reason in summary["skipped"]:
        counters[s].skip(where, records.BadRecord(reason))
      counters[s].kept += summary["kept"]
      if summary["kept"]:
        lengths.append(summary["kept"])
        num_bytes += summary["num_bytes"]
        files.append(_join(staging, _shard_name(s, k) + ".array_record"))
    if not lengths:
      logging.warning("split %s: every one of its %d clips was skipped; it is left out",
                      s, len(splits[s]))
      continue
    template = tfds.core.ShardedFileTemplate(
        data_dir=tfds.core.Path(final), template="{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}",
        dataset_name=name, split=s, filetype_suffix="array_record")
    moves += [(f, os.fspath(p)) for f, p in zip(files, template.sharded_filepaths(len(files)))]
    split_infos.append(tfds.core.SplitInfo(name=s, shard_lengths=lengths,
                                           num_bytes=num_bytes, filename_template=template))
  if not split_infos:
    raise ValueError("every clip was skipped:\n" +
                     "\n".join(c.summary() for c in counters.values()))
  if not fs.exists(final):
    fs.mkdirs(final)
  moves = [(a, b) for a, b in moves if fs.exists(a)]   # not moved by an earlier attempt
  if moves:
    fs.rename([a for a, _ in moves], [b for _, b in moves])
  tfds.folder_dataset.write_metadata(
      data_dir=final, features=records.features(), split_infos=split_infos,
      filename_template="{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}", check_data=False,
      description=description)
  fs.rename([final], [target])
  fs.delete([staging])
  return target
