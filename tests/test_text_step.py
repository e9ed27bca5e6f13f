"""jaxclap.frozen_cache: a wholly frozen text tower computed once per distinct caption
gives the step the uncached step's loss, gradients and update (float tolerance), runs
the tower only for captions it has not seen (up front or as a batch meets them, in one
process or two), and applies only where the cached value is the tower's value. Text
length buckets (input.text_buckets) cut only padding."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np

from jaxclap import configs, frozen_cache, perf, sharding, train

B, K = 8, 2


def _config():
  c = configs.load("demo", "runlocal")
  c.global_batch_size = B
  c.input.captions_per_clip = K   # CLSP's K captions per clip: the [b, K] layout kept
  configs.set_terms(c, multi_positive=1.0, mae=0.1)
  c.model.text.update(vocab_size=200, hidden_size=32, depth=2, num_heads=2, mlp_dim=64,
                      max_len=64, init=None)
  return c


def _batch(c, rng):
  samples = int(c.input.clip_seconds * c.input.sample_rate)
  length = int(c.input.max_text_len)
  ids = np.zeros((B, K, length), np.int32)
  mask = np.zeros((B, K, length), np.int32)
  for i in range(B):
    for k in range(K):
      n = int(rng.integers(4, length + 1))
      ids[i, k, :n], mask[i, k, :n] = rng.integers(1, 200, n), 1
  ids[3, 1], mask[3, 1] = ids[0, 0], mask[0, 0]      # a caption twice in the batch
  ids[5, 0, -1] = 7                                   # a padding token differs: same caption
  return {"audio": (0.1 * rng.normal(size=(B, samples))).astype(np.float32),
          "audio_len": rng.integers(samples // 2, samples + 1, size=B).astype(np.int32),
          "text_ids": ids, "text_mask": mask}


def test_cached_step_equals_the_uncached_step():
  c = _config()
  mesh = sharding.make_mesh(c.mesh, jax.devices()[:1])
  tr = train.Trainer(c, mesh)
  state = tr.init_state(0)
  assert frozen_cache.reason_not_cached(c, state.params, state.model_state) is None
  local = _batch(c, np.random.default_rng(0))
  cache = frozen_cache.TextCache(tr)
  cached = cache.fill(local, state.params["text"])
  assert set(cached) == {"audio", "audio_len", "text_pooled"}
  assert cached["text_pooled"].shape == (B, K, 32)
  assert cache.misses == B * K - 1 and len(cache.rows) == B * K - 1   # the repeat once

  copy = lambda s: jax.tree_util.tree_map(jnp.copy, s)
  plain, cache_batch = sharding.global_batch(local, mesh), sharding.global_batch(cached, mesh)
  flops = [perf.count_flops(tr.step.trace(state, b).jaxpr) for b in (plain, cache_batch)]
  s1, m1 = tr.step(copy(state), plain)
  s2, m2 = tr.step(copy(state), cache_batch)
  for key in ("loss", "contrastive", "mae", "grad_norm"):
    np.testing.assert_allclose(float(m2[key]), float(m1[key]), rtol=2e-5, err_msg=key)
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(s1.params),
                          jax.tree_util.tree_leaves(s2.params)):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-4, atol=1e-6,
                               err_msg=jax.tree_util.keystr(path))
  for a, b in zip(jax.tree_util.tree_leaves(state.params["text"]),
                  jax.tree_util.tree_leaves(s2.params["text"])):
    np.testing.assert_array_equal(np.asarray(b), np.asarray(a))   # frozen: untouched
  # The text tower's forward (2 x its matmul weights x tokens, at least) left the step.
  tokens = B * K * int(c.input.max_text_len)
  assert flops[0] - flops[1] >= 2 * 2 * (32 * 64 * 2 + 32 * 32 * 4) * tokens

  # Seen captions are not run again; a permuted batch gets the same rows, bit for bit
  # (a resumed run, which meets them in other batches, computes the same values).
  perm = np.random.default_rng(1).permutation(B)
  again = cache.fill({k: v[perm] for k, v in local.items()}, s2.params["text"])
  assert cache.misses == B * K - 1
  np.testing.assert_array_equal(again["text_pooled"], cached["text_pooled"][perm])
  fresh = frozen_cache.TextCache(tr).fill({k: v[perm] for k, v in local.items()},
                                          state.params["text"])
  np.testing.assert_array_equal(fresh["text_pooled"], cached["text_pooled"][perm])


def test_captions_computed_up_front_equal_those_met_in_a_batch():
  # The up-front pass (shortest first, each chunk at its bucket's length) gives what
  # the per-batch pass gives at the full length, within float tolerance; a second pass
  # in another order gives the same bits; a batch then runs no tower rows.
  from jaxclap import input_pipeline
  c = _config()
  mesh = sharding.make_mesh(c.mesh, jax.devices()[:1])
  tr = train.Trainer(c, mesh)
  state = tr.init_state(0)
  local = _batch(c, np.random.default_rng(3))
  ids = local["text_ids"].reshape(B * K, -1)
  mask = local["text_mask"].reshape(B * K, -1)
  lengths = input_pipeline.bucket_lengths(c.input.max_text_len, 4)
  met = frozen_cache.TextCache(tr).fill(local, state.params["text"])["text_pooled"]
  up = frozen_cache.TextCache(tr)
  up.precompute(ids, mask, state.params["text"], chunk=B, lengths=lengths)
  assert up.precomputed == B * K - 1
  cached = up.fill(local, state.params["text"])["text_pooled"]
  assert up.misses == 0 and up.lookups == B * K
  np.testing.assert_allclose(cached, met, rtol=1e-5, atol=1e-6)
  perm = np.random.default_rng(4).permutation(B * K)
  again = frozen_cache.TextCache(tr)
  again.precompute(ids[perm], mask[perm], state.params["text"], chunk=B, lengths=lengths)
  np.testing.assert_array_equal(again.fill(local, state.params["text"])["text_pooled"], cached)


_PROCESSES = """
import sys
import jax
import numpy as np
from jaxclap import distributed
kwargs = distributed.initialize_kwargs()
if kwargs:
  jax.distributed.initialize(**kwargs)
