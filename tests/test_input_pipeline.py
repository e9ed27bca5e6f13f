"""The grain pipeline: determinism, per-process slicing, weighted mixing, periodic
re-draw, crop/pad, and exact resume of the iterator through Orbax in a new process."""

import collections
import os
import subprocess
import sys

import grain
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import pytest

from jaxclap import input_pipeline as ip
from jaxclap.corpus import records


class ByteTokenizer:
  """A minimal real tokenizer for these tests: UTF-8 bytes + 1, 0 pads."""
  pad_id = 0

  def encode(self, texts, max_len):
    ids = np.zeros((len(texts), max_len), np.int32)
    for i, t in enumerate(texts):
      b = list(t.encode())[:max_len]
      ids[i, :len(b)] = np.array(b) + 1
    return ids, (ids != 0).astype(np.int32)


def _corpus(root, name, n, *, bad=None):
  def gen():
    for i in range(n):
      # Clip i holds the ramp i*1000 + t (in PCM units), so a crop shows where it came from.
      length = 800 + 97 * i
      wave = ((i * 1000 + np.arange(length)) % 32000) / 32767.0
      rec = records.make_record(id=f"{name}{i}", wave=wave, sample_rate=8000,
                                captions=[f"{name} {i} caption {k}" for k in range(3)],
                                fine_captions=[f"{name} {i} fine"] if i % 2 else [],
                                metadata={"i": i})
      if bad == i:
        rec["captions"] = []
      yield f"{i:05d}", rec
  return records.write_tfds(name, {"train": gen, "test": gen}, str(root), description=name)


@pytest.fixture(scope="module")
def corpora(tmp_path_factory):
  root = tmp_path_factory.mktemp("corpora")
  return _corpus(root, "big", 40), _corpus(root, "small", 5)


def _cfg(sources, **kw):
  """The base config's input section (every field, its defaults) at test sizes."""
  from jaxclap import configs
  c = configs.base({}).input
  c.update(dict(sources=sources, sample_rate=8000, clip_seconds=0.25, max_text_len=24,
                max_caption_chars=200))
  c.update(kw)
  return c


def _take(ds, k, start=0):
  return [ds[i] for i in range(start, start + k)]


def _equal(a, b):
  return all(np.array_equal(x[k], y[k]) for x, y in zip(a, b) for k in x) and len(a) == len(b)


def test_batch_contents(corpora):
  big, _ = corpora
  ds = ip.train_dataset(_cfg([dict(path=big)]), ByteTokenizer(), global_batch_size=8, seed=1)
  # TFDS stores records in its own shuffled order: map record index -> clip number i.
  src = records.open_split(big, "train")
  clip_of = [records.decode(src[r])["metadata"]["i"] for r in range(len(src))]
  b = ds[0]
  assert b["audio"].shape == (8, 2000) and b["audio"].dtype == np.float32
  # One batch shape whatever the sampler: [b, K, L] captions, [b, K] their pools.
  assert b["text_ids"].shape == (8, 1, 24) and b["text_mask"].sum() > 0
  assert b["caption_pool"].shape == (8, 1) and not b["caption_pool"].any()
  for row in range(8):
    i = clip_of[int(b["record"][row])]
    length = 800 + 97 * i
    n = int(b["audio_len"][row])
    assert n == min(length, 2000)
    pcm = np.round(b["audio"][row] * 32767).astype(np.int64)
    # A contiguous window of the ramp (random offset), zeros after the real audio.
    assert np.all(np.diff(pcm[:n]) % 32000 == 1)
    assert (pcm[0] - i * 1000) % 32000 <= max(0, length - 2000)
    assert not pcm[n:].any()
    text = bytes(int(t) - 1 for t in b["text_ids"][row, 0] if t).decode()
    assert text.startswith(f"big {i} caption ")
  # One epoch of the shuffled source holds every record once.
  recs = np.concatenate([ds[s]["record"] for s in range(5)])
  assert sorted(recs) == list(range(40))


