"""Tests for jaxclap.optim: each schedule and optimiser against its published formula.

* Eden against the Zipformer paper's / icefall's formula, in and after warm-up.
* ScaledAdam against a float64 numpy transcription of icefall's ``basic_step``,
  ``scaling_step``, ``momentum_step`` and ``_get_clipping_scale``
  (egs/librispeech/ASR/zipformer/optim.py), step by step, for 2-D, 1-D, one-element and
  scalar parameters; the reference also reports which of its branches (clipping, the
  scale clamps, the RMS floor, scalar_max) ran, so a run that skips one fails.
* make_optimizer: reduce-on-plateau (with frozen and lr_mults patterns), the SLAP and
  AcuLa schedules, ``value=`` accepted by every config, bad names refused.
"""

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from jaxclap import optim, train


def _cfg(**kw):
  """The base config's optim section with lr 1e-3, no warm-up and no clipping, then
  ``kw``."""
  from jaxclap import configs
  c = configs.base({}).optim
  c.update(dict(lr=1e-3, warmup_steps=0, grad_clip=None, weight_decay=1e-4, name="adamw",
                decay="cosine"))
  c.update(kw)
  return c


# ------------------------------------------------------------------------------ Eden


def _eden_formula(step, base_lr, lr_batches, lr_epochs, steps_per_epoch, warmup, start,
                  staircase=False):
  # Zipformer / icefall Eden.get_lr, batch = step, epoch = step / steps_per_epoch.
  epoch = step / steps_per_epoch
  if staircase:
    epoch = math.floor(epoch)
  factor = (((step ** 2 + lr_batches ** 2) / lr_batches ** 2) ** -0.25
            * ((epoch ** 2 + lr_epochs ** 2) / lr_epochs ** 2) ** -0.25)
  w = 1.0 if step >= warmup else start + (1.0 - start) * (step / warmup)
  return base_lr * factor * w


@pytest.mark.parametrize("staircase", [False, True])
def test_eden_matches_its_formula_in_and_after_warmup(staircase):
  # icefall's zipformer recipe: base_lr 0.045, lr_batches 7500, lr_epochs 3.5,
  # warmup_start 0.1, 500 warm-up batches.
  cfg = _cfg(lr=0.045, decay="eden", warmup_steps=500, warmup_start=0.1, lr_batches=7500,
             lr_epochs=3.5, steps_per_epoch=4000, staircase_epochs=staircase)
  sched = optim.lr_schedule(cfg, total_steps=100_000)
  for step in [0, 1, 100, 250, 499, 500, 501, 3999, 4000, 6000, 7500, 20_000, 99_999]:
    want = _eden_formula(step, 0.045, 7500, 3.5, 4000, 500, 0.1, staircase)
    np.testing.assert_allclose(float(sched(step)), want, rtol=2e-6, err_msg=str(step))
  # Warm-up starts at warmup_start * lr, not at 0 as the other schedules' warm-up does.
  np.testing.assert_allclose(float(sched(0)), 0.1 * 0.045, rtol=1e-6)
  # Float epochs and icefall's whole epochs differ inside an epoch.
  other = optim.eden_schedule(0.045, 7500, 3.5, 4000, 500, 0.1, staircase_epochs=not staircase)
  assert abs(float(sched(6000)) - float(other(6000))) > 1e-4 * float(sched(6000))


# ------------------------------------------------------------------------ ScaledAdam