from jaxclap import configs, frozen_cache, sharding, train
c = configs.load("demo", "runlocal")
c.global_batch_size = 8
c.model.text.update(vocab_size=200, hidden_size=32, depth=2, num_heads=2, mlp_dim=64,
                    max_len=64, init=None)
tr = train.Trainer(c, sharding.make_mesh(c.mesh))
state = tr.init_state(0)
rng = np.random.default_rng(0)
n = rng.integers(3, 57, size=30)
ids = np.where(np.arange(56) < n[:, None], rng.integers(1, 200, (30, 56)), 0).astype(np.int32)
mask = (ids > 0).astype(np.int32)
up = frozen_cache.TextCache(tr)
up.precompute(ids, mask, state.params["text"], chunk=8, lengths=(16, 32, 56))
table = np.stack([up.rows[up.index[up._key(i, m)]] for i, m in zip(ids, mask)])
p, count = jax.process_index(), jax.process_count()
rows = slice(p * 8 // count, (p + 1) * 8 // count)   # this process's rows of a batch
local = {"text_ids": ids[rows, None], "text_mask": mask[rows, None]}
met = frozen_cache.TextCache(tr).fill(local, state.params["text"])["text_pooled"][:, 0]
np.savez(sys.argv[1] + f"/{p}.npz", table=table, met=met)
"""


def test_two_processes_cache_what_one_does(tmp_path):
  # The up-front pass gives every process every caption, each chunk split over the
  # processes; a batch's captions are each process's own rows. Both as one process.
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  script = tmp_path / "cache.py"
  script.write_text(_PROCESSES)
  env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_")}
  runs = {}
  for count in (1, 2):
    out = tmp_path / str(count)
    out.mkdir()
    got = subprocess.run(
        [sys.executable, os.path.join(root, "launch", "local.py"), f"--processes={count}",
         "--devices_per_process=1", "--", sys.executable, str(script), str(out)],
        cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert got.returncode == 0, got.stdout[-3000:] + got.stderr[-3000:]
    runs[count] = [np.load(out / f"{p}.npz") for p in range(count)]
  (one,), (p0, p1) = runs[1], runs[2]
  np.testing.assert_array_equal(p0["table"], p1["table"])
  np.testing.assert_allclose(p0["table"], one["table"], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.concatenate([p0["met"], p1["met"]]), one["met"],
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(one["met"], one["table"][:8], rtol=1e-5, atol=1e-6)


def test_the_cache_applies_only_where_its_value_is_the_towers():
  c = _config()
  mesh = sharding.make_mesh(c.mesh, jax.devices()[:1])
  params = train.Trainer(c, mesh).abstract_state().params
  why = lambda cfg: frozen_cache.reason_not_cached(cfg, params, {})
  assert why(c) is None
  c.frozen_cache = False
  assert "config.frozen_cache" in why(c)
  c = _config()
  c.optim.frozen = ("text/encoder/layer_0/.*",)
  assert "not wholly frozen" in why(c)
  c = _config()
  c.model.text.dropout_rate = 0.1
  assert "dropout" in why(c)


def test_length_buckets_cut_only_padding():
  """A batch cut to its bucket trains as the full-length batch does (float tolerance), for
  a mean-pooled encoder and a last-token-pooled decoder, trained, not cached."""
  from jaxclap import input_pipeline
  assert input_pipeline.bucket_lengths(56, 4) == (16, 32, 48, 56)
  assert input_pipeline.bucket_lengths(56, 1) == (56,)
  assert input_pipeline.bucket_lengths(20, 8) == (8, 16, 20)
  for text in ("bert", "qwen3"):
    c = configs.load("demo", f"runlocal,text={text}")
    c.global_batch_size = B
    configs.set_terms(c, info_nce=1.0)   # no MAE decoder: a shorter compile
    if text == "bert":
      c.model.text.update(vocab_size=200, hidden_size=32, depth=2, num_heads=2, mlp_dim=64,
                          max_len=64, init=None)
    mesh = sharding.make_mesh(c.mesh, jax.devices()[:1])
    tr = train.Trainer(c, mesh)
    state = tr.init_state(0)
    assert frozen_cache.reason_not_cached(c, state.params, state.model_state) is not None
    local = _batch(c, np.random.default_rng(2))
    local["text_mask"][:, :, 20:] = 0
    local["text_ids"][:, :, 20:] = 0
    lengths = input_pipeline.bucket_lengths(c.input.max_text_len, 4)
    cut = input_pipeline.cut_text(local, lengths)
    assert cut["text_ids"].shape[-1] == 32 < local["text_ids"].shape[-1]
    copy = lambda s: jax.tree_util.tree_map(jnp.copy, s)
    _, m1 = tr.step(copy(state), sharding.global_batch(local, mesh))
    _, m2 = tr.step(copy(state), sharding.global_batch(cut, mesh))
    for key in ("loss", "grad_norm"):
      np.testing.assert_allclose(float(m2[key]), float(m1[key]), rtol=2e-5,
                                 err_msg=f"{text}: {key}")