def test_deterministic_and_process_slices_equal_one_process(corpora):
  big, small = corpora
  cfg = _cfg([dict(path=big, weight=3), dict(path=small, weight=1)])
  one = ip.train_dataset(cfg, ByteTokenizer(), global_batch_size=8, seed=3)
  again = ip.train_dataset(cfg, ByteTokenizer(), global_batch_size=8, seed=3)
  assert _equal(_take(one, 6), _take(again, 6))
  halves = [ip.train_dataset(cfg, ByteTokenizer(), global_batch_size=8, seed=3,
                             process_index=p, process_count=2) for p in range(2)]
  for s in range(6):
    joined = {k: np.concatenate([h[s][k] for h in halves]) for k in one[s]}
    assert _equal([joined], [one[s]])
  other_seed = ip.train_dataset(cfg, ByteTokenizer(), global_batch_size=8, seed=4)
  assert not _equal(_take(one, 2), _take(other_seed, 2))


def test_weighted_mixing(corpora):
  big, small = corpora
  ds = ip.train_dataset(_cfg([dict(path=big, weight=3), dict(path=small, weight=1)]),
                        ByteTokenizer(), global_batch_size=8)
  src = np.concatenate([ds[s]["source"] for s in range(50)])
  share = np.mean(src == 1)
  assert abs(share - 0.25) < 0.02, share
  # The small corpus is repeated (re-shuffled each epoch) far more often than the big one.
  small_recs = collections.Counter(np.concatenate([ds[s]["record"][ds[s]["source"] == 1]
                                                   for s in range(50)]))
  assert set(small_recs) == set(range(5))


def test_periodic_subset_redraw(corpora):
  big, small = corpora
  ds = ip.train_dataset(
      _cfg([dict(path=big, weight=1, subset=6, redraw_every=3), dict(path=small, weight=1)]),
      ByteTokenizer(), global_batch_size=8, seed=0)
  per_period = []
  for period in range(4):
    recs = set()
    for s in range(period * 3, period * 3 + 3):
      b = ds[s]
      recs |= set(b["record"][b["source"] == 0].tolist())
    per_period.append(recs)
  assert all(len(r) == 6 for r in per_period), per_period   # 12 draws cover the 6-clip subset
  assert len(set(map(frozenset, per_period))) == 4             # a fresh subset each period


def test_two_captions_and_repeat_pad(corpora):
  big, _ = corpora
  ds = ip.train_dataset(_cfg([dict(path=big)], captions_per_clip=2, pad="repeat",
                             clip_seconds=1.0), ByteTokenizer(), global_batch_size=4)
  b = ds[0]
  assert b["text_ids"].shape == (4, 2, 24)
  for row in range(4):
    a, b2 = (bytes(int(t) - 1 for t in b["text_ids"][row, k] if t) for k in range(2))
    assert a != b2   # two different captions of the same clip
  wave, n = ip.crop_or_pad(np.arange(1, 4, dtype=np.float32), 8, None, "repeat")
  assert n == 6 and wave.tolist() == [1, 2, 3, 1, 2, 3, 0, 0]   # LAION's "repeatpad"
  with pytest.raises(ValueError, match="input.pad"):
    ip.crop_or_pad(np.ones(2, np.float32), 8, None, "mirror")


