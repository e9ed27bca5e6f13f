"""A frozen text tower computed once per distinct caption (``config.frozen_cache``).

When ``optim.frozen`` covers every parameter of the text tower (the demo's MiniLM,
SLAP's Qwen3-Embedding-8B, AcuLa's MedGemma teacher), its pooled output is a function of
the caption's tokens alone: the step's text tower is pure overhead after a caption's
first appearance. ``TextCache`` keeps each distinct caption's pooled output (before the
trained head) on the host, keyed by its real tokens; the loop replaces a batch's
``text_ids`` / ``text_mask`` by ``text_pooled`` [b, K, width] and the step runs only the
head on it (``TwoTowers.__call__(..., text_pooled=...)``). Results equal the uncached
step's within float tolerance (tests/test_text_step.py); in the step's FLOPs, the
text tower's forward is gone (a frozen tower has no backward either way).

A run that draws at least as many captions as its data holds (the demo: 91,200 draws of
14,876) computes all of them before its first step (``precompute``: every caption the
caption sampler can draw, input_pipeline.distinct_captions), shortest first, each chunk
at its length bucket's width (``input.text_buckets``) rather than the longest caption's.
A shorter run computes the captions it meets, in chunks of one batch's rows at full
width (one compile). Either way the order depends on the data alone, so a resumed run
computes the same values bit for bit. The tower's weights come from the live train state:
they never change, and holding no second copy keeps an 8B teacher's memory as it was.
With several processes, the up-front pass splits each chunk over them and gives every
process every row; met captions are each process's own, with the chunk count agreed by
one small collective, since the tower's forward is a program every process runs.

It applies only where the cached value is the tower's value: a dropout rate > 0 in the
tower (train-mode dropout would draw a new mask each step) or a batch-norm text tower
(running statistics) keeps the tower in the step, and the log says why. The cache lives
in memory (4 bytes x width per caption: 1.5 kB for MiniLM, 16 kB for an 8B teacher's
4096) and is rebuilt when a run resumes.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from jaxclap import sharding
from jaxclap.models import two_towers


def reason_not_cached(config: Any, params: Any, model_state: Any) -> str | None:
  """None when the text tower's step output can come from the cache; else why not."""
  if not config.frozen_cache:
    return "config.frozen_cache is off"
  from jaxclap.optim import _path_labels
  frozen = {p: "frozen" for p in (config.optim.frozen or ())}
  labels = traverse_util.flatten_dict(_path_labels(params, frozen, "trained"))
  text = [lab for path, lab in labels.items() if path[0] == "text"]
  if not text or any(lab != "frozen" for lab in text):
    return "the text tower is not wholly frozen (optim.frozen)"
  rates = {k: v for k, v in dict(config.model.text).items()
           if "dropout" in k and isinstance(v, (int, float)) and v > 0}
  if rates:
    return f"the frozen text tower has dropout ({rates}): its output differs every step"
  if "text" in (model_state or {}).get("batch_stats", {}):
    return "the text tower has batch-norm statistics"
  return None


