"""The grain input pipeline: corpora of records -> per-process batches of raw waveforms.

Data flows one way (source -> waveform batch -> features on the device -> towers), and
this file owns the first arrow. Design, from the pod-scale end:

* The training stream is ONE infinite, deterministic sequence of examples defined on
  *global* indices: example ``i`` of the stream is the same whatever the number of
  processes. Global batch ``s`` is examples ``[s*B, (s+1)*B)``; process ``p`` of ``P``
  reads rows ``[p*B/P, (p+1)*B/P)`` of it (``_ProcessSlice``), so a 2-process run sees
  exactly the batches of a 1-process run.
* Every random choice (which corpus, which clip, crop offset, which caption) is a pure
  function of (seed, global index): grain's ``random_map`` seeds per index. So the
  iterator's state is one integer (``next_index``), saved with Orbax beside the train
  state (``grain.checkpoint.CheckpointSave``), and a restored iterator continues with
  the very batches an uninterrupted run would have produced.
* Corpora of very different sizes are mixed by weight (``MapDataset.mix``); a large one
  can be cut to a random subset that is drawn afresh periodically (SLAP sub-samples its
  large corpora every 2,000 steps), see ``PeriodicSubset``.
* Waveforms stay raw: features are computed on the device (``jaxclap.audio``). A record
  stored at another rate than ``input.sample_rate`` is resampled here on the host (a
  counted, logged slow path); write corpora at one rate to avoid it.

Batches are dicts of numpy arrays:
  audio       float32 [b, clip_samples]   cropped or padded waveform
  audio_len   int32   [b]                 samples of real audio in ``audio`` (for masks)
  text_ids    int32   [b, K, L]           K = input.captions_per_clip captions per clip
  text_mask   int32   like text_ids
  caption_pool int32  [b, K]              the pool of each caption (caption_samplers:
                                          0 global, 1 fine-grained)
  source      int32   [b]                 which corpus of ``input.sources``
  record      int64   [b]                 record index inside that corpus split
  index       int64   [b]                 global stream index (proves nothing is skipped)

The captions come from the sampler ``input.caption_pool`` names (``caption_samplers``);
every recipe's batch has these fields and shapes.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Sequence

import grain
import numpy as np

from jaxclap import caption_samplers
from jaxclap.corpus import records
from jaxclap.windows import crop_or_pad

# ---------------------------------------------------------------------------- sources


@dataclasses.dataclass(frozen=True)
class SourceSpec:
  """One corpus split in a training mixture.

  path: a dataset written by jaxclap (``<dir>/<name>/<version>``, or a folder holding
    exactly one such tree), e.g. what ``python -m jaxclap.prepare`` or the embedded
    corpus builder wrote.
  split: which split to read.
  weight: share of this corpus in the mixture (normalised over sources).
  subset: if set, only a random subset of this many clips is in play at a time...
  redraw_every: ...and it is drawn afresh every this many *steps* (SLAP: 2,000).
  """
  path: str
  split: str = "train"
  weight: float = 1.0
  subset: int | None = None
  redraw_every: int | None = None


def source_specs(sources: Sequence[Any]) -> list[SourceSpec]:
  """Config entries (dicts / ConfigDicts / SourceSpec) -> validated ``SourceSpec`` list."""
  if not sources:
    raise ValueError("input.sources is empty: name at least one corpus")
  specs = []
  for i, s in enumerate(sources):
    if not isinstance(s, SourceSpec):
      s = dict(s)
      unknown = set(s) - {f.name for f in dataclasses.fields(SourceSpec)}
      if unknown:
        raise ValueError(f"input.sources[{i}]: unknown keys {sorted(unknown)}")
      if "path" not in s:
        raise ValueError(f"input.sources[{i}]: missing 'path'")
      s = SourceSpec(**s)
    if not s.weight > 0:
      raise ValueError(f"input.sources[{i}] ({s.path}): weight must be > 0, got {s.weight}")
    if (s.subset is None) != (s.redraw_every is None):
      raise ValueError(f"input.sources[{i}] ({s.path}): set both 'subset' and "
                       "'redraw_every', or neither")
    specs.append(s)
  return specs


class _Records(grain.MapDataset):
  """Random access to one corpus split, decoded and checked record by record."""

  def __init__(self, spec: SourceSpec, source_id: int, *, sample_rate: int,
               max_caption_chars: int):
    super().__init__()
    self._spec, self._id = spec, source_id
    self._sr, self._max_chars = sample_rate, max_caption_chars
    self._source = records.open_split(spec.path, spec.split)
    if len(self._source) == 0:
      raise ValueError(f"{spec.path} split {spec.split!r} has no records")

  def __len__(self):
    return len(self._source)

  def __str__(self):
    return f"_Records({self._spec.path}:{self._spec.split})"

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    index = int(index) % len(self._source)  # grain passes epoch * len + i after shuffle
    where = f"{self._spec.path} split {self._spec.split!r} record {index}"
    try:
      r = records.decode(self._source[index])
      where += f" (id {r['id']!r})"
      wave = records.check_waveform(r["audio"], r["sample_rate"], max_seconds=float("inf"),
                                    min_seconds=0.0)
      captions = records.check_captions(r["captions"], max_chars=self._max_chars)
      fine = records.check_captions(r["fine_captions"], max_chars=self._max_chars,
                                    field="fine_captions", required=False)
    except (records.BadRecord, KeyError, UnicodeDecodeError, ValueError) as e:
      # A jaxclap writer never writes such a record; a foreign or damaged file did.
      raise records.BadRecord(f"{where}: {e}") from e
    if r["sample_rate"] != self._sr:
      wave = _host_resample(wave, r["sample_rate"], self._sr, where)
    return {"audio": wave, "captions": captions, "fine_captions": fine,
            "source": self._id, "record": index}


def _host_resample(wave, orig_sr, target_sr, where):
  _host_resample.count += 1
  if _host_resample.count <= 5:
    logging.warning("%s is at %d Hz, not input.sample_rate=%d: resampling on the host "
                    "(slow; %d so far)", where, orig_sr, target_sr, _host_resample.count)
  import librosa
  return librosa.resample(wave, orig_sr=orig_sr, target_sr=target_sr).astype(np.float32)


_host_resample.count = 0


class PeriodicSubset(grain.MapDataset):
  """An infinite stream over a random ``subset`` of ``parent`` re-drawn every ``period``.

  Element ``i`` belongs to period ``p = i // period``; period ``p`` draws its subset as
  the first ``subset`` entries of a permutation seeded by (seed, p), and walks it in a
  fresh random order each pass. Everything is a function of ``i``, so it resumes exactly.
  """

  def __init__(self, parent: grain.MapDataset, subset: int, period: int, seed: int):
    super().__init__(parent)
    if subset <= 0 or period <= 0:
      raise ValueError(f"subset ({subset}) and period ({period}) must be positive")
    self._n, self._subset, self._period, self._seed = len(parent), min(subset, len(parent)), period, seed
    self._cache: dict[tuple[int, int], np.ndarray] = {}

  def __len__(self):
    return np.iinfo(np.int64).max

  def __str__(self):
    return f"PeriodicSubset(subset={self._subset}, period={self._period})"

  def _order(self, period: int, sweep: int) -> np.ndarray:
    key = (period, sweep)
    if key not in self._cache:
      chosen = np.random.default_rng([self._seed, period]).permutation(self._n)[:self._subset]
      order = np.random.default_rng([self._seed, period, sweep + 1]).permutation(chosen)
      self._cache = {key: order}  # only the current pass is ever needed again
    return self._cache[key]

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    period, k = divmod(int(index), self._period)
    sweep, j = divmod(k, self._subset)
    return self._parents[0][int(self._order(period, sweep)[j])]


class WeightedMix(grain.MapDataset):
  """Interleaves infinite streams by weight, deterministically and with O(1) access.

  Every block of ``block`` elements holds ``round(block * w_d)`` elements of stream ``d``,
  spread evenly through the block; element ``i`` maps to (stream, index in stream) by
  arithmetic alone, so shares are exact per block and resume needs no state.
  (grain's ``MapDataset.mix`` expects finite parents; ours are repeated forever.)
  """

  def __init__(self, parents: Sequence[grain.MapDataset], weights: Sequence[float],
               block: int = 10_000):
    super().__init__(list(parents))
    w = np.asarray(weights, np.float64) / np.sum(weights)
    counts = np.floor(w * block).astype(np.int64)
    counts[np.argsort(-(w * block - counts))[:block - counts.sum()]] += 1  # largest remainders
    if np.any(counts == 0):
      raise ValueError(f"input.sources weights {list(weights)}: a share below 1/{block} "
                       "would never be drawn")
    # Slot j of stream d sits at fractional position (j + 0.5) / counts[d] of the block.
    pos = np.concatenate([(np.arange(c) + 0.5) / c for c in counts])
    who = np.concatenate([np.full(c, d) for d, c in enumerate(counts)])
    rank = np.concatenate([np.arange(c) for c in counts])
    order = np.lexsort((who, pos))
    self._who, self._rank, self._counts, self._block = who[order], rank[order], counts, block

  def __len__(self):
    return np.iinfo(np.int64).max

  def __str__(self):
    return f"WeightedMix(counts per {self._block}={self._counts.tolist()})"

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    q, r = divmod(int(index), self._block)
    d = int(self._who[r])
    return self._parents[d][q * int(self._counts[d]) + int(self._rank[r])]


class _ProcessSlice(grain.MapDataset):
  """Rows ``[p*b, (p+1)*b)`` of every global batch of size ``B = P*b`` (see the module
  docstring): local element ``j`` is global element ``(j // b) * B + p * b + j % b``."""

  def __init__(self, parent, global_batch: int, process_index: int, process_count: int):
    super().__init__(parent)
    if global_batch % process_count:
      raise ValueError(f"global batch size {global_batch} is not divisible by the "
                       f"process count {process_count}")
    self._B, self._b, self._p = global_batch, global_batch // process_count, process_index

  def __len__(self):
    return len(self._parents[0]) // self._B * self._b

  def __str__(self):
    return f"_ProcessSlice(B={self._B}, b={self._b}, p={self._p})"

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    step, j = divmod(int(index), self._b)
    return self._parents[0][step * self._B + self._p * self._b + j]


# ------------------------------------------------------------------------- per example




@dataclasses.dataclass(frozen=True)
class _Example:
  """The per-example transform, a picklable callable for grain workers."""
  clip_samples: int
  pad: str
  random_crop: bool
  captions_per_clip: int
  sampler: Any                          # jaxclap.caption_samplers
  tokenizer: Any
  max_text_len: int
  truncate_chars: int | None = None     # CLAP cuts its text at 100 characters

  def __call__(self, index: int, example: dict, rng: np.random.Generator | None):
    wave, n = crop_or_pad(example["audio"], self.clip_samples,
                          rng if self.random_crop else None, self.pad)
    caption_rng = rng if rng is not None else np.random.default_rng(index)
    caps, pools = caption_samplers.draw(self.sampler, example, caption_rng,
                                        self.captions_per_clip, index)
    if self.truncate_chars:
      caps = [c[:self.truncate_chars] for c in caps]
    ids, mask = self.tokenizer.encode(caps, self.max_text_len)
    return {"audio": wave.astype(np.float32), "audio_len": np.int32(n),
            "text_ids": ids.astype(np.int32), "text_mask": mask.astype(np.int32),
            "caption_pool": pools, "source": np.int32(example["source"]),
            "record": np.int64(example["record"]), "index": np.int64(index)}


class _WithIndex(grain.MapDataset):
  """Pairs each element with its index and a generator seeded by (seed, index)."""

  def __init__(self, parent, seed: int, fn):
    super().__init__(parent)
    self._seed, self._fn = seed, fn

  def __len__(self):
    return len(self._parents[0])

  def __str__(self):
    return "_WithIndex"

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    rng = np.random.default_rng([self._seed, int(index)]) if self._seed is not None else None
    return self._fn(int(index), self._parents[0][index], rng)


def _stack(rows: Sequence[dict]) -> dict:
  return {k: np.stack([r[k] for r in rows]) for k in rows[0]}


# ----------------------------------------------------------------------------- public


def train_dataset(cfg, tokenizer, *, global_batch_size: int, process_index: int = 0,
                  process_count: int = 1, seed: int = 0) -> grain.MapDataset:
  """The infinite training stream of this process's batches (a grain ``MapDataset``).

  ``cfg`` is the config's ``input`` section: ``sources`` (see ``SourceSpec``),
  ``sample_rate``, ``clip_seconds``, ``pad`` ("zero"/"repeat"), ``captions_per_clip``,
  ``caption_pool`` (+ ``task_schedule`` for "task_pairs"), ``max_text_len``,
  ``max_caption_chars``, ``truncate_chars`` (cut each drawn caption to this many
  characters, as CLAP does at 100; None keeps it whole).
  """
  specs = source_specs(cfg.sources)
  # Caption settings first: a contradiction is reported before any corpus is opened.
  k = int(cfg.captions_per_clip)
  sampler = caption_samplers.from_config(cfg, global_batch_size=global_batch_size,
                                         seed=seed)
  sr = int(cfg.sample_rate)
  clip_samples = int(round(float(cfg.clip_seconds) * sr))
  if clip_samples <= 0:
    raise ValueError(f"input.clip_seconds={cfg.clip_seconds} gives no samples")
  max_chars = int(cfg.max_caption_chars)
  total_w = sum(s.weight for s in specs)
  streams = []
  for i, spec in enumerate(specs):
    recs = _Records(spec, i, sample_rate=sr, max_caption_chars=max_chars)
    if spec.subset is not None:
      # Elements of this corpus consumed per step ~ its share of the global batch.
      per_step = max(1, round(global_batch_size * spec.weight / total_w))
      streams.append(PeriodicSubset(recs, spec.subset, spec.redraw_every * per_step,
                                    seed=seed * 1000 + i))
    else:
      streams.append(recs.shuffle(seed=seed * 1000 + i).repeat())
  ds = streams[0] if len(streams) == 1 else WeightedMix(streams, [s.weight for s in specs])
  example = _Example(
      clip_samples=clip_samples, pad=str(cfg.pad), random_crop=True,
      captions_per_clip=k, sampler=sampler, tokenizer=tokenizer,
      max_text_len=int(cfg.max_text_len), truncate_chars=cfg.truncate_chars)
  ds = _WithIndex(ds, seed, example)
  ds = _ProcessSlice(ds, global_batch_size, process_index, process_count)
  return ds.batch(global_batch_size // process_count, drop_remainder=True, batch_fn=_stack)


def eval_dataset(cfg, tokenizer, spec: SourceSpec | dict, *, batch_size: int,
                 process_index: int = 0, process_count: int = 1,
                 extra_pools: Sequence[str] = ()) -> grain.MapDataset:
  """One deterministic pass over a split, each clip cut as ``jaxclap.load(...).embed_audio``
  cuts it (``windows.windows``: training-length windows with a half-window hop, a short
  clip padded as in training), so that evaluation embeds a clip as the API does.

  Global batch ``i`` holds rows ``[i*B, (i+1)*B)`` of two lists, static shapes throughout:
  the split's windows in clip order (``audio``, ``audio_len``, ``owner`` = the window's
  record index, -1 on the padding rows after the last window) and its clips (one global
  caption per clip, a fixed draw per record, as ``text_ids`` / ``text_mask``; ``record``;
  ``valid=0`` past the last clip). There are at least as many windows as clips, so the
  batches after the first ``ceil(clips / B)`` carry windows only. Each pool in
  ``extra_pools`` (e.g. "fine") adds ``text_ids_<pool>`` / ``text_mask_<pool>``: one
  caption of that pool, from the same record read."""
  from jaxclap import windows as windows_lib
  spec = source_specs([spec])[0]
  sr = int(cfg.sample_rate)
  recs = _Records(spec, 0, sample_rate=sr,
                  max_caption_chars=int(cfg.max_caption_chars))
  window = int(round(float(cfg.clip_seconds) * sr))
  pad, hop = str(cfg.pad), windows_lib.hop(window)
  cut = lambda record: windows_lib.windows(record["audio"], window, hop, pad)
  n = len(recs)
  # (clip, window) of every window: one read of each clip to count its windows.
  owners = [(c, k) for c in range(n) for k in range(len(cut(recs[c])[0]))]
  padded = -(-len(owners) // batch_size) * batch_size
  examples = {pool: _Example(
      clip_samples=window, pad=pad, random_crop=False, captions_per_clip=1,
      sampler=caption_samplers.SAMPLERS[pool], tokenizer=tokenizer,
      max_text_len=int(cfg.max_text_len),
      truncate_chars=cfg.truncate_chars)
      for pool in ("global",) + tuple(extra_pools)}
  no_text = np.zeros(int(cfg.max_text_len), np.int32)

  def fn(index, _, rng):
    if index < len(owners):
      c, k = owners[index]
      waves, lens = cut(recs[c])
      row = {"audio": waves[k].astype(np.float32), "audio_len": np.int32(lens[k]),
             "owner": np.int64(c)}
    else:   # full-length zeros: no row with an empty mask
      row = {"audio": np.zeros(window, np.float32), "audio_len": np.int32(window),
             "owner": np.int64(-1)}
    record = recs[index] if index < n else None
    for pool in ("global",) + tuple(extra_pools):
      keys = ("text_ids", "text_mask") if pool == "global" else (f"text_ids_{pool}",
                                                                   f"text_mask_{pool}")
      if record is None:
        row[keys[0]], row[keys[1]] = no_text, no_text
      else:
        text = examples[pool](index, record, rng)
        row[keys[0]], row[keys[1]] = text["text_ids"][0], text["text_mask"][0]
    row["record"] = np.int64(index if index < n else -1)
    row["valid"] = np.int32(index < n)
    return row

  ds = _WithIndex(grain.MapDataset.range(padded), None, fn)
  ds = _ProcessSlice(ds, batch_size, process_index, process_count)
  return ds.batch(batch_size // process_count, drop_remainder=True, batch_fn=_stack)


def distinct_captions(cfg, tokenizer, limit: int | None = None
                      ) -> tuple[np.ndarray, np.ndarray] | None:
  """Every caption the training stream of ``cfg`` (the config's ``input`` section) can
  draw, tokenized as ``train_dataset`` tokenizes it, once each: ``ids`` / ``mask``
  int32 [n, max_text_len]. It reads the fields ``input.caption_pool`` draws from
  (caption_samplers.FIELDS) in every record of every source, not the audio; a record
  the stream would refuse is left out here, and the stream names it when it meets it.
  ``limit``: None as soon as there are more than that many (the scan stops there)."""
  fields = caption_samplers.FIELDS[str(cfg.caption_pool)]
  max_chars, cut = int(cfg.max_caption_chars), cfg.truncate_chars
  texts: dict[str, None] = {}   # insertion-ordered set
  for spec in source_specs(cfg.sources):
    source = records.open_split(spec.path, spec.split)
    for i in range(len(source)):
      try:
        r = records.decode(source[i], keys=fields)
        for field in fields:
          for c in records.check_captions(r[field], max_chars=max_chars, field=field,
                                          required=False):
            texts[c[:cut] if cut else c] = None
      except (records.BadRecord, KeyError, UnicodeDecodeError, ValueError):
        continue
      if limit is not None and len(texts) > limit:
        return None
  return tokenizer.encode(list(texts), int(cfg.max_text_len))


def bucket_lengths(max_text_len: int, buckets: int) -> tuple[int, ...]:
  """``input.text_buckets`` -> the token lengths a training batch's text is cut to:
  ``buckets`` steps up to ``max_text_len``, multiples of 8 (1 or 0: max_text_len only)."""
  top = int(max_text_len)
  if int(buckets) <= 1:
    return (top,)
  steps = {min(top, -(-top * i // int(buckets) // 8) * 8) for i in range(1, int(buckets) + 1)}
  return tuple(sorted(steps | {top}))


def longest_caption(local: dict) -> int:
  """The most real tokens in any caption of a batch (its ``text_mask``)."""
  return int(np.asarray(local["text_mask"]).sum(-1).max(initial=0))


def cut_text(local: dict, lengths: Sequence[int], longest: int | None = None) -> dict:
  """A batch's ``text_ids`` / ``text_mask`` cut to the shortest of ``lengths`` that holds
  its longest caption (``longest``: that length over every process's rows, which must
  agree on the shape; default this batch's). Only padding is cut: a tower sees the same
  tokens and mask, and the step compiles once per length used."""
  if longest is None:
    longest = longest_caption(local)
  keep = next((n for n in sorted(lengths) if n >= longest), None)
  if keep is None or keep >= local["text_ids"].shape[-1]:
    return local
  return {**local, "text_ids": local["text_ids"][..., :keep],
          "text_mask": local["text_mask"][..., :keep]}


def make_iterator(ds: grain.MapDataset, *, num_threads: int, prefetch: int,
                  worker_count: int = 0) -> grain.DatasetIterator:
  """A checkpointable iterator over batches: ``get_state()`` / ``set_state()`` and
  ``grain.checkpoint.CheckpointSave`` / ``CheckpointRestore`` with Orbax.

  worker_count > 0 decodes in that many processes (needs absl flags parsed and a
  ``__main__`` guard, as any grain multiprocessing).
  """
  it_ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=num_threads,
                                               prefetch_buffer_size=prefetch))
  if worker_count > 0:
    it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count))
  return iter(it_ds)
