"""Zero-shot and retrieval metrics on hand-built embeddings with known answers."""

import os
import re
from types import SimpleNamespace

import jax
import numpy as np
import pytest

from jaxclap import evaluate


def test_retrieval_ranks():
  # Caption i is closest to clip perm[i]; ranks are known exactly.
  a = np.eye(4)
  t = np.array([[1, 0, 0, 0], [0, 0.5, 1, 0], [0, 0.9, 0.5, 0], [0, 0, 0, 1.0]])
  r = evaluate.retrieval(a, t, ks=(1, 2))
  # text->audio: caption 0 -> clip 0 rank 1; caption 1 -> clip 1 has 0.5, clip 2 has 1: rank 2;
  # caption 2 -> clip 2 (0.5) vs clip 1 (0.9): rank 2; caption 3 rank 1 (clip 1 has 0.5).
  assert r["text_to_audio/R@1"] == 0.5 and r["text_to_audio/R@2"] == 1.0
  assert r["text_to_audio/mAP@10"] == pytest.approx((1 + 0.5 + 0.5 + 1) / 4)
  assert r["chance/R@1"] == 0.25
  # Ties count in expectation over their order. Captions 0 and 1 are the same text:
  # text->audio, caption 1 has clip 0 above its clip and ties with clips 1-3 (rank 2, 3
  # or 4); audio->text, clip 0 ties its caption with caption 1 (rank 1 or 2), and clip 1
  # scores every caption 0 (rank 1-4).
  t2 = np.array([[1, 0, 0, 0], [1, 0, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1.0]])
  r2 = evaluate.retrieval(a, t2, ks=(1, 2))
  assert r2["text_to_audio/R@1"] == pytest.approx(3 / 4)
  assert r2["text_to_audio/R@2"] == pytest.approx((3 + 1 / 3) / 4)
  assert r2["text_to_audio/mAP@10"] == pytest.approx((3 + (1 / 2 + 1 / 3 + 1 / 4) / 3) / 4)
  assert r2["audio_to_text/R@1"] == pytest.approx((1 / 2 + 1 / 4 + 2) / 4)
  assert r2["audio_to_text/R@2"] == pytest.approx((1 + 1 / 2 + 2) / 4)
  assert r2["audio_to_text/mAP@10"] == pytest.approx(
      ((1 + 1 / 2) / 2 + (1 + 1 / 2 + 1 / 3 + 1 / 4) / 4 + 2) / 4)
  tied = evaluate.retrieval(np.ones((3, 2)), np.ones((3, 2)), ks=(1, 2, 5))
  assert tied["audio_to_text/R@1"] == pytest.approx(1 / 3)   # chance, not 0% or 100%
  assert tied["audio_to_text/R@2"] == pytest.approx(2 / 3)
  assert tied["audio_to_text/R@5"] == 1.0
  assert tied["text_to_audio/mAP@10"] == pytest.approx((1 + 1 / 2 + 1 / 3) / 3)


def test_zero_shot_balanced_accuracy():
  task = SimpleNamespace(key="pitch_level", positive=("high",), negative=("low",),
                         positive_prompt="high", negative_prompt="low")
  meta = [{"pitch_level": v} for v in ["high"] * 2 + ["low"] * 8 + ["mid", None]]
  # Clips 0-1 point at the "high" prototype; of the low ones, 6 point at "low", 2 wrongly at "high".
  a = np.array([[1, 0]] * 2 + [[0, 1]] * 6 + [[1, 0]] * 2 + [[1, 0], [0, 1]], float)
  embed = lambda texts: np.array([[1.0, 0.0] if "high" in t else [0.0, 1.0] for t in texts])
  z = evaluate.zero_shot(a, meta, {"pitch": task}, embed, templates=("{}", "say {}"))
  assert z["counts"]["pitch"] == {"clips": 10, "positive": 2}       # mid / None left out
  assert z["accuracy"]["pitch"] == pytest.approx(0.8)
  assert z["balanced_accuracy"]["pitch"] == pytest.approx((1.0 + 0.75) / 2)
  table = evaluate.format_table({"zero_shot": z["balanced_accuracy"],
                                 "zero_shot_accuracy": z["accuracy"],
                                 "zero_shot_counts": z["counts"],
                                 "zero_shot_mean": 0.875, "retrieval": {"x/R@1": 0.5}})
  assert "87.5%" in table and "pitch" in table