class TextCache:
  """Pooled outputs of the frozen text tower, one per distinct caption seen so far.

  ``fill(batch, text_params)`` takes this process's batch (numpy, ``text_ids`` /
  ``text_mask`` [b, K, L]) and returns it with ``text_pooled`` [b, K, width] (float32)
  in their place."""

  def __init__(self, trainer: Any):
    self.mesh = trainer.mesh
    self.index: dict[bytes, int] = {}
    self.rows: list[np.ndarray] = []
    self.misses = 0   # captions run through the tower
    self.lookups = 0  # captions looked up
    self.precomputed = 0   # captions run up front (precompute)
    m = trainer.model
    text = two_towers._tower("text", m.text_name, m.text_kwargs, m.dtype, m.remat,
                             m.scan_layers)
    self._sharding = sharding.batch_sharding(self.mesh)

    def pooled(params, ids, mask):
      out, _ = text.apply({"params": params}, ids, mask, deterministic=True)
      return out.astype(jnp.float32)

    self._forward = pooled
    self._pooled = jax.jit(pooled, out_shardings=self._sharding)
    # Up front, every process needs every row (any caption may come to any process).
    self._pooled_everywhere = jax.jit(pooled, out_shardings=sharding.replicated(self.mesh))

  def spec(self, text_params: Any, batch: dict) -> dict:
    """What ``fill`` makes of a batch of these shapes, as shapes (``jax.ShapeDtypeStruct``:
    ``jaxclap.aot`` compiles the step the loop runs with the cache): ``text_pooled``
    [b, K, width] float32 in place of ``text_ids`` / ``text_mask``, sharded as they were.
    ``text_params`` may be shapes too; the width is the tower's, found by tracing it."""
    import flax.linen as nn
    ids = batch["text_ids"]
    b, k, length = ids.shape
    flat = jax.ShapeDtypeStruct((b * k, length), ids.dtype)
    width = jax.eval_shape(self._forward, nn.meta.unbox(text_params), flat, flat).shape[-1]
    out = {n: v for n, v in batch.items() if n not in ("text_ids", "text_mask")}
    out["text_pooled"] = jax.ShapeDtypeStruct((b, k, width), jnp.float32,
                                              sharding=ids.sharding)
    return out

  @staticmethod
  def _key(ids: np.ndarray, mask: np.ndarray) -> bytes:
    return ids[mask.astype(bool)].astype(np.int32).tobytes()

  def precompute(self, ids: np.ndarray, mask: np.ndarray, text_params: Any, *,
                 chunk: int, lengths: tuple[int, ...]) -> None:
    """Every caption of ``ids`` / ``mask`` [n, L] (input_pipeline.distinct_captions, the
    same list on every process) through the tower before training: shortest first, in
    chunks of ``chunk`` rows (a multiple of the batch's devices), each cut to the
    shortest of ``lengths`` that holds it. The order is fixed by the captions alone,
    so a resumed run computes the same values bit for bit, and mean-length captions
    are not run at the longest one's length."""
    ids, mask = np.asarray(ids), np.asarray(mask)
    keys = [self._key(i, m) for i, m in zip(ids, mask)]
    firsts = {}
    for r, key in enumerate(keys):
      if key not in self.index:
        firsts.setdefault(key, r)
    n_real = mask.sum(-1)
    order = sorted(firsts.values(), key=lambda r: (int(n_real[r]), keys[r]))
    p, count = jax.process_index(), jax.process_count()
    per = chunk // count
    for start in range(0, len(order), chunk):
      take = order[start:start + chunk]
      rows = np.asarray(take + [take[0]] * (chunk - len(take)), np.int64)
      keep = next((n for n in sorted(lengths) if n >= int(n_real[rows].max())), ids.shape[1])
      local = {"ids": ids[rows, :keep][p * per:(p + 1) * per],
               "mask": mask[rows, :keep][p * per:(p + 1) * per]}
      batch = sharding.global_batch(local, self.mesh)
      host = np.asarray(self._pooled_everywhere(text_params, batch["ids"], batch["mask"]))
      for j, r in enumerate(take):
        self.index[keys[r]] = len(self.rows)
        self.rows.append(host[j])
    self.precomputed = len(order)

  def fill(self, local: dict, text_params: Any) -> dict:
    ids, mask = np.asarray(local["text_ids"]), np.asarray(local["text_mask"])
    b, k, length = ids.shape
    flat_ids, flat_mask = ids.reshape(-1, length), mask.reshape(-1, length)
    keys = [self._key(i, m) for i, m in zip(flat_ids, flat_mask)]
    new = {}
    for r, key in enumerate(keys):
      if key not in self.index and key not in new:
        new[key] = r
    self.lookups += len(keys)
    chunk = len(keys)   # one batch's rows: divisible by this process's devices
    rounds = -(-len(new) // chunk)
    if jax.process_count() > 1:   # every process runs the tower's program as often
      from jax.experimental import multihost_utils
      rounds = int(np.max(multihost_utils.process_allgather(np.int32(rounds))))
    order = list(new.values())
    for i in range(rounds):
      take = order[i * chunk:(i + 1) * chunk]
      rows = np.asarray(take + [0] * (chunk - len(take)), np.int64)
      batch = sharding.global_batch({"ids": flat_ids[rows], "mask": flat_mask[rows]},
                                    self.mesh)
      out = self._pooled(text_params, batch["ids"], batch["mask"])
      host = _local_rows(out)
      for j, r in enumerate(take):
        self.index[keys[r]] = len(self.rows)
        self.rows.append(host[j])
      self.misses += len(take)
    pooled = np.stack([self.rows[self.index[key]] for key in keys]).reshape(b, k, -1)
    out = {n: v for n, v in local.items() if n not in ("text_ids", "text_mask")}
    out["text_pooled"] = pooled
    return out

  def summary(self) -> str:
    return (f"{len(self.rows)} distinct captions, {self.precomputed} computed up front, "
            f"{self.misses} met later, for {self.lookups} lookups")


def _local_rows(x: jax.Array) -> np.ndarray:
  """This process's rows of a batch-sharded global array, in order."""
  if jax.process_count() == 1:
    return np.asarray(x)
  from jax.experimental import multihost_utils
  return np.asarray(multihost_utils.global_array_to_host_local_array(
      x, x.sharding.mesh, x.sharding.spec))
