"""Caption samplers: which of a clip's captions a training example pairs with its audio.

``input.caption_pool`` names the sampler, ``input.captions_per_clip`` (K) how many
captions each clip takes. Every sampler returns K captions and, for each, the pool it
came from (``GLOBAL`` or ``FINE``), so a training batch has one shape whatever the
recipe: ``text_ids`` / ``text_mask`` ``[b, K, L]`` and ``caption_pool`` ``[b, K]``.

* ``"global"``: the clip's global captions (``captions``).
* ``"fine"``: its fine-grained captions (``fine_captions``; a clip without any falls
  back to its global ones, and says so in ``caption_pool``).
* ``"any"``: both pools together.
* ``"task_pairs"``: CLSP stage 2 (K = 2). Each STEP (all clips of one global batch) is
  Task 1 -- a (global, fine-grained) pair, the global caption first, so that the
  multi-positive loss's lambda lands on it -- with probability ``task_probability``,
  else Task 2 -- two different fine-grained captions. Options: ``input.task_schedule``
  = dict(p0, p_min, steps).

Every draw is a pure function of (seed, global stream index): the input pipeline passes
a generator seeded by both, and a step's task depends on (seed, step) only, so every
process and a resumed run draw the same captions.

To add a sampler: a function ``(example, rng, k, index) -> (captions, pools)`` (or a
class, as ``TaskPairs``, when it takes options), registered in ``SAMPLERS`` and its
record fields in ``FIELDS``; its test
goes beside ``tests/test_input_pipeline.py::test_caption_samplers``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import numpy as np

GLOBAL, FINE = 0, 1    # the values of a batch's ``caption_pool``


def _draw(cands: list[tuple[str, int]], rng: np.random.Generator, k: int):
  """``k`` of ``cands``, distinct while there are enough of them."""
  if len(cands) >= k:
    picked = [cands[i] for i in rng.choice(len(cands), size=k, replace=False)]
  else:
    picked = [cands[i] for i in rng.integers(0, len(cands), size=k)]
  return [c for c, _ in picked], [p for _, p in picked]


def _global(example: dict, rng, k: int, index: int = 0):
  return _draw([(c, GLOBAL) for c in example["captions"]], rng, k)


def _fine(example: dict, rng, k: int, index: int = 0):
  if not example["fine_captions"]:
    return _global(example, rng, k)
  return _draw([(c, FINE) for c in example["fine_captions"]], rng, k)


def _any(example: dict, rng, k: int, index: int = 0):
  return _draw([(c, GLOBAL) for c in example["captions"]]
               + [(c, FINE) for c in example["fine_captions"]], rng, k)


def task_probability(step: int, p0: float = 0.95, p_min: float = 0.5,
                     steps: int = 10_000) -> float:
  """CLSP stage 2's scheduler: the probability p_t of Task 1 (global + fine-grained
  caption) at step t, falling linearly from p0 to p_min over ``steps`` steps, then held
  (p_min = p0 is the static scheduler)."""
  return max(p_min, p0 - (p0 - p_min) * step / max(steps, 1))


@dataclasses.dataclass(frozen=True)
class TaskPairs:
  """Sampler ``"task_pairs"``: CLSP stage 2's Task 1 / Task 2, one task per step."""
  global_batch_size: int
  seed: int
  p0: float = 0.95
  p_min: float = 0.5
  steps: int = 10_000

  def task(self, index: int) -> int:
    step = index // self.global_batch_size
    u = np.random.default_rng([self.seed, step, 0x7A5C]).random()
    return 1 if u < task_probability(step, self.p0, self.p_min, self.steps) else 2

  def __call__(self, example: dict, rng, k: int, index: int):
    if self.task(index) == 1:
      (g,), gp = _global(example, rng, 1)
      (f,), fp = _fine(example, rng, 1)
      return [g, f], gp + fp
    return _fine(example, rng, 2)


SAMPLERS: dict[str, Any] = {"global": _global, "fine": _fine, "any": _any,
                            "task_pairs": TaskPairs}
# The record fields each sampler may draw from (jaxclap.input_pipeline.distinct_captions
# lists every caption a run can meet from these).
FIELDS = {"global": ("captions",), "fine": ("fine_captions", "captions"),
          "any": ("captions", "fine_captions"), "task_pairs": ("captions", "fine_captions")}
# Samplers that need a fixed number of captions per clip.
CAPTIONS_PER_CLIP = {"task_pairs": 2}
_OPTIONS = {"task_pairs": ("p0", "p_min", "steps")}


def from_config(cfg: Any, *, global_batch_size: int, seed: int) -> Callable:
  """The sampler ``cfg`` (the config's ``input`` section) names, checked against
  ``captions_per_clip`` and ``task_schedule``; errors name the field."""
  name, k = str(cfg.caption_pool), int(cfg.captions_per_clip)
  if name not in SAMPLERS:
    raise ValueError(f"input.caption_pool must be one of {sorted(SAMPLERS)}, got {name!r}")
  need = CAPTIONS_PER_CLIP.get(name)
  if need is not None and k != need:
    raise ValueError(f"input.caption_pool={name!r} draws {need} captions per clip; set "
                     f"input.captions_per_clip={need}, not {k}")
  opts = dict(cfg.task_schedule or {})
  if name not in _OPTIONS:
    if opts:
      raise ValueError(f"input.task_schedule={opts} is for caption_pool 'task_pairs', "
                       f"not {name!r}: set it to None")
    return SAMPLERS[name]
  unknown = sorted(set(opts) - set(_OPTIONS[name]))
  if unknown:
    raise ValueError(f"input.task_schedule: unknown key(s) {unknown}; "
                     f"use {', '.join(_OPTIONS[name])}")
  return SAMPLERS[name](global_batch_size, seed, **opts)


def draw(sampler: Callable, example: dict, rng: np.random.Generator, k: int,
         index: int) -> tuple[list[str], np.ndarray]:
  """``k`` captions of ``example`` and their pools (int32 ``[k]``)."""
  caps, pools = sampler(example, rng, k, index)
  return caps, np.asarray(pools, np.int32)
