"""Optimisers and learning-rate schedules: the one place ``config.optim`` is read.

* ``lr_schedule(cfg, total_steps)``: linear warm-up then cosine | linear | constant |
  exponential (SLAP's x0.99 every 2,000 steps) | eden.
* ``eden_schedule``: Eden, the Zipformer schedule (Yao et al. 2023, "Zipformer: a faster
  and better encoder for automatic speech recognition"; icefall's ``Eden``).
* ``scaled_adam``: ScaledAdam from the same paper as an optax transformation, following
  icefall's ``egs/librispeech/ASR/zipformer/optim.py`` (k2-fsa/icefall@36e0420) step by
  step: parameter-scale-relative Adam steps, the learned parameter scale, and gradient
  clipping relative to the median of recent gradient norms.
* ``make_optimizer(cfg, total_steps)``: the trainer's transformation: optimiser x
  schedule per lr multiplier, frozen parameters, global-norm clipping and CLAP's
  reduce-on-plateau. Its ``update`` always accepts ``value=loss``.
"""

from __future__ import annotations

import re
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import traverse_util

# --------------------------------------------------------------------------- schedules


def eden_schedule(base_lr: float, lr_batches: float, lr_epochs: float,
                  steps_per_epoch: float, warmup_steps: float = 500.0,
                  warmup_start: float = 0.5, staircase_epochs: bool = False) -> optax.Schedule:
  """Eden: ``base_lr * ((t^2 + lr_batches^2) / lr_batches^2)^-0.25
  * ((e^2 + lr_epochs^2) / lr_epochs^2)^-0.25 * warmup``, where ``warmup`` rises linearly
  from ``warmup_start`` to 1 over ``warmup_steps`` steps and then stays 1.

  ``t`` is optax's update count (0 on the first update; icefall's trainer increments its
  batch counter before ``step_batch``, so its first update sees t=1, a negligible offset).
  The epoch ``e`` is ``t / steps_per_epoch``, a float; icefall instead calls
  ``step_epoch(epoch - 1)`` at the start of each epoch, holding ``e`` at the number of
  completed epochs: ``staircase_epochs=True`` does that.
  """
  if lr_batches <= 0 or lr_epochs <= 0 or steps_per_epoch <= 0:
    raise ValueError("eden needs positive lr_batches, lr_epochs and steps_per_epoch, got "
                     f"{lr_batches}, {lr_epochs}, {steps_per_epoch}")
  if not 0.0 <= warmup_start <= 1.0:
    raise ValueError(f"eden warmup_start={warmup_start} must be in [0, 1]")

  def schedule(count):
    t = jnp.asarray(count, jnp.float32)
    epoch = t / steps_per_epoch
    if staircase_epochs:
      epoch = jnp.floor(epoch)
    factor = (((t ** 2 + lr_batches ** 2) / lr_batches ** 2) ** -0.25
              * ((epoch ** 2 + lr_epochs ** 2) / lr_epochs ** 2) ** -0.25)
    if warmup_steps > 0:
      warm = jnp.where(t >= warmup_steps, 1.0,
                       warmup_start + (1.0 - warmup_start) * t / warmup_steps)
    else:
      warm = 1.0
    return base_lr * factor * warm

  return schedule


def lr_schedule(cfg: Any, total_steps: int) -> optax.Schedule:
  """Linear warm-up from 0 to ``lr`` over ``warmup_steps``, then ``decay``: cosine |
  linear (to ``end_lr_ratio * lr`` at ``total_steps``) | constant | exponential
  (``decay_rate`` every ``decay_every`` steps, SLAP's x0.99 / 2,000) | eden (which has
  its own multiplicative warm-up from ``warmup_start``, see ``eden_schedule``)."""
  lr, warm = float(cfg.lr), int(cfg.warmup_steps)
  decay = cfg.decay
  rest = max(1, total_steps - warm)
  if decay == "eden":
    if cfg.steps_per_epoch is None:
      raise ValueError("config.optim.steps_per_epoch is needed by config.optim.decay='eden'")
    return eden_schedule(lr, float(cfg.lr_batches),
                         float(cfg.lr_epochs), float(cfg.steps_per_epoch),
                         warmup_steps=warm, warmup_start=float(cfg.warmup_start),
                         staircase_epochs=bool(cfg.staircase_epochs))
  if decay == "cosine":
    after = optax.cosine_decay_schedule(lr, rest, alpha=float(cfg.end_lr_ratio))
  elif decay == "linear":
    after = optax.linear_schedule(lr, lr * float(cfg.end_lr_ratio), rest)
  elif decay == "constant":
    after = optax.constant_schedule(lr)
  elif decay == "exponential":
    after = optax.exponential_decay(lr, int(cfg.decay_every), float(cfg.decay_rate),
                                    staircase=True)
  else:
    raise ValueError(f"config.optim.decay={decay!r}: use cosine, linear, constant, "
                     "exponential or eden")
  if warm <= 0:
    return after
  return optax.join_schedules([optax.linear_schedule(0.0, lr, warm), after], [warm])


