"""Zero-shot and retrieval metrics on hand-built embeddings with known answers."""

from types import SimpleNamespace

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
  # Ties count against the model.
  tied = evaluate.retrieval(np.ones((3, 2)), np.ones((3, 2)), ks=(1,))
  assert tied["audio_to_text/R@1"] == 0.0


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
                                 "zero_shot_accuracy": z["accuracy"], "counts": z["counts"],
                                 "zero_shot_mean": 0.875, "retrieval": {"x/R@1": 0.5}})
  assert "87.5%" in table and "pitch" in table


def test_prototype_ensembles_average_phrasings():
  table = {"a": [1.0, 0.0], "b": [0.0, 1.0]}
  embed = lambda texts: np.array([table[t[-1]] for t in texts])
  one = evaluate.prototypes(embed, "a", ("{}",))
  both = evaluate.prototypes(embed, ("a", "b"), ("{}", "x {}"))
  assert np.allclose(one, [1, 0])
  assert np.allclose(both, [np.sqrt(0.5), np.sqrt(0.5)])   # mean of both, re-normalised