def test_distinct_captions_are_what_the_stream_draws(corpora, tmp_path):
  """Every caption the stream can draw, tokenized as it tokenizes them, once each: the
  sampler's fields, truncate_chars applied, a record the stream refuses left out."""
  big, small = corpora
  tok = ByteTokenizer()
  text = lambda ids, mask: {bytes(int(t) - 1 for t in i[m.astype(bool)]).decode()
                            for i, m in zip(ids, mask)}
  sources = [dict(path=big, weight=0.7), dict(path=small, weight=0.3)]
  listed = text(*ip.distinct_captions(_cfg(sources), tok))
  assert listed == {f"{n} {i} caption {k}" for n, m in (("big", 40), ("small", 5))
                    for i in range(m) for k in range(3)}
  # What 200 draws of the stream meet is among them (the full strings fit in 24 bytes).
  ds = ip.train_dataset(_cfg(sources), tok, global_batch_size=8, seed=1)
  met = set().union(*(text(b["text_ids"].reshape(8, -1), b["text_mask"].reshape(8, -1))
                      for b in _take(ds, 25)))
  assert met <= listed and len(met) > 40
  fine = text(*ip.distinct_captions(_cfg([dict(path=small)], caption_pool="any"), tok))
  assert fine - listed == {"small 1 fine", "small 3 fine"}
  cut = text(*ip.distinct_captions(_cfg([dict(path=small)], truncate_chars=7), tok))
  assert cut == {"small 0", "small 1", "small 2", "small 3", "small 4"}
  bad = _corpus(tmp_path, "bad", 3, bad=1)
  assert text(*ip.distinct_captions(_cfg([dict(path=bad)]), tok)) == {
      f"bad {i} caption {k}" for i in (0, 2) for k in range(3)}
  # A run that draws fewer than the data holds stops the scan: None past the limit.
  n = len(listed)
  assert text(*ip.distinct_captions(_cfg(sources), tok, limit=n)) == listed
  assert ip.distinct_captions(_cfg(sources), tok, limit=n - 1) is None


def test_caption_samplers():
  """Each sampler draws from its pool and says which pool each caption came from."""
  from jaxclap import caption_samplers as cs
  ex = {"captions": ["g1", "g2", "g3"], "fine_captions": ["f1", "f2"]}
  bare = {"captions": ["g1", "g2"], "fine_captions": []}
  rng = np.random.default_rng(0)
  for name, pools in [("global", {"g"}), ("fine", {"f"}), ("any", {"g", "f"})]:
    seen = set()
    for _ in range(30):
      caps, pool = cs.draw(cs.SAMPLERS[name], ex, rng, 2, 0)
      assert len(set(caps)) == 2 and pool.dtype == np.int32 and pool.shape == (2,)
      assert [c[0] for c in caps] == ["f" if p == cs.FINE else "g" for p in pool]
      seen |= {c[0] for c in caps}
    assert seen == pools, name
  caps, pool = cs.draw(cs.SAMPLERS["fine"], bare, rng, 1, 0)   # no fine captions: global
  assert caps[0] in bare["captions"] and pool.tolist() == [cs.GLOBAL]
  cfg = lambda **kw: ml_collections.ConfigDict(
      {"caption_pool": "global", "captions_per_clip": 1, "task_schedule": None, **kw})
  with pytest.raises(ValueError, match="input.caption_pool must be one of"):
    cs.from_config(cfg(caption_pool="clsp"), global_batch_size=4, seed=0)
  with pytest.raises(ValueError, match="input.captions_per_clip=2, not 1"):
    cs.from_config(cfg(caption_pool="task_pairs"), global_batch_size=4, seed=0)
  with pytest.raises(ValueError, match="input.task_schedule.*not 'fine'"):
    cs.from_config(cfg(caption_pool="fine", task_schedule=dict(p0=0.9)),
                   global_batch_size=4, seed=0)
  with pytest.raises(ValueError, match=r"unknown key\(s\) \['q'\]"):
    cs.from_config(cfg(caption_pool="task_pairs", captions_per_clip=2,
                       task_schedule=dict(q=1)), global_batch_size=4, seed=0)