def test_prototype_ensembles_average_phrasings():
  table = {"a": [1.0, 0.0], "b": [0.0, 1.0]}
  embed = lambda texts: np.array([table[t[-1]] for t in texts])
  one = evaluate.prototypes(embed, "a", ("{}",))
  both = evaluate.prototypes(embed, ("a", "b"), ("{}", "x {}"))
  assert np.allclose(one, [1, 0])
  assert np.allclose(both, [np.sqrt(0.5), np.sqrt(0.5)])   # mean of both, re-normalised


def _pitch_task():
  return SimpleNamespace(key="pitch_level", positive=("high",), negative=("low",),
                         positive_prompt="high", negative_prompt="low")


def test_zero_shot_f1_of_the_positive_side():
  # 4 high clips: 3 found, 1 missed; 6 low: 4 right, 2 called high.
  meta = [{"pitch_level": v} for v in ["high"] * 4 + ["low"] * 6]
  a = np.array([[1, 0]] * 3 + [[0, 1]] + [[0, 1]] * 4 + [[1, 0]] * 2, float)
  embed = lambda texts: np.array([[1.0, 0.0] if "high" in t else [0.0, 1.0] for t in texts])
  z = evaluate.zero_shot(a, meta, {"pitch": _pitch_task()}, embed, templates=("{}",))
  # positive side: precision 3/5, recall 3/4 -> F1 = 2*3 / (2*3 + 2 + 1) = 2/3;
  # negative side: precision 4/5, recall 4/6 -> F1 = 2*4 / (2*4 + 1 + 2) = 8/11.
  assert z["f1"]["pitch"] == pytest.approx(2 / 3)
  assert z["macro_f1"]["pitch"] == pytest.approx((2 / 3 + 8 / 11) / 2)


def _one_hot_embed(classes):
  """Prompt text -> the one-hot of the class word it contains (a fake text tower)."""
  def embed(texts):
    return np.array([[float(c in t) for c in classes] for t in texts])
  return embed


def test_zero_shot_multiclass_weighted_and_unweighted_accuracy():
  classes = ("child", "adult", "elderly")
  task = SimpleNamespace(key="age", classes=classes,
                         prompts=("a child", ("an adult", "a grown-up adult"), "elderly"))
  # Skewed: 8 adults (all right), 2 children (1 right, 1 called adult), 1 elderly (called
  # child); and clips outside the task (None, "varies").
  truth = ["adult"] * 8 + ["child"] * 2 + ["elderly", None, "varies"]
  said = ["adult"] * 8 + ["child", "adult"] + ["child", "adult", "adult"]
  a = np.eye(3)[[classes.index(c) for c in said]]
  r = evaluate.zero_shot_multiclass(a, [{"age": v} for v in truth], {"age": task},
                                    _one_hot_embed(classes), templates=("{}", "say {}"))
  r = r["age"]
  assert r["clips"] == 11 and r["classes"] == {"child": 2, "adult": 8, "elderly": 1}
  assert r["WA"] == pytest.approx(9 / 11)                    # dominated by the adults
  assert r["UA"] == pytest.approx((1 / 2 + 8 / 8 + 0 / 1) / 3)
  # F1 per class: child P 1/2 R 1/2 -> 1/2; adult P 8/9 R 1 -> 16/17; elderly 0.
  assert r["macro_f1"] == pytest.approx((0.5 + 16 / 17 + 0) / 3)
  # A class no clip has is not averaged into UA; nothing labelled -> task left out.
  only_adults = evaluate.zero_shot_multiclass(a[:8], [{"age": "adult"}] * 8, {"age": task},
                                              _one_hot_embed(classes), ("{}",))
  assert only_adults["age"]["UA"] == 1.0
  assert evaluate.zero_shot_multiclass(a, [{}] * 13, {"age": task},
                                       _one_hot_embed(classes)) == {}


