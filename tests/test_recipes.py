"""The five recipes (configs/clap.py, slap.py, speech_clap.py, clsp.py, acula.py).

* Each small variant (``:runlocal``) trains on the embedded corpus with its loss falling
  and is evaluated with its paper's metrics; CLSP stage 2 starts from stage 1's weights
  and draws Task 1 / Task 2 steps on the scheduler.
* Each full-size config builds from shapes alone (``jax.eval_shape``, nothing allocated)
  with the parameter counts its paper states, within 5%.
* The sigmoid (SigLIP) loss option trains through the same step; contradictory loss
  settings are refused before anything compiles.
"""

import json
import os

import jax
import numpy as np
import pytest

from jaxclap import caption_samplers, configs, input_pipeline, sharding, train


def recipe(name: str, arg: str = ""):
  return configs.load(name, arg)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("datasets"))


def _train(config, data_dir, workdir):
  config.corpus.data_dir = data_dir
  config.log_every = 1
  state, results = train.train_and_evaluate(config, str(workdir))
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  return state, results, rows


def _falls(rows, key="loss", k=5):
  losses = np.array([r[key] for r in rows])
  assert np.all(np.isfinite(losses)), losses
  first, last = losses[:k].mean(), losses[-k:].mean()
  assert last < first, f"{key} did not fall: first {k} {first:.4f}, last {k} {last:.4f}"
  return first, last


# ------------------------------------------------------------------- small variants

# recipe -> (metric sections its results must hold, the loss terms it trains)
SMALL = {
    "clap": (("zero_shot", "retrieval"), ("contrastive",)),
    "slap": (("zero_shot", "zero_shot_f1", "retrieval", "linear_probe"), ("contrastive", "mae")),
    "speech_clap": (("graded", "retrieval"), ("contrastive",)),
    "acula": (("linear_probe", "retrieval"), ("cka_loss", "mae")),
}


@pytest.mark.parametrize("name", sorted(SMALL))
def test_small_variant_trains_and_evaluates(name, data_dir, tmp_path):
  sections, terms = SMALL[name]
  state, results, rows = _train(recipe(name, "runlocal"), data_dir, tmp_path / name)
  _falls(rows)
  for term in terms:
    assert term in rows[-1], f"{name}: no {term!r} in the step's metrics"
  for section in sections:
    assert results.get(section), f"{name}: results lack {section!r}"
  if name == "acula":   # AUROC of a linear probe on frozen embeddings
    aurocs = [v["auroc"] for v in results["linear_probe"].values() if v]
    assert aurocs and all(0.0 <= a <= 1.0 for a in aurocs)
    assert "contrastive" not in rows[-1]   # CKA + MAE only
  if name == "clap":
    # tau 0.007 starts the log-scale at 4.96 > ln 100: the parameter itself is clamped
    # after each update (LAION), so it is back in range and receives gradients again.
    assert float(state.params["logit_scale"]) <= np.log(100.0) + 1e-6
  if name == "speech_clap":
    for stats in results["graded"].values():
      assert {"pearson", "spearman", "kendall"} <= set(stats)


