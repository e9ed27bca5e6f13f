"""The evaluation report: ``<dir>/results.json``, PNG plots and ``report.md`` linking them.

  write(out_dir, results, title=..., metrics_jsonl=..., similarity=...)

``results`` are evaluator sections (``jaxclap.evaluators``, a training run's
results.json) or a benchmark's (``jaxclap.evaluate.run_benchmark``); each section is
recognised by its shape, not its name, so a config's own evaluator names plot as well:

* ``bars_<section>.png``: per-task bars with the chance line (binary zero-shot: balanced
  accuracy, chance 50%; multi-class: UA, chance 1 / classes; linear probe: AUROC,
  chance 0.5; retrieval: R@1/5/10 each way, chance k / clips).
* ``confusion_<section>_<task>.png``: each multi-class task's confusion matrix, rows
  normalised (true class), so the diagonal is each class's recall.
* ``roc_<section>.png``: the ROC curve of each binary linear-probe task (AUROC tasks),
  with the chance diagonal.
* ``speakers_<task>.png``: which voices fail (``results["per_speaker"]``,
  ``jaxclap.evaluate.per_speaker``): each speaker's accuracy on a zero-shot task, worst
  first (the worst 30 where there are more), with the chance line; report.md names the
  worst five per task.
* ``similarity.png``: audio x caption cosine similarities of a few clips (given
  ``similarity``, ``jaxclap.evaluate.similarity_sample``): a trained model's diagonal
  stands out.
* ``training.png``: the training curves of ``metrics.jsonl`` (loss and its terms,
  learning rate, ...), one panel each, and the evaluators' scalars logged during training.

Matplotlib with the Agg backend (no display needed). Nothing here reads a model.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

import numpy as np

# A training row's keys that are not curves.
_NOT_CURVES = ("step", "data_index", "time", "steps_per_sec")


def _plt():
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  return plt


def sections(results: dict, prefix: str = "") -> list[tuple[str, str, Any]]:
  """(name, kind, value) of each plottable section of ``results``; kinds "zero_shot",
  "multiclass", "linear_probe", "graded", "retrieval". A benchmark's nested sections are
  named ``<evaluator>/<section>``."""
  out = []
  for name, v in results.items():
    if not isinstance(v, dict) or not v or name == "skipped":
      continue
    full = f"{prefix}{name}"
    first = next(iter(v.values()))
    if f"{name}_counts" in results and all(isinstance(x, float) for x in v.values()):
      out.append((full, "zero_shot", v))
    elif any("/R@" in k for k in v):
      out.append((full, "retrieval", v))
    elif isinstance(first, dict) and "UA" in first:
      out.append((full, "multiclass", v))
    elif isinstance(first, dict) and "auroc" in first:
      out.append((full, "linear_probe", v))
    elif isinstance(first, dict) and "spearman" in first:
      out.append((full, "graded", v))
    elif isinstance(first, dict) and not name.endswith(("_counts", "_accuracy", "_f1")):
      out += sections(v, f"{full}/")   # a benchmark's sections
  return out


def _bars(plt, path, title, labels, values, chance, ylabel):
  fig, ax = plt.subplots(figsize=(max(4.0, 0.45 * len(labels) + 2), 3.6))
  x = np.arange(len(labels))
  ax.bar(x, values, color="#4c72b0")
  if np.ndim(chance) == 0:
    ax.axhline(chance, color="#c44e52", ls="--", label=f"chance {chance:.3g}")
  else:
    ax.scatter(x, chance, marker="_", s=400, color="#c44e52", label="chance", zorder=3)
  for xi, v in zip(x, values):
    ax.text(xi, v + 0.01, f"{v:.2f}", ha="center", va="bottom", fontsize=7)
  ax.set_xticks(x, labels, rotation=45 if len(labels) > 3 else 0, ha="right"
                if len(labels) > 3 else "center", fontsize=8)
  ax.set_ylim(0, 1.08)
  ax.set_ylabel(ylabel)
  ax.set_title(title, fontsize=10)
  ax.legend(fontsize=8, loc="upper right")
  _save(plt, fig, path)


def _save(plt, fig, path: str) -> None:
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def _safe(name: str) -> str:
  return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)


def _section_bars(plt, out_dir, name, kind, v) -> tuple[str, str] | None:
  file = f"bars_{_safe(name)}.png"
  path = os.path.join(out_dir, file)
  if kind == "zero_shot":
    _bars(plt, path, f"{name}: balanced accuracy", list(v), list(v.values()), 0.5,
          "balanced accuracy")
  elif kind == "multiclass":
    _bars(plt, path, f"{name}: UA (mean per-class recall)", list(v),
          [r["UA"] for r in v.values()], [1 / len(r["classes"]) for r in v.values()], "UA")
  elif kind == "linear_probe":
    tasks = [t for t, r in v.items() if math.isfinite(r["auroc"])]
    if not tasks:
      return None
    _bars(plt, path, f"{name}: linear probe AUROC", tasks, [v[t]["auroc"] for t in tasks],
          0.5, "AUROC")
  elif kind == "retrieval":
    keys = [k for k in v if "/R@" in k and not k.startswith("chance")]
    n = 1 / v["chance/R@1"]
    _bars(plt, path, f"{name}: retrieval over {n:.0f} clips", keys, [v[k] for k in keys],
          [min(1.0, int(k.rsplit("@", 1)[1]) / n) for k in keys], "recall")
  elif kind == "graded":
    tasks = [t for t, r in v.items() if math.isfinite(r["spearman"])]
    if not tasks:
      return None
    fig, ax = plt.subplots(figsize=(max(4.0, 0.6 * len(tasks) + 2), 3.4))
    ax.bar(tasks, [v[t]["spearman"] for t in tasks], color="#4c72b0")
    ax.axhline(0, color="#c44e52", ls="--", label="chance 0")
    ax.set_ylim(-1, 1)
    ax.set_ylabel("Spearman rho")
    ax.set_title(f"{name}: similarity vs measured value", fontsize=10)
    ax.legend(fontsize=8)
    _save(plt, fig, path)
  return file, f"{name} ({kind})"


def _confusion(plt, out_dir, name, task, r) -> tuple[str, str]:
  m = np.asarray(r["confusion"], float)
  classes = list(r.get("class_names") or range(len(m)))
  rows = m.sum(1, keepdims=True)
  norm = np.divide(m, rows, out=np.zeros_like(m), where=rows > 0)
  size = min(12.0, 2.5 + 0.22 * len(m))
  fig, ax = plt.subplots(figsize=(size + 1, size))
  im = ax.imshow(norm, vmin=0, vmax=1, cmap="Blues")
  ticks = np.arange(len(m))
  fs = 8 if len(m) <= 12 else 5
  ax.set_xticks(ticks, classes, rotation=90, fontsize=fs)
  ax.set_yticks(ticks, classes, fontsize=fs)
  if len(m) <= 12:
    for i in range(len(m)):
      for j in range(len(m)):
        if m[i, j]:
          ax.text(j, i, f"{int(m[i, j])}", ha="center", va="center", fontsize=7,
                  color="white" if norm[i, j] > 0.5 else "black")
  ax.set_xlabel("predicted")
  ax.set_ylabel("true (row-normalised)")
  ax.set_title(f"{name} / {task}: UA {r['UA']:.1%}, WA {r['WA']:.1%}", fontsize=10)
  fig.colorbar(im, fraction=0.046)
  file = f"confusion_{_safe(name)}_{_safe(task)}.png"
  _save(plt, fig, os.path.join(out_dir, file))
  return file, f"{name} / {task} confusion matrix"


def _roc(plt, out_dir, name, v) -> tuple[str, str] | None:
  tasks = [t for t, r in v.items() if isinstance(r, dict) and "roc" in r]
  if not tasks:
    return None
  fig, ax = plt.subplots(figsize=(4.8, 4.4))
  for t in tasks:
    ax.plot(v[t]["roc"]["fpr"], v[t]["roc"]["tpr"], lw=1.4, drawstyle="steps-post",
            label=f"{t}: AUROC {v[t]['auroc']:.3f}")
  ax.plot([0, 1], [0, 1], color="#c44e52", ls="--", lw=1, label="chance 0.5")
  ax.set_xlim(0, 1)
  ax.set_ylim(0, 1.01)
  ax.set_xlabel("false positive rate")
  ax.set_ylabel("true positive rate")
  ax.set_title(f"{name}: ROC (binary tasks)", fontsize=10)
  ax.legend(fontsize=7, loc="lower right")
  file = f"roc_{_safe(name)}.png"
  _save(plt, fig, os.path.join(out_dir, file))
  return file, f"{name} ROC curves"


_WORST_SHOWN = 30


def worst_speakers(task: dict, n: int = 5) -> list[tuple[str, int, int]]:
  """(speaker, correct, clips) of a ``per_speaker`` task's ``n`` worst speakers: lowest
  accuracy first, more clips first among equals, then by name."""
  rows = [(s, c["correct"], c["clips"]) for s, c in task["speakers"].items()]
  return sorted(rows, key=lambda r: (r[1] / r[2], -r[2], r[0]))[:n]


def _speakers(plt, out_dir, key, name, task) -> tuple[str, str]:
  rows = worst_speakers(task, _WORST_SHOWN)
  n_all = len(task["speakers"])
  fig, ax = plt.subplots(figsize=(6.0, 1.2 + 0.22 * len(rows)))
  y = np.arange(len(rows))
  acc = [c / n for _, c, n in rows]
  ax.barh(y, acc, color=["#c44e52" if a < task["chance"] else "#4c72b0" for a in acc])
  ax.axvline(task["chance"], color="#c44e52", ls="--", lw=1,
             label=f"chance {task['chance']:.2g}")
  for yi, (_, c, n) in zip(y, rows):
    ax.text(min(c / n, 0.92) + 0.01, yi, f"{c}/{n}", va="center", fontsize=6)
  ax.set_yticks(y, [str(s)[:28] for s, _, _ in rows], fontsize=6)
  ax.invert_yaxis()   # worst on top
  ax.set_xlim(0, 1.05)
  ax.set_xlabel("accuracy on the speaker's clips")
  shown = "" if n_all <= len(rows) else f", the worst {len(rows)} of {n_all}"
  ax.set_title(f"{name} ({task['kind']}) per {key}{shown}", fontsize=9)
  ax.legend(fontsize=7, loc="lower right")
  file = f"speakers_{_safe(name)}.png"
  _save(plt, fig, os.path.join(out_dir, file))
  return file, f"{name}: which voices fail ({key})"


def _similarity(plt, out_dir, sim) -> tuple[str, str]:
  m = np.asarray(sim["matrix"])
  fig, ax = plt.subplots(figsize=(7.5, 6.5))
  im = ax.imshow(m, cmap="viridis")
  ax.set_xlabel("caption of clip j")
  ax.set_ylabel("clip i")
  ticks = np.arange(len(m))
  ax.set_yticks(ticks, [str(i)[:24] for i in sim["ids"]], fontsize=5)
  ax.set_xticks(ticks, ticks, fontsize=5)
  diag = float(np.mean(np.diag(m)))
  off = float((m.sum() - np.trace(m)) / max(1, m.size - len(m)))
  ax.set_title(f"audio-text cosine similarity, split {sim.get('split')}: diagonal "
               f"{diag:.3f}, off-diagonal {off:.3f}", fontsize=9)
  fig.colorbar(im, fraction=0.046)
  _save(plt, fig, os.path.join(out_dir, "similarity.png"))
  return "similarity.png", "audio-text similarity matrix"


def read_metrics(path: str) -> list[dict]:
  """The rows of a metrics.jsonl (a half-written last line is left out)."""
  rows = []
  with open(path, encoding="utf-8") as f:
    for line in f:
      try:
        rows.append(json.loads(line))
      except ValueError:
        continue
  return rows


def _training(plt, out_dir, rows) -> tuple[str, str] | None:
  curves: dict[str, list[tuple[int, float]]] = {}
  for r in rows:
    for k, v in r.items():
      if k in _NOT_CURVES or isinstance(v, bool) or not isinstance(v, (int, float)):
        continue
      if math.isfinite(v):
        curves.setdefault(k, []).append((int(r["step"]), float(v)))
  # Training scalars first (loss, terms, lr), then the evaluators' (keyed "<name>/...").
  keys = sorted(curves, key=lambda k: ("/" in k, k != "loss", k))[:12]
  if not keys:
    return None
  cols = min(3, len(keys))
  rows_n = -(-len(keys) // cols)
  fig, axes = plt.subplots(rows_n, cols, figsize=(4.2 * cols, 2.8 * rows_n), squeeze=False)
  for ax, k in zip(axes.flat, keys):
    steps, vals = zip(*curves[k])
    ax.plot(steps, vals, marker="." if len(steps) < 30 else None, lw=1.2)
    ax.set_title(k, fontsize=9)
    ax.set_xlabel("step", fontsize=8)
    ax.tick_params(labelsize=7)
  for ax in list(axes.flat)[len(keys):]:
    ax.axis("off")
  _save(plt, fig, os.path.join(out_dir, "training.png"))
  return "training.png", "training curves (metrics.jsonl)"


def write(out_dir: str, results: dict, *, title: str = "evaluation",
          metrics_jsonl: str | None = None, similarity: dict | None = None,
          table: str | None = None) -> str:
  """Writes the report folder; returns the path of its report.md. ``table``: the printed
  results table (default ``evaluate``-free: sections listed by name)."""
  os.makedirs(out_dir, exist_ok=True)
  with open(os.path.join(out_dir, "results.json"), "w") as f:
    json.dump(results, f, indent=2)
  plt = _plt()
  figures = []
  for name, kind, v in sections(results):
    bar = _section_bars(plt, out_dir, name, kind, v)
    if bar:
      figures.append(bar)
    if kind == "multiclass":
      figures += [_confusion(plt, out_dir, name, task, r) for task, r in v.items()
                  if "confusion" in r]
    if kind == "linear_probe":
      roc = _roc(plt, out_dir, name, v)
      if roc:
        figures.append(roc)
  speakers = results.get("per_speaker")
  worst = []
  if speakers:
    for task_name, task in speakers["tasks"].items():
      figures.append(_speakers(plt, out_dir, speakers["key"], task_name, task))
      worst.append(f"- `{task_name}`: " + ", ".join(
          f"{s} {c}/{n}" for s, c, n in worst_speakers(task)))
  if similarity:
    figures.append(_similarity(plt, out_dir, similarity))
  if metrics_jsonl and os.path.exists(metrics_jsonl):
    t = _training(plt, out_dir, read_metrics(metrics_jsonl))
    if t:
      figures.append(t)
  lines = [f"# {title}", "", "Numbers: [results.json](results.json)."]
  if table:
    lines += ["", "```", table, "```"]
  for why in (results.get("skipped") or {}).items():
    lines += ["", f"Not run: `{why[0]}`: {why[1]}."]
  if worst:
    lines += ["", f"Worst voices (by `{speakers['key']}`; correct / clips, zero-shot):", ""]
    lines += worst
  for file, caption in figures:
    lines += ["", f"## {caption}", "", f"![{caption}]({file})"]
  path = os.path.join(out_dir, "report.md")
  with open(path, "w", encoding="utf-8") as f:
    f.write("\n".join(lines) + "\n")
  return path
