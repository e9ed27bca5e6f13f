"""The evaluation report's per-speaker breakdown (which voices fail) and ROC curves:
the numbers against a direct computation, and the figures and report.md that show them."""

import os

import numpy as np
import pytest

from jaxclap import evaluate, report
from jaxclap.corpus.records import BinaryTask, MultiClassTask

# Prompts on the axes of a 4-d space; a clip's embedding says what it sounds like.
_AXES = {"A man speaking.": 0, "A woman speaking.": 1, "A low voice.": 2, "A high voice.": 3}
_TASKS = {"binary": {"sex": BinaryTask("sex", ("male",), ("female",), "A man speaking.",
                                       "A woman speaking.")},
          "multiclass": {"pitch": MultiClassTask("pitch", ("low", "high"),
                                                 ("A low voice.", "A high voice."))},
          "graded": {}}


def _embed_text(texts):
  out = np.zeros((len(texts), 4))
  for i, t in enumerate(texts):
    out[i, _AXES[t]] = 1.0
  return out


def _clips(rng):
  """(embeddings, metadata, sounds-like): speaker s3 is heard as the other sex on two of
  his four clips; s2's high clips sound low; one clip names no speaker."""
  meta, heard = [], []
  for spk, sex, n in (("s1", "male", 3), ("s2", "female", 5), ("s3", "male", 4)):
    for k in range(n):
      pitch = "low" if k % 2 == 0 else "high"
      meta.append({"speaker": spk, "sex": sex, "pitch": pitch})
      heard_sex = ("female" if sex == "male" else "male") if spk == "s3" and k < 2 else sex
      heard.append((heard_sex, "low" if spk == "s2" else pitch))
  meta.append({"sex": "male", "pitch": "low"})                 # no speaker
  heard.append(("male", "low"))
  meta.append({"speaker": "s1", "pitch": "low"})               # not labelled for sex
  heard.append(("male", "low"))
  emb = np.array([[s == "male", s == "female", p == "low", p == "high"] for s, p in heard],
                 float) + 0.01 * rng.standard_normal((len(heard), 4))
  return emb / np.linalg.norm(emb, axis=1, keepdims=True), meta


def test_per_speaker_counts_each_voices_calls():
  emb, meta = _clips(np.random.default_rng(0))
  ps = evaluate.per_speaker(emb, meta, _TASKS, _embed_text, ("{}",))
  assert ps["key"] == "speaker"
  sex, pitch = ps["tasks"]["sex"], ps["tasks"]["pitch"]
  assert sex["kind"] == "binary" and sex["chance"] == 0.5 and pitch["chance"] == 0.5
  assert sex["speakers"] == {"s1": {"clips": 3, "correct": 3}, "s2": {"clips": 5, "correct": 5},
                             "s3": {"clips": 4, "correct": 2}}
  # s2's two high clips are heard low; s1 has a 4th (unlabelled-for-sex) low clip.
  assert pitch["speakers"] == {"s1": {"clips": 4, "correct": 4}, "s2": {"clips": 5, "correct": 3},
                               "s3": {"clips": 4, "correct": 4}}
  # The same calls zero-shot scores: per-speaker correct sums to its accuracy (the clip
  # without a speaker is the one the breakdown leaves out, and it is called right).
  zs = evaluate.zero_shot(emb, meta, _TASKS["binary"], _embed_text, ("{}",))
  assert sum(c["correct"] for c in sex["speakers"].values()) + 1 == \
      round(zs["accuracy"]["sex"] * zs["counts"]["sex"]["clips"])
  assert report.worst_speakers(pitch, 2) == [("s2", 3, 5), ("s1", 4, 4)]
  assert evaluate.per_speaker(emb, [{"sex": m.get("sex")} for m in meta], _TASKS,
                              _embed_text, ("{}",)) is None   # no speaker key
  voices = [dict(m, voice_id=m.pop("speaker")) if "speaker" in m else m for m in
            [dict(m) for m in meta]]
  assert evaluate.per_speaker(emb, voices, _TASKS, _embed_text, ("{}",))["key"] == "voice_id"


def test_linear_probe_roc_curve_is_its_auroc():
  rng = np.random.default_rng(1)
  y = rng.integers(0, 2, 200)
  x = rng.standard_normal((200, 8)) + 0.8 * y[:, None]
  r = evaluate.linear_probe(x[:120], y[:120], x[120:], y[120:])
  fpr, tpr = np.asarray(r["roc"]["fpr"]), np.asarray(r["roc"]["tpr"])
  assert fpr[0] == tpr[0] == 0 and fpr[-1] == tpr[-1] == 1 and np.all(np.diff(fpr) >= 0)
  assert np.trapezoid(tpr, fpr) == pytest.approx(r["auroc"], abs=1e-12)
  multi = evaluate.linear_probe(x[:120], y[:120] + (x[:120, 0] > 1), x[120:],
                                y[120:] + (x[120:, 0] > 1))
  assert "roc" not in multi   # one-vs-rest macro AUROC: no single curve


def test_report_shows_the_worst_voices_and_roc(tmp_path):
  """~2 s (matplotlib)."""
  import matplotlib.image
  emb, meta = _clips(np.random.default_rng(0))
  rng = np.random.default_rng(1)
  y = rng.integers(0, 2, 60)
  x = rng.standard_normal((60, 4)) + y[:, None]
  results = {"zero_shot": {"sex": 0.9}, "zero_shot_counts": {"sex": {"clips": 13, "positive": 8}},
             "linear_probe": {"sex": evaluate.linear_probe(x[:40], y[:40], x[40:], y[40:])},
             "per_speaker": evaluate.per_speaker(emb, meta, _TASKS, _embed_text, ("{}",))}
  out = report.write(str(tmp_path), results, title="t")
  files = set(os.listdir(tmp_path))
  assert {"speakers_sex.png", "speakers_pitch.png", "roc_linear_probe.png"} <= files
  for f in ("speakers_sex.png", "roc_linear_probe.png"):
    assert matplotlib.image.imread(str(tmp_path / f)).ndim == 3
  md = open(out).read()
  assert "Worst voices (by `speaker`" in md
  assert "- `sex`: s3 2/4, s2 5/5, s1 3/3" in md   # ties: more clips first and "- `pitch`: s2 3/5," in md
  assert "![sex: which voices fail (speaker)](speakers_sex.png)" in md
  assert "![linear_probe ROC curves](roc_linear_probe.png)" in md


def test_a_built_corpus_benchmark_breaks_down_by_speaker(tmp_path):
  """CREMA-D's fake download with the tone model whose answers are known: test actor
  1009's happy clip and 1010's sad clip are recorded in the angry tone, so each has one
  emotion wrong and every sex right. ~6 s."""
  import sys
  sys.path.insert(0, os.path.dirname(__file__))
  import test_benchmarks as tb

  path = tb._crema_path(tmp_path, wrong={(1010, "sad"), (1009, "happy")})
  r = evaluate.run_benchmark(tb._crema_model(), "crema_d", path)
  ps = r["per_speaker"]
  assert ps["key"] == "speaker"
  assert ps["tasks"]["emotion"]["speakers"] == {"1009": {"clips": 3, "correct": 2},
                                                "1010": {"clips": 3, "correct": 2}}
  assert ps["tasks"]["sex"]["speakers"] == {"1009": {"clips": 3, "correct": 3},
                                            "1010": {"clips": 3, "correct": 3}}
  assert evaluate.speaker_breakdown(tb._crema_model(), path, "test") == ps
  assert r["linear_probe"]["sex"]["roc"]["tpr"][-1] == 1.0