def test_clsp_stage_two_starts_from_stage_one(data_dir, tmp_path):
  s1, s2 = tmp_path / "stage1", tmp_path / "stage2"
  _, results1, rows1 = _train(recipe("clsp", "runlocal,stage=1"), data_dir, s1)
  _falls(rows1)
  assert all(r["fine_captions"] == 1.0 for r in rows1)   # stage 1: fine captions only
  assert {"multiclass", "graded", "retrieval", "retrieval_fine"} <= set(results1)
  # Fine-grained captions are other texts than the global ones: another ranking.
  assert results1["retrieval_fine"] != results1["retrieval"]
  assert all({"WA", "UA"} <= set(v) for v in results1["multiclass"].values())

  # Stage 2 without its starting point is refused, naming the field.
  c2 = recipe("clsp", "runlocal,stage=2")
  c2.corpus.data_dir = data_dir
  with pytest.raises(ValueError, match="init_from"):
    train.Trainer(c2, sharding.make_mesh(c2.mesh)).init_state(0)

  # Initialised from stage 1: its trained weights exactly, not a fresh init.
  c2.init_from = str(s1)
  trainer = train.Trainer(c2, sharding.make_mesh(c2.mesh))
  start = trainer.init_state(0)
  import jaxclap
  trained = jaxclap.load(str(s1)).variables["params"]
  for a, b in zip(jax.tree_util.tree_leaves(start.params), jax.tree_util.tree_leaves(trained)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert int(start.step) == 0

  _, results2, rows2 = _train(c2, data_dir, s2)
  _falls(rows2)
  # Every step is one task for the whole batch (Task 1: a global and a fine caption per
  # clip, Task 2: two fine ones); p_t falls from 0.95, so both occur.
  tasks = [r["fine_captions"] for r in rows2]
  assert set(tasks) == {0.5, 1.0}, tasks
  assert "retrieval" in results2


def test_clsp_task_scheduler():
  """p_t falls linearly from p0 to p_min over T steps; each step's draw is one task for
  the whole global batch, a pure function of (seed, step)."""
  p = caption_samplers.task_probability
  assert p(0) == pytest.approx(0.95) and p(5000) == pytest.approx(0.725)
  assert p(10_000) == pytest.approx(0.5) and p(50_000) == pytest.approx(0.5)
  assert p(123, p0=0.8, p_min=0.8) == pytest.approx(0.8)   # static
  sched = caption_samplers.TaskPairs(global_batch_size=4, seed=3, p0=0.95, p_min=0.5,
                                      steps=1000)
  tasks = np.array([[sched.task(s * 4 + i) for i in range(4)] for s in range(4000)])
  assert (tasks == tasks[:, :1]).all()   # one task per step
  early, late = (tasks[:500, 0] == 1).mean(), (tasks[2000:, 0] == 1).mean()
  expected_early = np.mean([p(s, 0.95, 0.5, 1000) for s in range(500)])   # 0.8375
  assert abs(early - expected_early) < 0.05 and abs(late - 0.5) < 0.04, (early, late)
  again = caption_samplers.TaskPairs(global_batch_size=4, seed=3, p0=0.95, p_min=0.5,
                                      steps=1000)
  assert [again.task(i) for i in range(400)] == list(tasks[:100].reshape(-1))
  example = {"captions": ["g1", "g2", "g3"], "fine_captions": ["f1", "f2"]}
  rng = np.random.default_rng(0)
  task1 = next(i for i in range(400) if sched.task(i) == 1)
  task2 = next(i for i in range(400) if sched.task(i) == 2)
  c1, pools = sched(example, rng, 2, task1)
  assert c1[0] in example["captions"] and c1[1] in example["fine_captions"]
  assert pools == [caption_samplers.GLOBAL, caption_samplers.FINE]
  assert sorted(sched(example, rng, 2, task2)[0]) == ["f1", "f2"]


# -------------------------------------------------------------------- full sizes

M = 1e6
# recipe, argument, {parts: the paper's count}; parts are summed top-level parameters.
PAPER_COUNTS = [
    ("clap", "", {("audio",): 80.8 * M, ("text",): 110 * M}),   # CNN14 80.8M, BERT 110M
    # CLSP: 599M of SPEAR-XLarge (the Zipformer's spear-xlarge preset), 125M of
    # RoBERTa-base (with the heads), 724M in all.
    ("clsp", "stage=1", {("audio",): 599 * M, ("text", "text_head"): 125 * M,
                         ("audio", "audio_head", "text", "text_head", "logit_scale"): 724 * M}),
    ("clsp", "stage=2", {("audio",): 599 * M, ("text", "text_head"): 125 * M,
                         ("audio", "audio_head", "text", "text_head", "logit_scale"): 724 * M}),
]
# Towers whose count is a published checkpoint's (exact, from the presets' tests).
EXACT = [
    ("speech_clap", "", "text", 595_776_512),   # Qwen3-Embedding-0.6B
    ("acula", "", "text", 3_880_263_168),       # MedGemma-4B's text model
]


def _counts(name, arg):
  c = recipe(name, arg)
  return train.Trainer(c, sharding.make_mesh(c.mesh)).param_counts()


@pytest.mark.parametrize("name,arg,paper", PAPER_COUNTS)
def test_full_size_matches_the_paper_count(name, arg, paper):
  counts = _counts(name, arg)
  for parts, expected in paper.items():
    got = sum(counts[p] for p in parts)
    assert abs(got - expected) <= 0.05 * expected, (name, parts, got, expected)


@pytest.mark.parametrize("name,arg,part,expected", EXACT)
def test_full_size_published_towers(name, arg, part, expected):
  assert _counts(name, arg)[part] == expected


def test_full_size_slap_builds():
  counts = _counts("slap", "")
  # Qwen3-Embedding-8B: 7.57B parameters (its model card's count).
  assert abs(counts["text"] - 7.57e9) < 0.01 * 7.57e9, counts["text"]
  # The AudioMAE ViT-B encoder (85.x M) plus its 8-layer, 512-wide decoder.
  assert 105 * M < counts["audio"] < 115 * M, counts["audio"]


# ------------------------------------------------------------ loss options, refusals


def test_sigmoid_loss_option_trains(data_dir, tmp_path):
  c = recipe("speech_clap", "runlocal")
  configs.set_terms(c, sigmoid=1.0)
  c.model.logit_scale_init = float(np.log(10.0))   # SigLIP: t' = log 10, b = -10
  c.model.logit_bias_init = -10.0
  c.evals = {}
  _, _, rows = _train(c, data_dir, tmp_path / "sigmoid")
  _falls(rows)
  assert "logit_bias" in rows[-1] and rows[-1]["logit_bias"] != -10.0


@pytest.mark.parametrize("change,match", [
    (dict(info_nce=0.0, sigmoid=1.0), "logit_bias_init"),
    (dict(info_nce=0.0, multi_positive=1.0), "captions_per_clip"),
    (dict(softmax=1.0), "loss.terms"),
    (dict(info_nce=0.0), "no term"),
    (dict(multi_positive=1.0), "more than one contrastive"),
])
def test_contradictory_loss_settings_are_refused(change, match):
  c = recipe("speech_clap", "runlocal")
  c.loss.terms = {**c.loss.terms.to_dict(), **change}
  with pytest.raises(ValueError, match=match):
    train.Trainer(c, sharding.make_mesh(c.mesh))


def test_frozen_teacher_runs_in_bfloat16():
  """``model.text.dtype="bfloat16"`` (AcuLa's MedGemma teacher at full size) computes the
  text tower in bfloat16 while its parameters, the heads and the audio tower stay
  float32: the text embeddings move by bfloat16 rounding, the audio ones not at all."""
  import jax.numpy as jnp
  from jaxclap.models import two_towers
  c = recipe("acula", "runlocal")
  c.model.text.init = None
  c.model.text.update(hidden_size=32, depth=2, num_heads=2, mlp_dim=64)
  spec = jnp.asarray(np.random.default_rng(0).normal(size=(2, 96, 64)), jnp.float32)
  frames = jnp.array([96, 64])
  ids = jnp.array([[101, 2023, 2003, 102], [101, 7592, 102, 0]])
  mask = (ids > 0).astype(jnp.int32)
  f32 = two_towers.from_config(c.model)
  variables = f32.init(jax.random.PRNGKey(0), spec, frames, ids, mask)
  assert all(x.dtype == jnp.float32 for x in jax.tree_util.tree_leaves(variables))
  c.model.text.dtype = "bfloat16"
  bf16 = two_towers.from_config(c.model)
  a32, t32, _ = f32.apply(variables, spec, frames, ids, mask)
  a16, t16, _ = bf16.apply(variables, spec, frames, ids, mask)
  np.testing.assert_array_equal(np.asarray(a16), np.asarray(a32))
  err = float(jnp.abs(t16 - t32).max())
  assert 1e-5 < err < 5e-2, err
  c.model.text.dtype = "float16"
  with pytest.raises(ValueError, match="model.text.dtype"):
    two_towers.from_config(c.model).init(jax.random.PRNGKey(0), spec, frames, ids, mask)


def test_bad_recipe_settings_name_the_field(tmp_path):
  """Each refusal names the config field (or argument, or file) at fault."""
  with pytest.raises(ValueError, match=r"configs/clsp.py: stage='3'"):
    recipe("clsp", "stage=3")
  with pytest.raises(ValueError, match=r"configs/acula.py: unknown argument\(s\) \['lam'\]"):
    recipe("acula", "lam=1")
  with pytest.raises(FileNotFoundError, match="nope.py"):
    configs.load("nope")
  c = recipe("speech_clap", "runlocal")
  c.model.text.preset = "qwen3-embedding-4b"
  with pytest.raises(ValueError, match=r"model.text.preset='qwen3-embedding-4b'"):
    train.Trainer(c, sharding.make_mesh(c.mesh))
  c = recipe("acula", "runlocal")
  c.model.audio_head = dict(hidden=8)
  with pytest.raises(ValueError, match=r"model.audio_head: unknown field\(s\) \['hidden'\]"):
    train.Trainer(c, sharding.make_mesh(c.mesh))
  c = recipe("clsp", "runlocal,stage=2")
  c.init_from = str(tmp_path / "empty")
  with pytest.raises(FileNotFoundError, match=r"config.init_from=.*no checkpoint"):
    train.Trainer(c, sharding.make_mesh(c.mesh)).init_state(0)
  cfg = recipe("clsp", "runlocal,stage=2").input
  cfg.task_schedule = dict(p0=0.9, decay=3)
  with pytest.raises(ValueError, match=r"input.task_schedule: unknown key\(s\) \['decay'\]"):
    input_pipeline.train_dataset(cfg, None, global_batch_size=8)
  cfg.task_schedule, cfg.captions_per_clip = None, 1
  with pytest.raises(ValueError, match="input.captions_per_clip=2, not 1"):
    input_pipeline.train_dataset(cfg, None, global_batch_size=8)


def test_bad_evaluator_settings_name_the_field():
  """``config.evals`` is checked before anything trains: an unknown type or field, or a
  bad value, names ``config.evals.<name>.<field>``; ``config.eval`` holds only the
  defaults (``split``, ``batch_size``, ``templates``) an evaluator may override."""
  from jaxclap import evaluators
  c = recipe("clsp", "runlocal,stage=1")
  c.evals.zero_shot.split = "validation"
  got = {e.name: e for e in evaluators.build(c)}
  assert got["zero_shot"].split == "validation" and got["graded"].split == "test"
  assert got["retrieval_fine"].pool == "fine" and got["retrieval"].pool == "global"
  assert got["graded"].templates == tuple(c.eval.templates)
  assert got["multiclass"].batch_size == c.eval.batch_size and got["graded"].every == 0
  for change, match in [
      (lambda c: c.evals.update(oops=dict(type="zeroshot")),
       r"config.evals.oops.type='zeroshot'; use one of \['zero_shot', "),
      (lambda c: c.evals.retrieval.update(poll="fine"),
       r"config.evals.retrieval.poll: unknown field of type 'retrieval'"),
      (lambda c: c.evals.retrieval.update(templates=["{}"]),
       r"config.evals.retrieval.templates: unknown field"),
      (lambda c: c.evals.retrieval_fine.update(pool="coarse"),
       r"config.evals.retrieval_fine.pool='coarse'"),
      (lambda c: c.evals.graded.update(every=-5), r"config.evals.graded.every=-5"),
      (lambda c: c.eval.update(metrics=("zero_shot",)), r"config.eval.metrics: unknown field"),
  ]:
    c = recipe("clsp", "runlocal,stage=1")
    change(c)
    with pytest.raises(ValueError, match=match):
      evaluators.build(c)