# -------------------------------------------------------------------------- ScaledAdam


class ScaledAdamState(NamedTuple):
  count: jax.Array             # updates done so far (icefall's state["step"])
  exp_avg_sq: Any              # per parameter: EMA of grad^2 (beta2)
  delta: Any                   # per parameter: EMA of the un-momentum'd deltas (beta1)
  param_rms: Any               # per tensor: RMS, refreshed every size_update_period steps
  scale_grads: Any             # per tensor: (size_update_period, 1..) sums of param * grad
  scale_exp_avg_sq: Any        # per tensor: EMA of the scale gradient's square
  model_norms: jax.Array       # (clipping_update_period,) recent scaled gradient norms
  norm_threshold: jax.Array    # clipping threshold; inf until first estimated


def _is_scalar(p) -> bool:
  # icefall stacks same-shaped tensors and tests ``numel == shape[0]``: a tensor of one
  # element is a "scalar" (no RMS scaling, lr * scalar_lr_scale, clamped to scalar_max);
  # 1-D vectors with more elements are scaled by their RMS like matrices.
  return p.size == 1


def scaled_adam(learning_rate: optax.ScalarOrSchedule, b1: float = 0.9, b2: float = 0.98,
                eps: float = 1e-8, scalar_lr_scale: float = 0.1,
                param_min_rms: float = 1e-5, param_max_rms: float = 3.0,
                scalar_max: float = 10.0, size_update_period: int = 4,
                clipping_scale: float | None = None,
                clipping_update_period: int = 100) -> optax.GradientTransformation:
  """ScaledAdam (Zipformer paper; icefall ``ScaledAdam``, defaults as there).

  Per tensor ``p`` with gradient ``g`` (after clipping), step ``t`` (from 0):

  * Adam without momentum: ``v = b2 v + (1 - b2) g^2``; ``v_hat = v / (1 - b2^(t+1))``
    while that correction is < 0.99, else ``v``; ``d = -lr g / (sqrt(v_hat) + eps)``.
  * Non-scalars: ``d *= max(rms(p), param_min_rms)`` with ``rms`` refreshed from ``p``
    every ``size_update_period`` steps; on those steps (t > 0) the learned scale update
    ``d += p * s``, ``s = -lr scalar_lr_scale sqrt(bc) sum_k h_k / (sqrt(w) + eps)``
    where ``h_k = sum(p * g)`` over the period, ``w`` their EMA of squares with
    ``b2^period``, ``bc = 1 - b2^(period * n)``; ``s`` is 0 below ``param_min_rms``,
    clamped to [-0.1, 0.1], and kept so ``rms`` does not exceed ``param_max_rms``.
  * Scalars: ``lr * scalar_lr_scale``, no scaling, parameter clamped to +-scalar_max.
  * Momentum on the deltas: ``m = b1 m + (1 - b1) d`` (no b1 bias correction); the
    update is ``m``. The learning rate is inside the momentum (as in icefall), which is
    why it is an argument here rather than a following ``optax.scale_by_learning_rate``.
  * ``clipping_scale``: from step 1 the norm of ``g * rms`` (``g * scalar_lr_scale`` for
    scalars) over the whole tree is recorded; every ``clipping_update_period`` steps (and
    at steps 10, 20, 40 when below it, with a x2 threshold) the threshold becomes
    ``clipping_scale * median`` of recent norms; gradients are scaled by
    ``min(1, threshold / norm)``.

  Under ``optax.multi_transform`` each label is its own instance with its own clipping
  statistics, as each parameter group is in icefall.
  """
  sched = learning_rate if callable(learning_rate) else (lambda _: learning_rate)
  period, cperiod = int(size_update_period), int(clipping_update_period)
  irregular = [i for i in (10, 20, 40) if i < cperiod]

  def state_dtype(p):
    return jnp.promote_types(p.dtype, jnp.float32)

  def init_fn(params):
    zeros = lambda p: jnp.zeros(p.shape, state_dtype(p))
    rms = lambda p: (jnp.zeros((), state_dtype(p)) if _is_scalar(p)
                     else jnp.sqrt(jnp.mean(jnp.square(p.astype(state_dtype(p))))))
    tmap = jax.tree_util.tree_map
    leaves = jax.tree_util.tree_leaves(params)
    norm_dtype = jnp.result_type(*[state_dtype(p) for p in leaves]) if leaves else jnp.float32
    return ScaledAdamState(
        count=jnp.zeros((), jnp.int32),
        exp_avg_sq=tmap(zeros, params), delta=tmap(zeros, params),
        param_rms=tmap(rms, params),
        # (period, 1, ..., 1): a rank above the parameter's, so a partitioned parameter's
        # logical axis names cannot be applied to it (it is replicated, as it is tiny).
        scale_grads=tmap(lambda p: jnp.zeros((period,) + (1,) * p.ndim, state_dtype(p)),
                         params),
        scale_exp_avg_sq=tmap(lambda p: jnp.zeros((), state_dtype(p)), params),
        model_norms=jnp.zeros((cperiod,), norm_dtype),
        norm_threshold=jnp.asarray(jnp.inf, norm_dtype))

  def clip(grads, state):
    step = state.count
    scaled = jax.tree_util.tree_map(
        lambda g, r: jnp.sum(jnp.square(g * (scalar_lr_scale if _is_scalar(g) else r))),
        grads, state.param_rms)
    norm = jnp.sqrt(sum(jax.tree_util.tree_leaves(scaled), jnp.zeros((), state.model_norms.dtype)))
    norms = state.model_norms.at[step % cperiod].set(norm)
    is_irr = jnp.any(jnp.asarray([step == i for i in irregular])) if irregular else False
    num = jnp.where(is_irr, step, cperiod)
    # icefall's quartile index on the last ``num`` of the sorted norms: min(num-1, num//4*2)
    median = jnp.sort(norms)[cperiod - num + jnp.minimum(num - 1, (num // 4) * 2)]
    estimate = clipping_scale * median * jnp.where(is_irr, 2.0, 1.0)
    threshold = jnp.where((step % cperiod == 0) | is_irr, estimate, state.norm_threshold)
    ratio = threshold / (norm + 1e-20)
    # Python's min(1.0, nan) is 1.0 in icefall: a NaN ratio does not clip.
    ans = jnp.where(ratio < 1.0, ratio, 1.0)
    first = step == 0  # icefall returns before recording anything on the first step
    norms = jnp.where(first, state.model_norms, norms)
    threshold = jnp.where(first, state.norm_threshold, threshold)
    ans = jnp.where(first, 1.0, ans)
    grads = jax.tree_util.tree_map(
        lambda g: jnp.where(ans == 0.0, jnp.zeros_like(g), g * ans.astype(g.dtype)), grads)
    return grads, norms, threshold

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError("scaled_adam needs params in update: its steps are relative to them")
    step = state.count
    lr = sched(step)
    norms, threshold = state.model_norms, state.norm_threshold
    if clipping_scale is not None:
      updates, norms, threshold = clip(updates, state)
    is_last = step % period == period - 1
    do_scale = is_last & (step > 0)
    b2c = b2 ** period  # the scale's EMA advances once per period

    def one(g, p, v, m, rms, sg, sv):
      dt = v.dtype
      g, p = g.astype(dt), p.astype(dt)
      scalar = _is_scalar(p)
      bc2 = 1.0 - b2 ** (step + 1).astype(dt)
      bc_scale = 1.0 - b2c ** ((step + 1) // period).astype(dt)
      v = b2 * v + (1.0 - b2) * g * g
      v_hat = jnp.where(bc2 < 0.99, v / bc2, v)
      d = -(lr * scalar_lr_scale if scalar else lr) * g / (jnp.sqrt(v_hat) + eps)
      if not scalar:
        sg = sg.at[step % period].set(jnp.sum(p * g).reshape(sg.shape[1:]))
        rms = jnp.where(is_last, jnp.sqrt(jnp.mean(p * p)), rms)
        d = d * jnp.maximum(rms, param_min_rms)
        sv = jnp.where(do_scale, b2c * sv + (1.0 - b2c) * jnp.mean(sg * sg), sv)
        s = -lr * scalar_lr_scale * jnp.sqrt(bc_scale) * jnp.sum(sg) / (jnp.sqrt(sv) + eps)
        s = jnp.where(rms < param_min_rms, 0.0, s)
        s = jnp.clip(s, -0.1, 0.1)
        s = jnp.minimum(s, (param_max_rms - rms) / rms)
        d = d + jnp.where(do_scale, p * s, 0.0)
      m = b1 * m + (1.0 - b1) * d
      u = jnp.clip(p + m, -scalar_max, scalar_max) - p if scalar else m
      return u, v, m, rms, sg, sv

    treedef = jax.tree_util.tree_structure(updates)
    outs = [one(*xs) for xs in zip(*(treedef.flatten_up_to(t) for t in (
        updates, params, state.exp_avg_sq, state.delta, state.param_rms, state.scale_grads,
        state.scale_exp_avg_sq)))]
    cols = list(zip(*outs)) if outs else [()] * 6  # () when every leaf is masked out
    u, v, m, rms, sg, sv = (treedef.unflatten(list(c)) for c in cols)
    u = jax.tree_util.tree_map(lambda x, p: x.astype(p.dtype), u, params)
    return u, ScaledAdamState(count=optax.safe_increment(step), exp_avg_sq=v, delta=m,
                              param_rms=rms, scale_grads=sg, scale_exp_avg_sq=sv,
                              model_norms=norms, norm_threshold=threshold)

  return optax.GradientTransformation(init_fn, update_fn)


# ------------------------------------------------------------------ the trainer's optax


def _path_labels(params, patterns: dict[str, str], default: str):
  """Each parameter's label: the first regex in ``patterns`` matching 'a/b/c', else default."""
  flat = traverse_util.flatten_dict(params)
  labels = {}
  for path in flat:
    name = "/".join(path)
    labels[path] = next((lab for pat, lab in patterns.items() if re.fullmatch(pat, name)),
                        default)
  return traverse_util.unflatten_dict(labels)


_PLATEAU_KEYS = ("factor", "patience", "cooldown", "accumulation_size", "rtol", "atol",
                 "min_scale")


def make_optimizer(cfg: Any, total_steps: int) -> optax.GradientTransformationExtraArgs:
  """The trainer's optax transformation from ``config.optim``.

  ``update(grads, state, params, value=loss)`` works for every config (``value`` is only
  read by ``plateau``), so the trainer always passes the loss.

  Fields (their defaults are in ``jaxclap.configs.base``):

  * ``name``: adam | adamw | scaled_adam.
  * ``lr``: peak / base learning rate.
  * ``warmup_steps``: linear warm-up from 0 (for eden: from ``warmup_start * lr``).
  * ``decay``: cosine | linear | constant | exponential | eden (``lr_schedule``).
  * ``end_lr_ratio``: cosine / linear end as a fraction of ``lr``.
  * ``decay_every``, ``decay_rate``: exponential: x``decay_rate`` every ``decay_every``
    steps after warm-up (SLAP: 2,000 and 0.99).
  * ``lr_batches``, ``lr_epochs``, ``steps_per_epoch`` (the recipe's), ``warmup_start``,
    ``staircase_epochs``: eden (``eden_schedule``).
  * ``b1``, ``b2`` (None: 0.999, or 0.98 for scaled_adam as icefall), ``eps``: Adam moments.
  * ``weight_decay``: adamw only, and only on parameters with ndim > 1 (not on biases,
    norms' scales or other 1-D parameters).
  * ``scalar_lr_scale``, ``param_min_rms``, ``param_max_rms``, ``scalar_max``,
    ``size_update_period``, ``clipping_scale`` (icefall trains with 2.0),
    ``clipping_update_period``: scaled_adam (``scaled_adam``).
  * ``grad_clip``: clip the whole gradient to this global norm first.
  * ``frozen``: regexes of parameter paths ('audio/encoder/...') that never update
    and hold no optimiser state.
  * ``lr_mults``: pairs (regex, multiplier) scaling the schedule for matching
    parameters (first match wins, after ``frozen``), e.g. a pretrained tower at 0.1x.
  * ``plateau``: dict of ``optax.contrib.reduce_on_plateau`` arguments (factor,
    patience, cooldown, accumulation_size, rtol, atol, min_scale) scaling every update by
    ``factor`` once ``patience`` consecutive averages of ``accumulation_size`` losses fail
    to improve (CLAP: factor=0.1, patience=10). Note optax reduces on the
    ``patience``-th non-improving value; torch's ReduceLROnPlateau on the one after.
  * ``grad_accum`` is read by the trainer, not here.
  """
  name = cfg.name
  if name not in ("adam", "adamw", "scaled_adam"):
    raise ValueError(f"config.optim.name={name!r}: use adam, adamw or scaled_adam")
  sched = lr_schedule(cfg, total_steps)
  kw = dict(b1=float(cfg.b1),
            b2=float(cfg.b2 if cfg.b2 is not None else 0.98 if name == "scaled_adam" else 0.999),
            eps=float(cfg.eps))

  def base(mult):
    s = (lambda step: sched(step) * mult) if mult != 1.0 else sched
    if name == "adam":
      return optax.adam(s, **kw)
    if name == "adamw":
      decay_mask = lambda p: jax.tree_util.tree_map(lambda x: x.ndim > 1, p)
      return optax.adamw(s, weight_decay=float(cfg.weight_decay),
                         mask=decay_mask, **kw)
    clipping = cfg.clipping_scale
    return scaled_adam(
        s, scalar_lr_scale=float(cfg.scalar_lr_scale),
        param_min_rms=float(cfg.param_min_rms),
        param_max_rms=float(cfg.param_max_rms),
        scalar_max=float(cfg.scalar_max),
        size_update_period=int(cfg.size_update_period),
        clipping_scale=None if clipping is None else float(clipping),
        clipping_update_period=int(cfg.clipping_update_period), **kw)

  mults = {str(k): float(v) for k, v in (cfg.lr_mults or [])}
  frozen = list(cfg.frozen or [])
  patterns = {p: "frozen" for p in frozen}
  patterns.update({p: f"mult:{m}" for p, m in mults.items()})
  transforms = {"default": base(1.0), "frozen": optax.set_to_zero()}
  transforms.update({f"mult:{m}": base(m) for m in mults.values()})
  # multi_transform and chain forward extra arguments (value=) to every member, wrapping
  # plain transformations so that they ignore them.
  parts = [optax.multi_transform(transforms, lambda p: _path_labels(p, patterns, "default"))]
  clip = cfg.grad_clip
  if clip:
    parts.insert(0, optax.clip_by_global_norm(float(clip)))
  plateau = cfg.plateau
  if plateau:
    plateau = plateau.to_dict() if hasattr(plateau, "to_dict") else dict(plateau)
    unknown = sorted(set(plateau) - set(_PLATEAU_KEYS))
    if unknown:
      raise ValueError(f"config.optim.plateau has unknown keys {unknown}: use "
                       f"{', '.join(_PLATEAU_KEYS)}")
    # After the optimiser: it scales the final updates, i.e. the learning rate (exactly
    # for adam / adamw; for scaled_adam the momentum's history is scaled too).
    parts.append(optax.contrib.reduce_on_plateau(**plateau))
  return optax.with_extra_args_support(optax.chain(*parts))


def _check_patterns(cfg: Any, params) -> None:
  """A regex in ``optim.frozen`` / ``optim.lr_mults`` that matches no parameter is a typo
  that would silently train (or not slow down) a whole tower: refuse it, naming it."""
  names = ["/".join(p) for p in traverse_util.flatten_dict(params)]
  for field, pats in (("frozen", list(cfg.frozen or [])),
                      ("lr_mults", [k for k, _ in (cfg.lr_mults or [])])):
    for pat in pats:
      if not any(re.fullmatch(str(pat), n) for n in names):
        raise ValueError(f"config.optim.{field}: {pat!r} matches no parameter "
                         f"(parameters look like {names[0]!r}, {names[-1]!r})")