def test_linear_probe_separates_gaussians_and_not_shuffled_labels():
  rng = np.random.default_rng(0)
  def gaussians(n):
    y = rng.integers(0, 2, n)
    x = rng.normal(size=(n, 8))
    x[:, 0] += 3.0 * y          # the classes differ along one axis only
    return x, y
  (xtr, ytr), (xte, yte) = gaussians(400), gaussians(2000)
  r = evaluate.linear_probe(xtr, ytr, xte, yte)
  assert r["auroc"] > 0.95 and r["accuracy"] > 0.85
  assert r["train"] == 400 and r["test"] == 2000 and r["test_dropped"] == 0
  # Independently: sklearn's own metrics of the same predictions.
  from sklearn.linear_model import LogisticRegression
  from sklearn.metrics import f1_score
  from sklearn.preprocessing import StandardScaler
  sc = StandardScaler().fit(xtr)
  pred = LogisticRegression(max_iter=2000).fit(sc.transform(xtr), ytr).predict(sc.transform(xte))
  assert r["f1"] == pytest.approx(f1_score(yte, pred))
  assert evaluate.linear_probe(xtr, ytr, xte, yte) == r       # deterministic
  shuffled = evaluate.linear_probe(xtr, rng.permutation(ytr), xte, yte)
  assert abs(shuffled["auroc"] - 0.5) < 0.06
  assert evaluate.linear_probe(xtr, np.zeros(400, int), xte, yte) is None   # one class


def test_linear_probe_multiclass_auroc_is_one_vs_rest_macro():
  rng = np.random.default_rng(1)
  centres = np.eye(3, 6) * 4.0
  def blobs(labels):
    return centres[labels] + rng.normal(size=(len(labels), 6))
  ytr, yte = np.repeat([0, 1, 2], 100), np.repeat([0, 1, 2], 200)
  r = evaluate.linear_probe(blobs(ytr), np.array(["a", "b", "c"])[ytr], blobs(yte),
                            np.array(["a", "b", "c"])[yte])
  assert r["auroc"] > 0.95 and r["balanced_accuracy"] > 0.85
  assert r["f1"] == r["macro_f1"]
  # Test rows of a class the probe never saw are dropped; a class the test rows lack
  # leaves the one-vs-rest mean over the others.
  yte2 = np.array([0] * 50 + [1] * 50 + [3] * 5)
  r2 = evaluate.linear_probe(blobs(ytr), ytr, blobs(np.minimum(yte2, 2)), yte2)
  assert r2["test"] == 100 and r2["test_dropped"] == 5 and r2["auroc"] > 0.95


def test_correlations_monotone_nonlinear():
  x = np.arange(1.0, 11.0)
  y = np.exp(x)                       # monotone, far from linear
  c = evaluate.correlations(x, y)
  assert c["spearman"] == pytest.approx(1.0) and c["kendall"] == pytest.approx(1.0)
  assert 0.5 < c["pearson"] < 0.9
  assert c["n"] == 10 and c["spearman_p"] < 1e-3 and c["kendall_p"] < 1e-3
  # Kendall's tau on a hand-counted case: pairs of (1,2,3,4) vs (1,3,2,4): 5 concordant,
  # 1 discordant -> (5 - 1) / 6.
  assert evaluate.correlations([1, 2, 3, 4], [1, 3, 2, 4])["kendall"] == pytest.approx(4 / 6)
  assert evaluate.correlations([-1, -2, -3], [1, 2, 3])["pearson"] == pytest.approx(-1.0)
  flat = evaluate.correlations([1, 1, 1, 1], [1, 2, 3, 4])
  assert np.isnan(flat["pearson"]) and np.isnan(flat["kendall_p"])


