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

Captions not yet seen are run through the tower in chunks of one batch's rows (one
compile), with the tower's weights taken from the live train state: they never change,
and holding no second copy keeps an 8B teacher's memory as it was. With several
processes each handles its own rows; the chunk count is agreed by one small collective,
since the tower's forward is a program every process runs.

It applies only where the cached value is the tower's value: a dropout rate > 0 in the
tower (train-mode dropout would draw a new mask each step) or a batch-norm text tower
(running statistics) keeps the tower in the step, and the log says why. The cache lives
in memory (4 bytes x width per caption: 1.5 kB for MiniLM, 16 kB for an 8B teacher's
4096) and is rebuilt as a resumed run meets its captions again.
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
    m = trainer.model
    text = two_towers._tower("text", m.text_name, m.text_kwargs, m.dtype, m.remat)
    self._sharding = sharding.batch_sharding(self.mesh)

    def pooled(params, ids, mask):
      out, _ = text.apply({"params": params}, ids, mask, deterministic=True)
      return out.astype(jnp.float32)

    self._pooled = jax.jit(pooled, out_shardings=self._sharding)

  @staticmethod
  def _key(ids: np.ndarray, mask: np.ndarray) -> bytes:
    return ids[mask.astype(bool)].astype(np.int32).tobytes()

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
    return (f"{len(self.rows)} distinct captions, {self.misses} tower rows for "
            f"{self.lookups} lookups")


def _local_rows(x: jax.Array) -> np.ndarray:
  """This process's rows of a batch-sharded global array, in order."""
  if jax.process_count() == 1:
    return np.asarray(x)
  from jax.experimental import multihost_utils
  return np.asarray(multihost_utils.global_array_to_host_local_array(
      x, x.sharding.mesh, x.sharding.spec))