def test_eval_dataset_covers_every_clip_once(corpora):
  """Every clip's caption once, and every clip cut into exactly the windows
  ``jaxclap.load(...).embed_audio`` cuts it into (windows.windows, half-window hop)."""
  from jaxclap import windows
  big, _ = corpora
  ds = ip.eval_dataset(_cfg([]), ByteTokenizer(), dict(path=big, split="test"), batch_size=16)
  src = records.open_split(big, "test")
  waves = [records.decode(src[i])["audio"] for i in range(len(src))]
  cut = [windows.windows(w, 2000, windows.hop(2000), "zero") for w in waves]   # 0.25 s
  expected = [(c, w, n) for c, (ws, ns) in enumerate(cut) for w, n in zip(ws, ns)]
  assert len(expected) > 40 and len(ds) == -(-len(expected) // 16)
  batches = [ds[s] for s in range(len(ds))]
  rows = [(int(r), int(v)) for b in batches for r, v in zip(b["record"], b["valid"])]
  assert sorted(r for r, v in rows if v) == list(range(40))
  assert sum(v for _, v in rows) == 40
  got = [(int(o), a, int(n)) for b in batches
         for o, a, n in zip(b["owner"], b["audio"], b["audio_len"]) if o >= 0]
  assert [(o, n) for o, _, n in got] == [(c, n) for c, _, n in expected]
  for (_, a, _), (_, w, _) in zip(got, expected):
    np.testing.assert_array_equal(a, w)


def test_bad_record_and_config_errors(tmp_path, corpora):
  bad = _corpus(tmp_path, "broken", 4, bad=2)
  ds = ip.train_dataset(_cfg([dict(path=bad)]), ByteTokenizer(), global_batch_size=4)
  with pytest.raises(records.BadRecord, match=r"broken/1.0.0 split 'train' record \d \(id 'broken2'\): captions is empty"):
    ds[0]
  with pytest.raises(ValueError, match="subset"):
    ip.train_dataset(_cfg([dict(path=corpora[0], subset=3)]), ByteTokenizer(), global_batch_size=4)
  with pytest.raises(ValueError, match="unknown keys"):
    ip.train_dataset(_cfg([dict(path=corpora[0], wieght=2)]), ByteTokenizer(), global_batch_size=4)
  with pytest.raises(ValueError, match="not divisible by the process count 3"):
    ip.train_dataset(_cfg([dict(path=corpora[0])]), ByteTokenizer(), global_batch_size=4,
                     process_count=3)
  with pytest.raises(FileNotFoundError, match="expected one TFDS dataset"):
    ip.train_dataset(_cfg([dict(path=str(tmp_path / "nothing"))]), ByteTokenizer(),
                     global_batch_size=4)


# ---------------------------------------------------------------- exact resume via Orbax

def _iterator(big, small):
  cfg = _cfg([dict(path=big, weight=3, subset=10, redraw_every=2), dict(path=small)])
  ds = ip.train_dataset(cfg, ByteTokenizer(), global_batch_size=4, seed=7)
  return ip.make_iterator(ds, num_threads=2, prefetch=2)


def _manager(ckpt_dir):
  return ocp.CheckpointManager(ckpt_dir, item_names=("data",))


def resume_child(big, small, ckpt_dir, out_file, k):
  """Run in a fresh process: restore the iterator from ``ckpt_dir``, dump k batches."""
  it = _iterator(big, small)
  mgr = _manager(ckpt_dir)
  mgr.restore(mgr.latest_step(), args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(it)))
  batches = [next(it) for _ in range(k)]
  np.savez(out_file, **{f"{i}/{key}": v for i, b in enumerate(batches) for key, v in b.items()})


def test_exact_resume_in_new_process(corpora, tmp_path):
  big, small = corpora
  it = _iterator(big, small)
  uninterrupted = [next(it) for _ in range(9)]
  it = _iterator(big, small)
  for _ in range(5):
    next(it)
  mgr = _manager(str(tmp_path / "ckpt"))
  mgr.save(5, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it)))
  mgr.wait_until_finished()
  out = tmp_path / "resumed.npz"
  code = (f"import sys; sys.path.insert(0, {os.path.dirname(__file__)!r}); "
          f"import test_input_pipeline as t; "
          f"t.resume_child({big!r}, {small!r}, {str(tmp_path / 'ckpt')!r}, {str(out)!r}, 4)")
  subprocess.run([sys.executable, "-c", code], check=True, timeout=300)
  got = np.load(out)
  resumed = [{key: got[f"{i}/{key}"] for key in uninterrupted[0]} for i in range(4)]
  assert _equal(resumed, uninterrupted[5:])
  # Nothing skipped or repeated: the global indices continue 20, 21, ...
  assert np.concatenate([b["index"] for b in resumed]).tolist() == list(range(20, 36))