def _ref_scaled_adam(params, grads_seq, lr_fn, b1, b2, eps, scalar_lr_scale, param_min_rms,
                     param_max_rms, scalar_max, size_update_period, clipping_scale,
                     clipping_update_period):
  """icefall's ScaledAdam.step, transcribed to float64 numpy for one parameter group
  (stacking same-shaped tensors changes nothing per tensor). Returns the parameters
  after every step and the set of branches taken."""
  params = {k: np.array(v, np.float64) for k, v in params.items()}
  states = {k: {} for k in params}
  group, hits, out = {}, set(), []
  is_scalar = lambda p: p.size == 1
  for step, grads in enumerate(grads_seq):
    lr = lr_fn(step)
    grads = {k: np.array(v, np.float64) for k, v in grads.items()}
    # _get_clipping_scale
    ans = 1.0
    if clipping_scale is not None and step > 0:
      tot_sumsq = 0.0
      for k, p in params.items():
        g = grads[k]
        if is_scalar(p):
          tot_sumsq += np.sum(g ** 2) * scalar_lr_scale ** 2
        else:
          tot_sumsq += np.sum((g * states[k]["param_rms"]) ** 2)
      tot_norm = math.sqrt(tot_sumsq)
      norms = group.setdefault("model_norms", np.zeros(clipping_update_period))
      norms[step % clipping_update_period] = tot_norm
      irregular = [i for i in [10, 20, 40] if i < clipping_update_period]
      if step % clipping_update_period == 0 or step in irregular:
        sorted_norms = np.sort(norms)
        if step in irregular:
          sorted_norms = sorted_norms[-step:]
          hits.add("irregular")
        n = sorted_norms.size
        median = sorted_norms[min(n - 1, (n // 4) * 2)]
        threshold = clipping_scale * median
        if step in irregular:
          threshold *= 2.0
        group["threshold"] = threshold
      if "threshold" in group:
        ans = min(1.0, group["threshold"] / (tot_norm + 1e-20))
        if ans < 1.0:
          hits.add("clipped")
    for k in params:
      p, st = params[k], states[k]
      g = grads[k] if ans == 1.0 else grads[k] * ans
      st.setdefault("step", 0)
      # basic_step
      lr_p = lr * scalar_lr_scale if is_scalar(p) else lr
      st.setdefault("exp_avg_sq", np.zeros_like(p))
      st["exp_avg_sq"] = b2 * st["exp_avg_sq"] + (1 - b2) * g * g
      bc2 = 1 - b2 ** (st["step"] + 1)
      exp_avg_sq = st["exp_avg_sq"] / bc2 if bc2 < 0.99 else st["exp_avg_sq"]
      if bc2 >= 0.99:
        hits.add("no_bias_correction")
      delta = -lr_p * g / (np.sqrt(exp_avg_sq) + eps)
      # scaling_step
      if not is_scalar(p):
        if "param_rms" not in st:
          st["param_rms"] = math.sqrt(np.mean(p ** 2))
          st["scale_exp_avg_sq"] = 0.0
          st["scale_grads"] = np.zeros(size_update_period)
        s_step = st["step"]
        st["scale_grads"][s_step % size_update_period] = np.sum(p * g)
        if s_step % size_update_period == size_update_period - 1:
          st["param_rms"] = math.sqrt(np.mean(p ** 2))
        if st["param_rms"] < param_min_rms:
          hits.add("min_rms")
        delta = delta * max(st["param_rms"], param_min_rms)
        if s_step % size_update_period == size_update_period - 1 and s_step > 0:
          beta2_corr = b2 ** size_update_period
          st["scale_exp_avg_sq"] = (beta2_corr * st["scale_exp_avg_sq"]
                                    + (1 - beta2_corr) * np.mean(st["scale_grads"] ** 2))
          size_step = (s_step + 1) // size_update_period
          bias_correction2 = 1 - beta2_corr ** size_step
          denom = math.sqrt(st["scale_exp_avg_sq"]) + eps
          scale_step = (-lr * scalar_lr_scale * bias_correction2 ** 0.5
                        * np.sum(st["scale_grads"]) / denom)
          if st["param_rms"] < param_min_rms:
            scale_step = 0.0
          if abs(scale_step) > 0.1:
            hits.add("scale_clamp")
          scale_step = min(max(scale_step, -0.1), 0.1)
          limit = (param_max_rms - st["param_rms"]) / st["param_rms"]
          if limit < scale_step:
            hits.add("max_rms")
          scale_step = min(scale_step, limit)
          delta = delta + p * scale_step
      # momentum_step
      st.setdefault("delta", np.zeros_like(p))
      st["delta"] = b1 * st["delta"] + (1 - b1) * delta
      p = p + st["delta"]
      if is_scalar(p):
        if abs(p).max() > scalar_max:
          hits.add("scalar_max")
        p = np.clip(p, -scalar_max, scalar_max)
      params[k] = p
      st["step"] += 1
    out.append({k: v.copy() for k, v in params.items()})
  return out, hits


def _problem(seed, steps, spike):
  rng = np.random.default_rng(seed)
  params = {"w": 0.5 * rng.normal(size=(3, 4)), "b": 0.1 * rng.normal(size=(5,)),
            "one": np.array([0.3]), "s": np.array(0.45), "tiny": 1e-7 * rng.normal(size=(4,))}
  grads_seq = []
  for t in range(steps):
    # w's gradient mostly points towards growing it, so the learned scale moves.
    g = {"w": -0.3 * params["w"] + 0.1 * rng.normal(size=(3, 4)),
         "b": rng.normal(size=(5,)), "one": rng.normal(size=(1,)),
         "s": np.array(-1.0 + 0.1 * rng.normal()), "tiny": rng.normal(size=(4,))}
    if t == spike:
      g = {k: 50.0 * v for k, v in g.items()}
    grads_seq.append(g)
  return params, grads_seq


def _run_scaled_adam(tx, params, grads_seq):
  p = jax.tree_util.tree_map(jnp.asarray, params)
  state = tx.init(p)
  update = jax.jit(tx.update)
  out = []
  for g in grads_seq:
    u, state = update(jax.tree_util.tree_map(jnp.asarray, g), state, p)
    p = optax.apply_updates(p, u)
    out.append(jax.device_get(p))
  return out


SCALED_ADAM_CASES = {
    # A decaying lr, clipping re-estimated every 4 steps, a gradient spike to clip.
    "schedule": dict(lr=lambda t: 0.05 / (1.0 + 0.1 * t), kw=dict(
        size_update_period=2, clipping_scale=2.0, clipping_update_period=4,
        param_max_rms=3.0, scalar_max=10.0), steps=12, spike=9,
        hits={"clipped", "min_rms"}),
    # A large lr so the scale step hits +-0.1 and param_max_rms, scalars hit scalar_max;
    # icefall's early estimate at step 10 (x2 threshold) with a 12-step period; a low b2
    # so that Adam's bias correction is dropped (1 - b2^t >= 0.99) within the run.
    "clamps": dict(lr=lambda t: 2.0, kw=dict(
        b2=0.6, size_update_period=4, clipping_scale=1.0, clipping_update_period=12,
        param_max_rms=0.75, scalar_max=0.5), steps=14, spike=11,
        hits={"clipped", "irregular", "scale_clamp", "max_rms", "scalar_max", "min_rms",
              "no_bias_correction"}),
}


@pytest.mark.parametrize("case", sorted(SCALED_ADAM_CASES))
def test_scaled_adam_matches_icefall_update_equations(case):
  c = SCALED_ADAM_CASES[case]
  kw = dict(dict(b1=0.9, b2=0.98, eps=1e-8, scalar_lr_scale=0.1, param_min_rms=1e-5),
            **c["kw"])
  params, grads_seq = _problem(0, c["steps"], c["spike"])
  want, hits = _ref_scaled_adam(params, grads_seq, c["lr"], **kw)
  assert c["hits"] <= hits, f"the reference never took {c['hits'] - hits}"
  # float64 so that the comparison checks the algebra, not float32 rounding.
  with jax.enable_x64(True):
    got = _run_scaled_adam(optim.scaled_adam(c["lr"], **kw), params, grads_seq)
  for t, (g, w) in enumerate(zip(got, want)):
    for k in w:
      assert g[k].shape == w[k].shape, k
      np.testing.assert_allclose(g[k], w[k], rtol=1e-6, atol=1e-13, err_msg=f"step {t} {k}")
  # The parameters did move (a zero update would not match the reference either, but
  # make the failure obvious).
  assert not np.allclose(want[-1]["w"], params["w"])


def test_scaled_adam_through_make_optimizer_in_float32_with_eden():
  cfg = _cfg(name="scaled_adam", lr=0.045, decay="eden", warmup_steps=5, warmup_start=0.5,
             lr_batches=4, lr_epochs=2.0, steps_per_epoch=3, clipping_scale=2.0,
             clipping_update_period=4, size_update_period=2)
  params, grads_seq = _problem(1, 10, spike=9)
  eden = lambda t: _eden_formula(t, 0.045, 4, 2.0, 3, 5, 0.5)
  want, hits = _ref_scaled_adam(params, grads_seq, eden, b1=0.9, b2=0.98, eps=1e-8,
                                scalar_lr_scale=0.1, param_min_rms=1e-5, param_max_rms=3.0,
                                scalar_max=10.0, size_update_period=2, clipping_scale=2.0,
                                clipping_update_period=4)
  assert "clipped" in hits
  f32 = {k: v.astype(np.float32) for k, v in params.items()}
  got = _run_scaled_adam(train.make_optimizer(cfg, 100), f32,
                         [{k: v.astype(np.float32) for k, v in g.items()} for g in grads_seq])
  for k in want[-1]:
    np.testing.assert_allclose(got[-1][k], want[-1][k], rtol=2e-4, atol=1e-9, err_msg=k)


# ------------------------------------------------------------------ make_optimizer


def _tree(seed=0):
  rng = np.random.default_rng(seed)
  return {"audio": {"enc": {"kernel": jnp.asarray(rng.normal(size=(3, 2)), jnp.float32),
                            "bias": jnp.asarray(rng.normal(size=(2,)), jnp.float32)}},
          "text": {"emb": {"embedding": jnp.asarray(rng.normal(size=(4, 2)), jnp.float32)},
                   "head": {"kernel": jnp.asarray(rng.normal(size=(2, 2)), jnp.float32)}}}


def test_extra_args_reach_members_of_multi_transform_inside_chain():
  # make_optimizer relies on optax forwarding value= through chain and multi_transform
  # to an extra-args member while plain members (adam, set_to_zero) ignore it.
  def by_value():
    return optax.GradientTransformationExtraArgs(
        lambda p: optax.EmptyState(),
        lambda u, s, p=None, *, value, **kw: (jax.tree_util.tree_map(lambda x: x * value, u), s))
  params = {"a": jnp.ones(2), "b": jnp.ones(2)}
  tx = optax.chain(optax.identity(),
                   optax.multi_transform({"x": by_value(), "y": optax.sgd(1.0)},
                                         {"a": "x", "b": "y"}))
  u, _ = tx.update(params, tx.init(params), params, value=3.0)
  np.testing.assert_allclose(u["a"], 3.0)
  np.testing.assert_allclose(u["b"], -1.0)


@pytest.mark.parametrize("name", ["adam", "adamw", "scaled_adam"])
@pytest.mark.parametrize("decay", ["cosine", "linear", "constant", "exponential", "eden"])
def test_every_config_accepts_value(name, decay):
  cfg = _cfg(name=name, decay=decay, warmup_steps=2, decay_every=3, decay_rate=0.5,
             steps_per_epoch=5, frozen=("text/emb/.*",), lr_mults=(("audio/.*", 0.1),),
             grad_clip=1.0 if name == "adam" else None)
  params = _tree()
  tx = train.make_optimizer(cfg, 20)
  state = tx.init(params)
  step = jax.jit(lambda g, s, p, v: tx.update(g, s, p, value=v))
  for i in range(3):
    u, state = step(_tree(i + 1), state, params, jnp.float32(1.0))
    params = optax.apply_updates(params, u)
  np.testing.assert_array_equal(params["text"]["emb"]["embedding"],
                                _tree()["text"]["emb"]["embedding"])
  assert not np.allclose(params["text"]["head"]["kernel"], _tree()["text"]["head"]["kernel"])


def test_reduce_on_plateau_lowers_lr_tenfold_after_patience_and_not_before():
  patience, accum = 3, 2
  common = dict(name="adam", lr=1e-2, decay="constant", frozen=("text/emb/.*",),
                lr_mults=(("audio/.*", 0.1),))
  tx = train.make_optimizer(_cfg(**common, plateau=dict(
      factor=0.1, patience=patience, cooldown=0, accumulation_size=accum, rtol=1e-4)), 100)
  ref = train.make_optimizer(_cfg(**common), 100)  # the same without the plateau
  params = _tree()
  s, r = tx.init(params), ref.init(params)
  update = jax.jit(lambda g, s, v: tx.update(g, s, params, value=v))
  # One improving average (from +inf), then flat losses: the averages of pairs
  # 2..patience+1 fail to improve; the last of them should cut the lr.
  losses = [1.0] * (accum * (1 + patience + 2))
  ratios = []
  for i, loss in enumerate(losses):
    g = _tree(i + 1)
    u, s = update(g, s, jnp.float32(loss))
    v, r = ref.update(g, r, params, value=jnp.float32(loss))
    # default lr and the 0.1x lr_mults group alike
    ratios.append({"text": np.asarray(u["text"]["head"]["kernel"] / v["text"]["head"]["kernel"]),
                   "audio": np.asarray(u["audio"]["enc"]["kernel"] / v["audio"]["enc"]["kernel"])})
    assert float(jnp.abs(u["text"]["emb"]["embedding"]).max()) == 0.0  # frozen stays frozen
  cut = accum * (1 + patience) - 1  # the update on which the patience-th bad average lands
  for i, rat in enumerate(ratios):
    want = 1.0 if i < cut else 0.1
    for k, x in rat.items():
      np.testing.assert_allclose(x, want, rtol=1e-5, err_msg=f"update {i} {k}")


def test_reduce_on_plateau_keeps_lr_while_the_loss_improves():
  tx = train.make_optimizer(_cfg(name="adamw", decay="constant",
                                 plateau=dict(factor=0.1, patience=2)), 100)
  params = _tree()
  s = tx.init(params)
  for i in range(10):
    _, s = tx.update(_tree(i + 1), s, params, value=jnp.float32(1.0 - 0.05 * i))
  assert float(s[-1].scale) == 1.0
  for i in range(2):
    _, s = tx.update(_tree(i + 1), s, params, value=jnp.float32(5.0))
  assert float(s[-1].scale) == pytest.approx(0.1)


def test_slap_exponential_schedule():
  # SLAP: warm-up over 2,500 steps, then x0.99 every 2,000 steps.
  lr = 5e-4
  sched = optim.lr_schedule(_cfg(lr=lr, warmup_steps=2500, decay="exponential",
                                 decay_every=2000, decay_rate=0.99), 400_000)
  for step in [0, 1, 1250, 2499, 2500, 4499, 4500, 6500, 2500 + 2000 * 37 + 1999, 300_000]:
    want = lr * step / 2500 if step < 2500 else lr * 0.99 ** ((step - 2500) // 2000)
    np.testing.assert_allclose(float(sched(step)), want, rtol=1e-5, err_msg=str(step))


def test_acula_linear_schedule_with_warmup():
  # Linear warm-up, then linear decay to end_lr_ratio * lr at total_steps.
  lr, warm, total, end = 1e-4, 1000, 11_000, 0.0
  sched = optim.lr_schedule(_cfg(lr=lr, warmup_steps=warm, decay="linear",
                                 end_lr_ratio=end), total)
  for step in [0, 10, 999, 1000, 1001, 6000, 10_999, 11_000, 20_000]:
    if step < warm:
      want = lr * step / warm
    else:
      want = lr + (lr * end - lr) * min(1.0, (step - warm) / (total - warm))
    np.testing.assert_allclose(float(sched(step)), want, rtol=1e-5, atol=1e-6 * lr,
                               err_msg=str(step))


@pytest.mark.parametrize("kw, field", [
    (dict(name="sgdx"), r"config\.optim\.name='sgdx'"),
    (dict(decay="step"), r"config\.optim\.decay='step'"),
    (dict(decay="eden"), r"config\.optim\.steps_per_epoch"),
    (dict(plateau=dict(factor=0.1, patients=10)), r"config\.optim\.plateau .*patients"),
])
def test_bad_names_are_refused_naming_the_field(kw, field):
  with pytest.raises(ValueError, match=field):
    train.make_optimizer(_cfg(**kw), 100)
