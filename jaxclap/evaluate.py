"""Evaluation on a held-out split: zero-shot binary attributes and retrieval.

* Zero-shot (SLAP's protocol): each binary task is a pair of antonym descriptions
  ("a high-pitched voice" / "a low-pitched voice", never a negation), each put through
  several prompt templates; the text embeddings of one side are averaged (then
  re-normalised) into a class prototype, and a clip is assigned the nearer prototype.
  Only clips whose metadata puts them on one side take part (a "mid" pitch is neither).
* Retrieval: each clip's first caption as the query / target; text->audio and
  audio->text R@1/5/10 and mAP@10 (one relevant item per query, so AP = 1/rank).

The trainer's ``evaluate_model`` returns ``{"zero_shot": {task: balanced accuracy},
"zero_shot_accuracy": {task: plain accuracy}, "zero_shot_mean": ..., "retrieval":
{metric: value}, "counts": {...}}``; ``format_table`` prints it.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import numpy as np

from jaxclap.data import records

# Prompts are whole sentences ("A man speaking."); templates wrap them.
DEFAULT_TEMPLATES = (
    "{}",
    "In this recording: {}",
    "A speech clip. {}",
    "Audio of speech. {}",
)


def task_label(task: Any, metadata: dict) -> int | None:
  """1 / 0 when ``metadata[task.key]`` is in ``task.positive`` / ``task.negative``, else
  None. A task is anything with ``key``, ``positive``, ``negative``, ``positive_prompt``
  and ``negative_prompt`` (e.g. ``jaxclap.data.speech_corpus.BINARY_TASKS``' entries)."""
  v = metadata.get(task.key)
  return 1 if v in task.positive else 0 if v in task.negative else None


def prototypes(embed_text: Callable[[list[str]], np.ndarray], phrase: str | Sequence[str],
               templates: Sequence[str]) -> np.ndarray:
  """One class's prototype: the mean embedding of every template x phrasing, re-normalised."""
  phrases = (phrase,) if isinstance(phrase, str) else tuple(phrase)
  e = embed_text([t.format(p) for p in phrases for t in templates]).mean(0)
  return e / np.linalg.norm(e)


def zero_shot(audio_emb: np.ndarray, metadata: list[dict], tasks: Mapping[str, Any],
              embed_text, templates: Sequence[str] = DEFAULT_TEMPLATES) -> dict[str, Any]:
  """Balanced accuracy (mean of the two classes' recalls: chance is 50% however skewed
  the split) and plain accuracy per task; tasks with no labelled clip are left out."""
  from sklearn.metrics import balanced_accuracy_score
  acc, bal, counts = {}, {}, {}
  for name, task in tasks.items():
    labels = [task_label(task, m) for m in metadata]
    idx = np.array([i for i, l in enumerate(labels) if l is not None])
    if idx.size == 0:
      continue
    y = np.array([labels[i] for i in idx])
    pos = prototypes(embed_text, task.positive_prompt, templates)
    neg = prototypes(embed_text, task.negative_prompt, templates)
    pred = (audio_emb[idx] @ pos > audio_emb[idx] @ neg).astype(int)
    acc[name] = float(np.mean(pred == y))
    bal[name] = float(balanced_accuracy_score(y, pred)) if 0 < y.sum() < y.size else acc[name]
    counts[name] = {"clips": int(idx.size), "positive": int(y.sum())}
  return {"balanced_accuracy": bal, "accuracy": acc, "counts": counts}


def retrieval(audio_emb: np.ndarray, text_emb: np.ndarray, ks=(1, 5, 10)) -> dict[str, float]:
  """Paired rows (clip i <-> caption i); ties count against the model."""
  sim = audio_emb @ text_emb.T
  out = {}
  for name, s in (("text_to_audio", sim.T), ("audio_to_text", sim)):
    correct = np.diag(s)[:, None]
    rank = np.sum(s > correct, axis=1) + np.sum(s == correct, axis=1)   # 1-based, pessimistic
    for k in ks:
      out[f"{name}/R@{k}"] = float(np.mean(rank <= k))
    out[f"{name}/mAP@10"] = float(np.mean(np.where(rank <= 10, 1.0 / rank, 0.0)))
  out["chance/R@1"] = 1.0 / len(sim)
  return out


def split_metadata(path: str, split: str) -> list[dict]:
  src = records.open_split(path, split)
  return [records.decode(src[i])["metadata"] for i in range(len(src))]


def format_table(results: dict) -> str:
  lines = ["zero-shot (binary, antonym prompts)   balanced acc.  accuracy  clips (pos.)"]
  for task, bal in results["zero_shot"].items():
    c = results["counts"][task]
    acc = results["zero_shot_accuracy"][task]
    lines.append(f"  {task:<36s} {bal * 100:8.1f}%  {acc * 100:8.1f}%  "
                 f"{c['clips']:5d} ({c['positive']})")
  lines.append(f"  {'mean':<36s} {results['zero_shot_mean'] * 100:8.1f}%")
  lines.append("retrieval")
  for k, v in results["retrieval"].items():
    lines.append(f"  {k:<38s} {v * 100:6.1f}%")
  return "\n".join(lines)