def test_graded_correlates_prompt_similarity_with_measured_values():
  # Clip i leans towards "high" by an angle that grows with its pitch (monotone, not
  # linear in the cosine); whispers have no pitch, a changing clip is left out.
  pitch = [-6.0, -4.0, -1.0, 0.5, 3.0, 5.0]
  angles = np.interp(pitch, [-6, 6], [np.pi / 2 - 0.1, 0.1])
  a = 3.0 * np.stack([np.cos(angles), np.sin(angles)], 1)   # not unit length: cosine anyway
  meta = [{"pitch_st": p, "pitch_level": "x"} for p in pitch]
  meta += [{"pitch_st": None}, {"pitch_st": float("nan")}, {"pitch_st": 9.0, "pitch_level": "varies"}]
  a = np.concatenate([a, [[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]])
  embed = lambda texts: np.array([[1.0, 0.0] if "high" in t else [0.0, 1.0] for t in texts])
  tasks = {"pitch": SimpleNamespace(key="pitch_st", prompt="high", negative_prompt=None,
                                    exclude=(("pitch_level", "varies"),)),
           "pitch_diff": SimpleNamespace(key="pitch_st", prompt="high", negative_prompt="low",
                                         exclude=(("pitch_level", "varies"),)),
           "absent": SimpleNamespace(key="rate_wpm", prompt="high")}
  g = evaluate.graded(a, meta, tasks, embed, templates=("{}",))
  assert set(g) == {"pitch", "pitch_diff"}
  for r in g.values():
    assert r["n"] == 6 and r["spearman"] == pytest.approx(1.0) and r["kendall"] == pytest.approx(1.0)
  score = np.cos(angles)
  assert g["pitch"]["pearson"] == pytest.approx(np.corrcoef(score, pitch)[0, 1])


def test_format_table_prints_the_sections_present():
  results = {
      "multiclass": {"age": {"WA": 0.5, "UA": 0.25, "macro_f1": 0.2, "clips": 10,
                             "classes": {"a": 5, "b": 5}}},
      "graded": {"pitch_st": {"pearson": 0.5, "spearman": 0.6, "kendall": 0.4, "n": 7}},
      "linear_probe": {"gender": {"accuracy": 0.9, "balanced_accuracy": 0.8, "f1": 0.7,
                                  "auroc": 0.95, "train": 40, "test": 30}},
  }
  table = evaluate.format_table(results)
  assert "zero-shot (binary" not in table and "retrieval" not in table
  assert "25.0%" in table and "+0.600" in table and "0.950" in table and "40/30" in table


def test_corpus_task_tables_name_metadata_values():
  """The embedded corpus's multi-class and graded tasks refer to metadata keys and values
  the corpus writes (speech_tasks.py lives outside the plan hash's reach)."""
  from jaxclap.corpus import speech_corpus, speech_tasks
  for name, task in speech_tasks.MULTICLASS_TASKS.items():
    assert len(task.classes) == len(task.prompts) >= 2, name
  assert speech_tasks.MULTICLASS_TASKS["age_group"].classes == ("child", "young adult", "elderly")
  assert set(speech_tasks.MULTICLASS_TASKS["quality"].classes) == {
      v.quality for v in speech_corpus.VARIANTS.values()}
  assert {t.key for t in speech_tasks.GRADED_TASKS.values()} == {
      "pitch_st", "rate_wpm", "loudness_dbfs"}
  assert not set(speech_tasks.MULTICLASS_TASKS) & set(speech_corpus.BINARY_TASKS)


# --------------------------------------------- a constant and a NaN model: chance or an error

# 12 clips: binary pitch high/low (6/6), a 3-class age task (4/4/4), a graded value.
_CLASSES = ("child", "adult", "elderly")
_META = [{"pitch_level": ("high", "low")[i % 2], "age": _CLASSES[i % 3], "pitch_st": float(i)}
         for i in range(12)]
_TASKS = {"binary": {"pitch": _pitch_task()},
          "multiclass": {"age": SimpleNamespace(key="age", classes=_CLASSES,
                                                prompts=("a child", "an adult", "elderly"))},
          "graded": {"pitch_st": SimpleNamespace(key="pitch_st", prompt="high",
                                                 negative_prompt="low")}}


def _model_outputs(kind):
  """(audio [12, 4], caption [12, 4] embeddings, embed_text) of a constant model (every
  input -> one unit vector) or a NaN one (NaN rows, as a diverged model gives)."""
  if kind == "constant":
    row = np.full(4, 0.5)
  else:
    row = np.full(4, np.nan)
  embed_text = lambda texts: np.tile(row, (len(texts), 1))
  return np.tile(row, (12, 1)), np.tile(row, (12, 1)), embed_text


def test_every_metric_gives_a_constant_model_chance():
  audio, text, embed = _model_outputs("constant")
  r = evaluate.retrieval(audio, text, split="test")
  for way in ("text_to_audio", "audio_to_text"):
    assert r[f"{way}/R@1"] == pytest.approx(r["chance/R@1"]) == pytest.approx(1 / 12)
    assert r[f"{way}/R@5"] == pytest.approx(5 / 12) and r[f"{way}/R@10"] == pytest.approx(10 / 12)
    assert r[f"{way}/mAP@10"] == pytest.approx(sum(1 / k for k in range(1, 11)) / 12)
  z = evaluate.zero_shot(audio, _META, _TASKS["binary"], embed, split="test")
  assert z["balanced_accuracy"]["pitch"] == 0.5
  m = evaluate.zero_shot_multiclass(audio, _META, _TASKS["multiclass"], embed, split="test")
  assert m["age"]["UA"] == pytest.approx(1 / 3) and m["age"]["WA"] == pytest.approx(1 / 3)
  g = evaluate.graded(audio, _META, _TASKS["graded"], embed, split="test")
  assert g["pitch_st"]["n"] == 12
  assert all(np.isnan(g["pitch_st"][k]) for k in ("pearson", "spearman", "kendall"))
  labels = [i % 2 for i in range(12)]
  p = evaluate.linear_probe(audio, labels, audio, labels, split="test", train_split="validation")
  assert p["balanced_accuracy"] == 0.5 and p["auroc"] == 0.5


def test_every_metric_refuses_a_nan_model_naming_split_and_rows():
  audio, text, embed = _model_outputs("nan")
  finite_audio = _model_outputs("constant")[0]
  one_bad = finite_audio.copy()
  one_bad[[3, 7]] = np.inf
  calls = {
      "retrieval": lambda: evaluate.retrieval(audio, text, split="test"),
      "zero_shot": lambda: evaluate.zero_shot(audio, _META, _TASKS["binary"], embed,
                                              split="test"),
      "multiclass": lambda: evaluate.zero_shot_multiclass(audio, _META, _TASKS["multiclass"],
                                                          embed, split="test"),
      "graded": lambda: evaluate.graded(audio, _META, _TASKS["graded"], embed, split="test"),
      "linear_probe": lambda: evaluate.linear_probe(finite_audio, [i % 2 for i in range(12)],
                                                    audio, [0, 1] * 6, split="test"),
  }
  for name, call in calls.items():
    with pytest.raises(evaluate.NonFiniteError, match=rf"^{name} on split 'test': .*"
                       r"12 of 12 .*non-finite"):
      call()
  # Two bad rows of twelve are counted; a NaN text tower (prompts) is named by its task.
  with pytest.raises(evaluate.NonFiniteError, match=r"text embeddings: 2 of 12 captions"):
    evaluate.retrieval(finite_audio, one_bad, split="test")
  with pytest.raises(evaluate.NonFiniteError, match=r"zero_shot task 'pitch' on split 'x': "
                     r"text embeddings of 'high'"):
    evaluate.zero_shot(finite_audio, _META, _TASKS["binary"], embed, split="x")
  with pytest.raises(evaluate.NonFiniteError, match="graded task 'pitch_st'"):
    evaluate.graded(finite_audio, _META, _TASKS["graded"], embed)
  with pytest.raises(evaluate.NonFiniteError, match=r"linear_probe on split 'val': train"):
    evaluate.linear_probe(one_bad, [0, 1] * 6, finite_audio, [0, 1] * 6, train_split="val")
  with pytest.raises(evaluate.NonFiniteError, match="1 of 3 values"):
    evaluate.correlations([1.0, np.nan, 2.0], [1, 2, 3])
  assert issubclass(evaluate.NonFiniteError, ValueError)


def _evaluators():
  """Every evaluator type of ``jaxclap.evaluators`` on one split, as config.evals builds it."""
  import ml_collections
  from jaxclap import evaluators
  c = ml_collections.ConfigDict({
      "eval": {"split": "test", "batch_size": 4},
      "evals": {"zs": {"type": "zero_shot"}, "mc": {"type": "multiclass"},
                "ret": {"type": "retrieval"}, "gr": {"type": "graded"},
                "lp": {"type": "linear_probe", "train_split": "test"}}})
  built = evaluators.build(c)
  # "benchmark" reads a corpus of its own: tests/test_benchmarks.py
  assert sorted(e.kind for e in built) == sorted(set(evaluators.REGISTRY) - {"benchmark"})
  return built


@pytest.mark.parametrize("kind", ["constant", "nan"])
def test_every_evaluator_gives_chance_or_refuses(kind):
  """The evaluator layer (``Evaluator.run``, what a training run's rounds call) on the
  embeddings of a constant and of a NaN model: chance numbers, or NonFiniteError; never
  a number computed from NaN."""
  from jaxclap import evaluators
  audio, text, embed = _model_outputs(kind)
  emb = {"test": {"audio": audio, "text_global": text}}
  ctx = evaluators._Context(_TASKS, lambda split: _META, embed)
  for e in _evaluators():
    if kind == "nan":
      with pytest.raises(evaluate.NonFiniteError, match=r"12 of 12 .*non-finite"):
        e.run(emb, ctx)
      continue
    out = e.run(emb, ctx)[""]
    if e.kind == "zero_shot":
      assert out == {"pitch": 0.5}
    elif e.kind == "multiclass":
      assert out["age"]["UA"] == pytest.approx(1 / 3)
    elif e.kind == "retrieval":
      assert out["text_to_audio/R@1"] == out["audio_to_text/R@1"] == pytest.approx(1 / 12)
    elif e.kind == "graded":
      assert np.isnan(out["pitch_st"]["spearman"])
      assert "graded" not in str(evaluators.scalars({"gr": out}))   # NaN never logged
    else:
      assert out["pitch"]["balanced_accuracy"] == 0.5 and out["age"]["balanced_accuracy"] == \
          pytest.approx(1 / 3)


# ------------------------------------------------------------- evaluators on a real run


@pytest.fixture(scope="module")
def two_step_run(tmp_path_factory):
  """The demo's runlocal model after two steps on the embedded corpus, its retrieval
  evaluated after every step."""
  from jaxclap import configs, train
  c = configs.load("demo", "runlocal,steps=2")
  c.corpus.data_dir = str(tmp_path_factory.mktemp("datasets"))
  c.log_every = 1
  c.evals = dict(retrieval=dict(type="retrieval", every=1))
  workdir = str(tmp_path_factory.mktemp("run"))
  state, results = train.train_and_evaluate(c, workdir)
  return c, state, workdir, results


@pytest.fixture(scope="module")
def run_evaluators(two_step_run):
  """The run's ``evaluators.Evaluators``, built as train.py builds them (one, so the
  tests share its compiled embedding functions)."""
  from jaxclap import evaluators, sharding, tokenizers, train
  c = two_step_run[0]
  return evaluators.Evaluators(c, train.Trainer(c, sharding.make_mesh(c.mesh)),
                               tokenizers.from_config(c.tokenizer))


def test_evaluators_run_during_training(two_step_run):
  """An evaluator with ``every`` runs during training and at the end: its metrics, keyed
  by its name, join that step's metrics.jsonl row (and TensorBoard); the end's results go
  to results.json."""
  import json
  import os
  c, _, workdir, results = two_step_run
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  assert [r["step"] for r in rows] == [1, 2] and all("loss" in r for r in rows)
  assert all(0 <= r["retrieval/text_to_audio/R@1"] <= 1 for r in rows)
  assert set(results) == {"retrieval", "clips"} and results["clips"] == {"test": 35}
  with open(os.path.join(workdir, "results.json")) as f:
    assert json.load(f) == results
  assert rows[-1]["retrieval/audio_to_text/mAP@10"] == results["retrieval"]["audio_to_text/mAP@10"]
  assert os.listdir(os.path.join(workdir, "tensorboard"))


def test_evaluation_embeds_clips_as_the_api_does(two_step_run, run_evaluators):
  """Evaluation's audio embeddings of the test split are ``jaxclap.load(workdir)
  .embed_audio``'s of the same clips: clips longer than the 3 s window are cut into
  half-window-hop windows and pooled by both, not cropped to their first window."""
  import jaxclap
  from jaxclap.corpus import records
  c, state, workdir, _ = two_step_run
  got = run_evaluators.embed_split(state.variables(), "test")["audio"]
  src = records.open_split(c.input.sources[0]["path"], "test")
  waves = [records.decode(src[i])["audio"] for i in range(len(src))]
  window = int(c.input.clip_seconds * c.input.sample_rate)
  long = [i for i, w in enumerate(waves) if len(w) > window]
  assert len(long) >= 3 and max(len(w) for w in waves) > 1.5 * window   # 3+ windows
  api = jaxclap.load(workdir)
  np.testing.assert_allclose(got, api.embed_audio(waves), rtol=0, atol=2e-5)
  first = api.embed_audio([waves[i][:window] for i in long])   # what evaluation did before
  assert np.abs(first - got[long]).max() > 1e-3


def test_zero_shot_evaluator_breaks_down_by_voice_for_the_report(two_step_run, tmp_path):
  """A zero_shot round also counts each voice's calls (``<name>_per_speaker``: the calls
  it scored, so the clips per task add up to its counts), which stays out of the logged
  scalars and is what the run's report plots, with nothing embedded again."""
  import copy
  from jaxclap import evaluators, sharding, tokenizers, train
  c, state, workdir, _ = two_step_run
  c = copy.deepcopy(c)
  with c.unlocked():
    c.evals = {"zs": dict(type="zero_shot", every=0)}
  ev = evaluators.Evaluators(c, train.Trainer(c, sharding.make_mesh(c.mesh)),
                             tokenizers.from_config(c.tokenizer))
  results = ev.run(state.variables(), int(c.total_steps))
  ps = results["zs_per_speaker"]
  assert ps["key"] == "voice_id" and set(ps["tasks"]) == set(results["zs"])
  for task, t in ps["tasks"].items():
    assert sum(v["clips"] for v in t["speakers"].values()) == results["zs_counts"][task]["clips"]
    assert len(t["speakers"]) > 1
  assert not [k for k in evaluators.scalars(results) if "per_speaker" in k]
  calls = []
  real = evaluate.per_speaker
  try:
    evaluate.per_speaker = lambda *a, **k: calls.append(1)
    out = evaluate.report_run(str(tmp_path), c, results, model=ev._model(state.variables()))
  finally:
    evaluate.per_speaker = real
  assert not calls and any(f.startswith("speakers_") for f in os.listdir(tmp_path / "report"))
  assert "Worst voices" in open(out).read()


def test_evaluators_refuse_a_nan_model(two_step_run, run_evaluators):
  """A round of the run's evaluators on a NaN model (what ``--config.optim.lr=1e30``
  left, whose results.json said R@1 = 100%): NonFiniteError, no result."""
  c, state, _, _ = two_step_run
  nan = jax.tree_util.tree_map(lambda x: x * np.nan, state.variables())
  with pytest.raises(evaluate.NonFiniteError, match=r"window embeddings: (\d+) of \1 windows"):
    run_evaluators.run(nan, int(c.total_steps))


def test_data_argument_names_the_corpora_and_their_weights(tmp_path):
  from jaxclap import configs
  c = configs.load("demo", f"runlocal,data={tmp_path}/a/1.0.0@0.7+~/b@0.3")
  assert [dict(s) for s in c.input.sources] == [
      dict(path=f"{tmp_path}/a/1.0.0", split="train", weight=0.7),
      dict(path=os.path.expanduser("~/b"), split="train", weight=0.3)]
  assert {e["type"] for e in c.evals.values()} == {"zero_shot", "multiclass", "graded",
                                                    "retrieval"}
  assert configs.load("demo", "data=gs://bucket/c").input.sources[0]["path"] == "gs://bucket/c"
  assert configs.load("demo", "runlocal").input.sources[0]["path"] == "@corpus"
  for arg, msg in (("data=", "takes a value"), ("data", "takes a value"),
                   ("data=/a@x", "weight 'x' of /a is not a number"),
                   ("data=/a@0", "must be > 0"), ("data=/a+@1", "corpus 2 has no path")):
    with pytest.raises(ValueError, match=re.escape(msg)):
      configs.load("demo", arg)


def test_table_of_a_corpus_without_tasks_says_what_ran():
  tasks = {"binary": {}, "multiclass": {}, "graded": {}}
  table = evaluate.format_table(
      {"retrieval": {"text_to_audio/R@1": 0.5},
       "skipped": {"zero_shot": "the corpus declares no binary task (its tasks.json)"}},
      tasks=tasks)
  assert "nan" not in table
  assert "zero_shot: not run: the corpus declares no binary task" in table
  assert "no tasks (evaluated by retrieval)" in table and "50.0%" in table
  empty = evaluate.format_table({"zero_shot": {}, "zero_shot_accuracy": {},
                                 "zero_shot_counts": {}, "zero_shot_mean": float("nan")})
  assert "nan" not in empty and "no clip of the split is labelled" in empty
