"""Evaluation on a held-out split: zero-shot, retrieval, linear probes, correlations.

* Zero-shot (SLAP's protocol): each binary task is a pair of antonym descriptions
  ("a high-pitched voice" / "a low-pitched voice", never a negation), each put through
  several prompt templates; the text embeddings of one side are averaged (then
  re-normalised) into a class prototype, and a clip is assigned the nearer prototype.
  Only clips whose metadata puts them on one side take part (a "mid" pitch is neither).
  Balanced accuracy, plain accuracy, and F1 of the positive side (SLAP's metric) / macro-F1.
* Multi-class zero-shot (CLSP's gender / age / emotion): one prototype per class, argmax;
  weighted accuracy (WA, plain accuracy) and unweighted accuracy (UA, mean per-class
  recall: chance is 1/classes however skewed the split), and the confusion matrix.
* Retrieval: each clip's first caption as the query / target; text->audio and
  audio->text R@1/5/10 and mAP@10 (one relevant item per query, so AP = 1/rank). Tied
  similarities count as in expectation over a random order of the tied items, so a
  constant model scores chance (R@1 = 1/n), neither 100% nor 0%.
* Linear probe (SLAP's, AcuLa's): logistic regression on frozen, standardised audio
  embeddings of another split; accuracy, balanced accuracy, F1, AUROC.
* Graded (Speech-CLAP's / CLSP's correlation with human ratings): a clip's cosine
  similarity to a prompt ("A high-pitched voice.") against a measured value (F0 in
  semitones, words/min, dBFS); Pearson, Spearman and Kendall's tau with p-values.

``jaxclap.evaluators`` runs these as the evaluators ``config.evals`` names; its results
are sections keyed by each evaluator's name: ``{"zero_shot": {task: balanced accuracy},
"zero_shot_accuracy": {task: plain accuracy}, "zero_shot_f1": {task: F1},
"zero_shot_macro_f1": ..., "zero_shot_mean": ..., "zero_shot_counts": {...},
"retrieval": {metric: value}, "multiclass": {task: {"WA", "UA", "macro_f1", "clips",
"classes"}}, "graded": {task: correlations()}, "linear_probe": {task: linear_probe()}}``
for the evaluators of those names; ``format_table`` prints what is present.

No number is computed from NaN/Inf: every metric checks its embeddings and scores and
raises ``NonFiniteError`` (``windows.NonFiniteError``) naming the evaluation, the split
(``split=``, when the caller gives it) and how many rows are non-finite. A NaN compares
false with everything: unchecked, a NaN model's retrieval ranks all come out 0 (R@1 =
100%, mAP@10 = inf) and its zero-shot predictions all one class.
"""

from __future__ import annotations

import sys
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from jaxclap import windows
from jaxclap.corpus import records

NonFiniteError = windows.NonFiniteError

# Prompts are whole sentences ("A man speaking."); templates wrap them.
DEFAULT_TEMPLATES = (
    "{}",
    "In this recording: {}",
    "A speech clip. {}",
    "Audio of speech. {}",
)


def _where(evaluation: str, split: str | None) -> str:
  """What errors name: "<evaluation> on split '<split>'" (the split when known)."""
  return evaluation + (f" on split {split!r}" if split is not None else "")


def _check(x, evaluation: str, what: str, split: str | None, rows: str = "rows") -> None:
  """``windows.check_finite`` of ``x``, named "<evaluation> on split '<split>': <what>"."""
  windows.check_finite(x, f"{_where(evaluation, split)}: {what}", rows)


def task_label(task: Any, metadata: dict) -> int | None:
  """1 / 0 when ``metadata[task.key]`` is in ``task.positive`` / ``task.negative``, else
  None. A task is anything with ``key``, ``positive``, ``negative``, ``positive_prompt``
  and ``negative_prompt`` (e.g. ``jaxclap.corpus.speech_corpus.BINARY_TASKS``' entries)."""
  v = metadata.get(task.key)
  return 1 if v in task.positive else 0 if v in task.negative else None


def prototypes(embed_text: Callable[[list[str]], np.ndarray], phrase: str | Sequence[str],
               templates: Sequence[str], where: str = "prototypes") -> np.ndarray:
  """One class's prototype: the mean embedding of every template x phrasing, re-normalised.
  Non-finite text embeddings (or a zero mean) raise ``NonFiniteError`` naming ``where``
  and the phrase."""
  phrases = (phrase,) if isinstance(phrase, str) else tuple(phrase)
  texts = [t.format(p) for p in phrases for t in templates]
  emb = np.asarray(embed_text(texts))
  windows.check_finite(emb, f"{where}: text embeddings of {phrases[0]!r}", "prompts")
  e = emb.mean(0)
  with np.errstate(invalid="ignore", divide="ignore"):
    e = e / np.linalg.norm(e)
  windows.check_finite(e[None], f"{where}: the prototype of {phrases[0]!r} (a zero mean)",
                       "prototypes")
  return e


def zero_shot(audio_emb: np.ndarray, metadata: list[dict], tasks: Mapping[str, Any],
              embed_text, templates: Sequence[str] = DEFAULT_TEMPLATES, *,
              split: str | None = None) -> dict[str, Any]:
  """Balanced accuracy (mean of the two classes' recalls: chance is 50% however skewed
  the split), plain accuracy, F1 of the positive side (SLAP's metric) and macro-F1 per
  task; tasks with no labelled clip are left out. A clip equally near both prototypes
  is called negative (a constant model calls every clip one class: 50% balanced).
  ``split`` names the split in errors (``NonFiniteError``)."""
  from sklearn.metrics import balanced_accuracy_score, f1_score
  _check(audio_emb, "zero_shot", "audio embeddings", split, "clips")
  acc, bal, f1, macro_f1, counts = {}, {}, {}, {}, {}
  for name, task in tasks.items():
    called = _binary_calls(audio_emb, metadata, task, embed_text, templates,
                           _where(f"zero_shot task {name!r}", split))
    if called is None:
      continue
    idx, y, pred = called
    acc[name] = float(np.mean(pred == y))
    bal[name] = float(balanced_accuracy_score(y, pred)) if 0 < y.sum() < y.size else acc[name]
    # zero_division=0: no positive clip and none predicted scores 0, not a warning.
    f1[name] = float(f1_score(y, pred, pos_label=1, zero_division=0))
    macro_f1[name] = float(f1_score(y, pred, labels=[0, 1], average="macro", zero_division=0))
    counts[name] = {"clips": int(idx.size), "positive": int(y.sum())}
  return {"balanced_accuracy": bal, "accuracy": acc, "f1": f1, "macro_f1": macro_f1,
          "counts": counts}


def _binary_calls(audio_emb, metadata, task, embed_text, templates, where):
  """(clip indices, 0/1 labels, 0/1 calls) of a binary task's labelled clips (None if it
  has none): each clip is called by the nearer of the two prototypes, a tie negative."""
  labels = [task_label(task, m) for m in metadata]
  idx = np.array([i for i, l in enumerate(labels) if l is not None])
  if idx.size == 0:
    return None
  y = np.array([labels[i] for i in idx])
  pos = prototypes(embed_text, task.positive_prompt, templates, where)
  neg = prototypes(embed_text, task.negative_prompt, templates, where)
  s_pos, s_neg = audio_emb[idx] @ pos, audio_emb[idx] @ neg
  windows.check_finite(np.stack([s_pos, s_neg], 1), f"{where}: similarities", "clips")
  return idx, y, (s_pos > s_neg).astype(int)


def _multiclass_calls(audio_emb, metadata, task, embed_text, templates, where):
  """(clip indices, class labels, calls) of a multi-class task's labelled clips (None if
  it has none): the nearest prototype, a tie to the first class."""
  labels = [multiclass_label(task, m) for m in metadata]
  idx = np.array([i for i, l in enumerate(labels) if l is not None])
  if idx.size == 0:
    return None
  y = np.array([labels[i] for i in idx])
  protos = np.stack([prototypes(embed_text, p, templates, where) for p in task.prompts])
  sim = audio_emb[idx] @ protos.T
  windows.check_finite(sim, f"{where}: similarities", "clips")
  return idx, y, np.argmax(sim, axis=1)


# The metadata key that names a clip's speaker: the data/ builders' and the embedded
# corpus's (one id per voice).
SPEAKER_KEYS = ("speaker", "voice_id")


def per_speaker(audio_emb: np.ndarray, metadata: list[dict], tasks: Mapping[str, Mapping],
                embed_text, templates: Sequence[str] = DEFAULT_TEMPLATES, *,
                split: str | None = None) -> dict | None:
  """Which voices fail: for each binary and multi-class zero-shot task (``tasks``:
  ``records.read_tasks``' shape), each speaker's labelled clips and how many the model
  called right (the calls ``zero_shot`` / ``zero_shot_multiclass`` score). The speaker
  is the first of ``SPEAKER_KEYS`` the clips carry (clips without it are left out);
  None when no clip carries one.
  {"key", "tasks": {task: {"kind", "chance", "speakers": {speaker: {"clips",
  "correct"}}}}}; "chance" is a uniform guess's accuracy (1/2, 1/classes)."""
  key = next((k for k in SPEAKER_KEYS if any(m.get(k) is not None for m in metadata)), None)
  if key is None:
    return None
  _check(audio_emb, "per_speaker", "audio embeddings", split, "clips")
  out = {"key": key, "tasks": {}}
  for kind, calls in (("binary", _binary_calls), ("multiclass", _multiclass_calls)):
    for name, task in tasks.get(kind, {}).items():
      called = calls(audio_emb, metadata, task, embed_text, templates,
                     _where(f"per_speaker task {name!r}", split))
      if called is None:
        continue
      speakers: dict[str, dict[str, int]] = {}
      for i, yi, pi in zip(*called):
        if metadata[i].get(key) is None:   # a clip that names no speaker
          continue
        c = speakers.setdefault(str(metadata[i][key]), {"clips": 0, "correct": 0})
        c["clips"] += 1
        c["correct"] += int(yi == pi)
      out["tasks"][name] = {"kind": kind, "speakers": dict(sorted(speakers.items())),
                            "chance": 0.5 if kind == "binary" else 1 / len(task.classes)}
  return out if out["tasks"] else None


def multiclass_label(task: Any, metadata: dict) -> int | None:
  """The index of ``metadata[task.key]`` in ``task.classes``, or None (not part of the
  task: no value, "varies", ...). A task is anything with ``key``, ``classes`` and
  ``prompts`` (e.g. ``jaxclap.corpus.speech_tasks.MULTICLASS_TASKS``' entries)."""
  v = metadata.get(task.key)
  return task.classes.index(v) if v in task.classes else None


def zero_shot_multiclass(audio_emb: np.ndarray, metadata: list[dict], tasks: Mapping[str, Any],
                         embed_text, templates: Sequence[str] = DEFAULT_TEMPLATES, *,
                         split: str | None = None) -> dict[str, dict]:
  """Per task: each clip takes the class whose prototype is nearest (argmax of the dot
  product; a tie goes to the first class, so a constant model predicts one class for
  every clip: UA = 1 / classes); WA = plain accuracy, UA = mean recall over the classes
  present in the split, macro-F1 over the same classes. Tasks with no labelled clip are
  left out. ``split`` names the split in errors (``NonFiniteError``)."""
  from sklearn.metrics import accuracy_score, f1_score, recall_score
  _check(audio_emb, "multiclass", "audio embeddings", split, "clips")
  out = {}
  for name, task in tasks.items():
    called = _multiclass_calls(audio_emb, metadata, task, embed_text, templates,
                               _where(f"multiclass task {name!r}", split))
    if called is None:
      continue
    idx, y, pred = called
    # A class absent from the split has no recall to average (it can still be predicted,
    # and then costs the true class its recall).
    present = np.unique(y)
    out[name] = {
        "WA": float(accuracy_score(y, pred)),
        "UA": float(recall_score(y, pred, labels=present, average="macro", zero_division=0)),
        "macro_f1": float(f1_score(y, pred, labels=present, average="macro", zero_division=0)),
        "clips": int(idx.size),
        "classes": {task.classes[c]: int(np.sum(y == c)) for c in present},
        "class_names": list(task.classes),
        # rows: the true class, columns: the predicted one, both in class_names order
        "confusion": np.bincount(y * len(task.classes) + pred,
                                 minlength=len(task.classes) ** 2
                                 ).reshape(len(task.classes), -1).tolist(),
    }
  return out


def linear_probe(train_emb: np.ndarray, train_labels: Sequence, test_emb: np.ndarray,
                 test_labels: Sequence, *, C: float = 1.0, max_iter: int = 2000,
                 split: str | None = None, train_split: str | None = None
                 ) -> dict[str, Any] | None:
  """Logistic regression on frozen embeddings (features standardised on the train rows;
  lbfgs, so the result is deterministic). Returns accuracy, balanced accuracy, F1 (of the
  larger label when binary, e.g. 1 of 0/1; macro when multi-class), macro-F1 (over the
  classes the test rows have) and AUROC (binary, or one-vs-rest macro). Test rows whose
  class the train rows lack are dropped (counted in ``test_dropped``); None when the
  train rows have fewer than two classes.
  AUROC is NaN when the kept test rows have one class only. Constant embeddings
  standardise to zeros: the probe predicts the train rows' majority class for every
  row (balanced accuracy and AUROC 0.5). ``split`` / ``train_split`` name the test /
  train split in errors (``NonFiniteError``)."""
  from sklearn.linear_model import LogisticRegression
  from sklearn.metrics import accuracy_score, f1_score, recall_score, roc_auc_score, roc_curve
  from sklearn.pipeline import make_pipeline
  from sklearn.preprocessing import StandardScaler
  _check(train_emb, "linear_probe", "train embeddings", train_split, "clips")
  _check(test_emb, "linear_probe", "test embeddings", split, "clips")
  train_labels, test_labels = np.asarray(train_labels), np.asarray(test_labels)
  if np.unique(train_labels).size < 2:
    return None
  clf = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=max_iter))
  clf.fit(np.asarray(train_emb, np.float64), train_labels)
  classes = clf.classes_
  keep = np.isin(test_labels, classes)
  y, x = test_labels[keep], np.asarray(test_emb, np.float64)[keep]
  out = {"train": int(train_labels.size), "test": int(y.size),
         "test_dropped": int((~keep).sum())}
  if y.size == 0:
    return dict(out, accuracy=float("nan"), balanced_accuracy=float("nan"), f1=float("nan"),
                macro_f1=float("nan"), auroc=float("nan"))
  pred, proba = clf.predict(x), clf.predict_proba(x)
  present = np.unique(y)
  binary = classes.size == 2
  out["accuracy"] = float(accuracy_score(y, pred))
  # Balanced accuracy = mean recall over the classes the test rows have (what sklearn's
  # balanced_accuracy_score computes, without its warning when a missing class is predicted).
  out["balanced_accuracy"] = float(recall_score(y, pred, labels=present, average="macro",
                                                zero_division=0))
  out["macro_f1"] = float(f1_score(y, pred, labels=present, average="macro", zero_division=0))
  out["f1"] = (float(f1_score(y, pred, pos_label=classes[1], zero_division=0)) if binary
               else out["macro_f1"])
  if present.size < 2:
    out["auroc"] = float("nan")
  elif binary:
    out["auroc"] = float(roc_auc_score(y == classes[1], proba[:, 1]))
    fpr, tpr, _ = roc_curve(y == classes[1], proba[:, 1])   # the report's ROC curve
    out["roc"] = {"fpr": fpr.tolist(), "tpr": tpr.tolist()}
  elif present.size == classes.size:
    out["auroc"] = float(roc_auc_score(y, proba, multi_class="ovr", average="macro",
                                       labels=classes))
  else:   # one-vs-rest over the classes the test rows have (sklearn's needs them all)
    cols = np.searchsorted(classes, present)
    out["auroc"] = float(np.mean([roc_auc_score(y == c, proba[:, j])
                                  for c, j in zip(present, cols)]))
  return out


def correlations(scores: Sequence[float], ratings: Sequence[float], where: str = "correlations"
                 ) -> dict[str, float]:
  """Pearson, Spearman and Kendall's tau (tau-b) of paired values, each with its
  two-sided p-value, and n. NaN where undefined (n < 3, or a constant side: a constant
  model has no correlation to report). Non-finite scores or ratings raise
  ``NonFiniteError`` naming ``where``."""
  from scipy import stats
  x, y = np.asarray(scores, np.float64), np.asarray(ratings, np.float64)
  windows.check_finite(x, f"{where}: scores", "values")
  windows.check_finite(y, f"{where}: ratings", "values")
  out: dict[str, float] = {"n": int(x.size)}
  defined = x.size >= 3 and np.ptp(x) > 0 and np.ptp(y) > 0
  for name, fn in (("pearson", stats.pearsonr), ("spearman", stats.spearmanr),
                   ("kendall", stats.kendalltau)):
    r, p = fn(x, y) if defined else (float("nan"), float("nan"))
    out[name], out[f"{name}_p"] = float(r), float(p)
  return out


def _number(v) -> float | None:
  try:
    v = float(v)
  except (TypeError, ValueError):
    return None
  return v if np.isfinite(v) else None


def graded(audio_emb: np.ndarray, metadata: list[dict], tasks: Mapping[str, Any], embed_text,
           templates: Sequence[str] = DEFAULT_TEMPLATES, *,
           split: str | None = None) -> dict[str, dict]:
  """Per graded task (``key``, ``prompt``, optional ``negative_prompt`` and ``exclude``,
  e.g. ``jaxclap.corpus.speech_tasks.GRADED_TASKS``): the cosine similarity of each clip to
  the prompt's prototype (minus that to the negative one, if given) correlated with
  ``metadata[key]`` over the clips that have a value. Tasks with no such clip are left out.
  ``split`` names the split in errors (``NonFiniteError``)."""
  _check(audio_emb, "graded", "audio embeddings", split, "clips")
  a = np.asarray(audio_emb, np.float64)
  a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)   # cosine, not dot
  out = {}
  for name, task in tasks.items():
    exclude = tuple(getattr(task, "exclude", ()) or ())
    values = [None if any(m.get(k) == v for k, v in exclude) else _number(m.get(task.key))
              for m in metadata]
    idx = np.array([i for i, v in enumerate(values) if v is not None])
    if idx.size == 0:
      continue
    where = _where(f"graded task {name!r}", split)
    score = a[idx] @ prototypes(embed_text, task.prompt, templates, where)
    if getattr(task, "negative_prompt", None):
      score = score - a[idx] @ prototypes(embed_text, task.negative_prompt, templates, where)
    out[name] = correlations(score, [values[i] for i in idx], where)
  return out


def retrieval(audio_emb: np.ndarray, text_emb: np.ndarray, ks=(1, 5, 10), *,
              split: str | None = None, caption_owner: Sequence[int] | None = None
              ) -> dict[str, float]:
  """R@k and mAP@10 each way, and chance's R@1. Rows are paired (clip i <-> caption i)
  unless ``caption_owner`` gives each caption's clip (Clotho's and AudioCaps' protocol:
  every one of a clip's captions is a text->audio query; audio->text, a clip's query is
  answered by whichever of its captions ranks first, and AP@10 is 1 / that rank).

  Ties are counted in expectation over a random order of the tied items: with g wrong
  items strictly above the best right one, and u wrong and r right items tied with it,
  the first right item comes after X of the u, X as in a random shuffle of the u + r.
  Sorting code breaks ties by index, i.e. arbitrarily, so this is what such code reports
  on average, without its dependence on the row order. The other two conventions lie
  about a collapsed model: counting ties for the model gives a constant model R@1 =
  100%, counting them against it gives 0%, below chance; the expectation gives it
  exactly chance (R@k = k/n) and leaves untied ranks as they are.
  Non-finite embeddings or similarities raise ``NonFiniteError`` naming ``split``."""
  _check(audio_emb, "retrieval", "audio embeddings", split, "clips")
  _check(text_emb, "retrieval", "text embeddings", split, "captions")
  sim = np.asarray(audio_emb, np.float64) @ np.asarray(text_emb, np.float64).T
  _check(sim, "retrieval", "similarities", split, "clips")
  owner = np.arange(len(sim)) if caption_owner is None else np.asarray(caption_owner)
  if owner.shape != (sim.shape[1],) or owner.min() < 0 or owner.max() >= len(sim):
    raise ValueError(f"{_where('retrieval', split)}: caption_owner must give one clip "
                     f"index (0..{len(sim) - 1}) per caption ({sim.shape[1]})")
  right = owner[None, :] == np.arange(len(sim))[:, None]      # [clips, captions]
  out = {}
  for name, s, rel in (("text_to_audio", sim.T, right.T), ("audio_to_text", sim, right)):
    for key, v in _rank_metrics(s, rel, ks).items():
      out[f"{name}/{key}"] = v
  out["chance/R@1"] = 1.0 / len(sim)
  return out


def _rank_metrics(s: np.ndarray, rel: np.ndarray, ks) -> dict[str, float]:
  """Mean R@k and AP@10 (1 / the first right item's rank) of the queries (rows) of
  scores ``s`` with right items ``rel`` (at least one per row), ties in expectation
  (``retrieval``)."""
  # Equal up to rounding is a tie: a matrix product need not give identical rows
  # bit-identical dot products (BLAS kernels sum edge blocks in another order).
  tol = 1e-6 * max(1.0, float(np.abs(s).max()))
  best = np.max(np.where(rel, s, -np.inf), axis=1, keepdims=True)
  above = np.sum((s > best + tol) & ~rel, axis=1)               # g
  tie = np.abs(s - best) <= tol
  u, r = np.sum(tie & ~rel, axis=1), np.sum(tie & rel, axis=1)  # r >= 1
  # P(X >= x) for x = 0 .. 11: the first x of the shuffled tied items all wrong.
  j, u_, n_ = np.arange(11)[None, :], u[:, None], (u + r)[:, None]
  frac = np.where(j < u_, (u_ - j) / np.maximum(n_ - j, 1), 0.0)   # item j wrong, given 0..j-1 were
  at_least = np.concatenate([np.ones((len(s), 1)), np.cumprod(frac, axis=1)], axis=1)
  exactly = at_least[:, :-1] - at_least[:, 1:]                  # P(X = x), x = 0 .. 10
  rank = above[:, None] + 1 + np.arange(11)[None, :]            # rank when X = x
  out = {f"R@{k}": float(np.mean(np.sum(np.where(rank <= k, exactly, 0), axis=1))) for k in ks}
  out["mAP@10"] = float(np.mean(np.sum(np.where(rank <= 10, exactly / rank, 0), axis=1)))
  return out


def split_metadata(path: str, split: str) -> list[dict]:
  src = records.open_split(path, split)
  return [records.decode(src[i])["metadata"] for i in range(len(src))]


# (name, type, title) of each section format_table prints when not told: the evaluators
# of configs.base under their types' names, and CLSP's fine-grained retrieval.
DEFAULT_LAYOUT = (("zero_shot", "zero_shot", None), ("multiclass", "multiclass", None),
                  ("retrieval", "retrieval", None),
                  ("retrieval_fine", "retrieval", "retrieval (fine-grained captions)"),
                  ("graded", "graded", None), ("linear_probe", "linear_probe", None))


# Each section type's title, unless the layout gives one.
TITLES = {"zero_shot": "zero-shot (binary, antonym prompts)",
          "multiclass": "zero-shot (multi-class)", "retrieval": "retrieval",
          "graded": "graded (similarity vs measured value)",
          "linear_probe": "linear probe (logistic regression)", "benchmark": "benchmark"}


def format_table(results: dict, layout=DEFAULT_LAYOUT, tasks: Mapping | None = None) -> str:
  """The sections of ``results`` that are present, one table each, in ``layout`` order:
  (name, type, title or None) per evaluator (``jaxclap.evaluators``); then the evaluators
  left out (``results["skipped"]``: name -> why) and, given ``tasks`` (``read_tasks``),
  what the corpus declares, so a corpus without tasks shows what it was evaluated on."""
  lines = []
  for name, kind, title in layout:
    if name in results:
      lines += _TABLES[kind](results, name, title or TITLES[kind])
  for name, why in (results.get("skipped") or {}).items():
    lines.append(f"{name}: not run: {why}")
  if tasks is not None and results.get("skipped"):
    declared = [f"{kind} {', '.join(t)}" for kind, t in tasks.items() if t]
    lines.append("the corpus declares: " + ("; ".join(declared) if declared else
                                           "no tasks (evaluated by retrieval)"))
  return "\n".join(lines)


def _zero_shot_table(results, name, title):
  f1 = results.get(f"{name}_f1", {})
  lines = [f"{title:<38s}balanced acc.  accuracy"
           + ("        F1" if f1 else "") + "  clips (pos.)"]
  for task, bal in results[name].items():
    c = results[f"{name}_counts"][task]
    acc = results[f"{name}_accuracy"][task]
    lines.append(f"  {task:<36s} {bal * 100:8.1f}%  {acc * 100:8.1f}%  "
                 + (f"{f1[task] * 100:8.1f}%  " if task in f1 else "")
                 + f"{c['clips']:5d} ({c['positive']})")
  if results[name]:   # no task had a labelled clip: no mean to print (it was "nan%")
    lines.append(f"  {'mean':<36s} {results[f'{name}_mean'] * 100:8.1f}%")
  else:
    lines.append("  (no clip of the split is labelled for any binary task)")
  return lines


def _retrieval_table(results, name, title):
  return [title] + [f"  {k:<38s} {v * 100:6.1f}%" for k, v in results[name].items()]


# type -> (column headers, one task's columns) of the one-row-per-task tables.
_COLUMNS = {
    "multiclass": (
        f"{'WA':>7s}  {'UA':>7s}  {'mac.F1':>7s}  {'clips':>5s}  classes",
        lambda r: f"{r['WA'] * 100:6.1f}%  {r['UA'] * 100:6.1f}%  "
                  f"{r['macro_f1'] * 100:6.1f}%  {r['clips']:5d}  {len(r['classes'])}"),
    "graded": (
        f"{'Pearson':>7s}  {'Spearman':>8s}  {'Kendall':>7s}  {'clips':>5s}",
        lambda r: f"{r['pearson']:+7.3f}  {r['spearman']:+8.3f}  {r['kendall']:+7.3f}  "
                  f"{r['n']:5d}"),
    "linear_probe": (
        f"{'acc.':>8s}  {'bal.acc.':>8s}  {'F1':>7s}  {'AUROC':>6s}  train/test",
        lambda r: f"{r['accuracy'] * 100:7.1f}%  {r['balanced_accuracy'] * 100:7.1f}%  "
                  f"{r['f1'] * 100:6.1f}%  {r['auroc']:6.3f}  {r['train']}/{r['test']}"),
}


def _per_task_table(kind):
  header, row = _COLUMNS[kind]
  return lambda results, name, title: [f"{title:<38s} {header}"] + [
      f"  {task:<36s} {row(r)}" for task, r in results[name].items()]


def _benchmark_table(results, name, title):
  """A benchmark's sections (``run_benchmark``), nested under its evaluator's name."""
  return [title] + ["  " + line for line in format_table(results[name]).splitlines()]


_TABLES = {"zero_shot": _zero_shot_table, "retrieval": _retrieval_table,
           "benchmark": _benchmark_table,
           **{kind: _per_task_table(kind) for kind in _COLUMNS}}


def linear_probes(train_emb, train_meta, test_emb, test_meta, tasks, multiclass_tasks, *,
                  split: str, train_split: str) -> dict:
  """``linear_probe`` of each binary task's 0/1 label and each multi-class task's class,
  on the clips of each split that have one; tasks the train split cannot probe (fewer
  than two classes) are left out."""
  out = {}
  for label_fn, task_set in ((task_label, tasks), (multiclass_label, multiclass_tasks)):
    for name, task in task_set.items():
      assert name not in out, f"task name {name!r} is both binary and multi-class"
      tr = [(i, l) for i, l in enumerate(label_fn(task, m) for m in train_meta) if l is not None]
      te = [(i, l) for i, l in enumerate(label_fn(task, m) for m in test_meta) if l is not None]
      if not tr or not te:
        continue
      (tr_i, tr_y), (te_i, te_y) = zip(*tr), zip(*te)
      r = linear_probe(train_emb[list(tr_i)], tr_y, test_emb[list(te_i)], te_y,
                       split=split, train_split=train_split)
      if r is not None:
        out[name] = r
  return out


# ------------------------------------------------------------------ standard benchmarks
#
# Each reads a corpus a data/ builder wrote (its splits and tasks.json) and embeds its
# clips through the API a user has, ``jaxclap.load(workdir)``: ``model.embed_audio`` /
# ``model.embed_text`` (any object with those two methods will do; the tests pass one
# whose answers are known). Results are sections in the evaluators' shape, so
# ``format_table`` and ``jaxclap.report`` read them as they read a training run's.


def split_records(path: str, split: str) -> list[dict]:
  """Every record of ``split`` decoded (``records.decode``), in record order."""
  src = records.open_split(path, split)
  return [records.decode(src[i]) for i in range(len(src))]


def splits_of(path: str) -> list[str]:
  import json
  import os
  with open(os.path.join(records.dataset_dir(path), "dataset_info.json")) as f:
    return [s["name"] for s in json.load(f)["splits"]]


def embed_records(model, recs: list[dict], where: str) -> np.ndarray:
  """[n, d] audio embeddings of decoded records (one sample rate per corpus)."""
  rates = sorted({r["sample_rate"] for r in recs})
  if len(rates) != 1:
    raise ValueError(f"{where}: records at several sample rates {rates}")
  return np.asarray(model.embed_audio([r["audio"] for r in recs], sample_rate=rates[0]))


def _captions(recs):
  """Every caption of every record and its record's index (retrieval's caption_owner)."""
  caps = [(c, i) for i, r in enumerate(recs) for c in r["captions"]]
  return [c for c, _ in caps], [i for _, i in caps]


def evaluate_split(model, path: str, split: str, *, train_split: str | None = None,
                   templates: Sequence[str] = DEFAULT_TEMPLATES, tasks=None) -> dict:
  """What a corpus supports, on ``split``: zero-shot of each binary, multi-class and
  graded task its tasks.json declares, retrieval over all of each clip's captions, and,
  given ``train_split``, a linear probe of each binary / multi-class task trained there.
  Sections absent where the corpus declares nothing of their kind."""
  tasks = records.read_tasks(path) if tasks is None else tasks
  _warm(model, tasks, templates)
  recs = split_records(path, split)
  emb = embed_records(model, recs, f"{path} split {split!r}")
  meta = [r["metadata"] for r in recs]
  out = {}
  if tasks["binary"]:
    zs = zero_shot(emb, meta, tasks["binary"], model.embed_text, templates, split=split)
    bal = zs["balanced_accuracy"]
    out.update({"zero_shot": bal, "zero_shot_accuracy": zs["accuracy"],
                "zero_shot_f1": zs["f1"], "zero_shot_macro_f1": zs["macro_f1"],
                "zero_shot_mean": float(np.mean(list(bal.values()))) if bal else float("nan"),
                "zero_shot_counts": zs["counts"]})
  if tasks["multiclass"]:
    out["multiclass"] = zero_shot_multiclass(emb, meta, tasks["multiclass"], model.embed_text,
                                             templates, split=split)
  if tasks["graded"]:
    out["graded"] = graded(emb, meta, tasks["graded"], model.embed_text, templates, split=split)
  speakers = per_speaker(emb, meta, tasks, model.embed_text, templates, split=split)
  if speakers:
    out["per_speaker"] = speakers
  texts, owner = _captions(recs)
  out["retrieval"] = retrieval(emb, model.embed_text(texts), split=split, caption_owner=owner)
  if train_split and (tasks["binary"] or tasks["multiclass"]):
    train = split_records(path, train_split)
    out["linear_probe"] = linear_probes(
        embed_records(model, train, f"{path} split {train_split!r}"),
        [r["metadata"] for r in train], emb, meta, tasks["binary"], tasks["multiclass"],
        split=split, train_split=train_split)
  return out


def _mean_of(parts: list[dict]) -> dict:
  """Per-fold results -> one: floats averaged, counts (ints, lists of ints, dicts of
  ints) summed; each float's per-fold values kept under "folds" for accuracy."""
  out = {}
  for key in parts[0]:
    vals = [p[key] for p in parts]
    if isinstance(vals[0], bool) or isinstance(vals[0], str):
      out[key] = vals[0]
    elif isinstance(vals[0], float):
      out[key] = float(np.mean(vals))
    elif isinstance(vals[0], int):
      out[key] = int(np.sum(vals))
    elif isinstance(vals[0], list) and vals[0] and isinstance(vals[0][0], str):
      out[key] = vals[0]   # names
    elif isinstance(vals[0], list):
      out[key] = np.sum(np.asarray(vals), axis=0).tolist()
    elif isinstance(vals[0], dict) and all(isinstance(x, (int, float)) for v in vals
                                           for x in v.values()):   # not a fold's ROC curve
      keys = sorted({k for v in vals for k in v})
      out[key] = {k: sum(v.get(k, 0) for v in vals) for k in keys}
  return out


def esc50_folds(model, path: str, *, templates: Sequence[str] = ("{}",)) -> dict:
  """ESC-50, CLAP's protocol: zero-shot accuracy of each fold with the prompt "This is
  a sound of <class>." (the corpus's tasks, one template: the prompt is the whole
  sentence), averaged over the five folds (each task's "folds" keeps them); and a
  linear probe trained on four folds and tested on the fifth, averaged over the five."""
  folds = [f"fold{k}" for k in range(1, 6)]
  have = splits_of(path)
  missing = [f for f in folds if f not in have]
  tasks = records.read_tasks(path)
  if missing or "esc50" not in tasks["multiclass"]:
    raise ValueError(f"{path}: not an ESC-50 corpus written by data/esc50.py (splits "
                     f"{have}, multi-class tasks {sorted(tasks['multiclass'])}; needs "
                     "fold1..fold5 and the task esc50)")
  _warm(model, tasks, templates)
  recs = {f: split_records(path, f) for f in folds}
  emb = {f: embed_records(model, recs[f], f"{path} split {f!r}") for f in folds}
  meta = {f: [r["metadata"] for r in recs[f]] for f in folds}
  zs = {f: zero_shot_multiclass(emb[f], meta[f], tasks["multiclass"], model.embed_text,
                                templates, split=f) for f in folds}
  multiclass = {}
  for name in tasks["multiclass"]:
    parts = [zs[f][name] for f in folds if name in zs[f]]
    multiclass[name] = dict(_mean_of(parts), folds=[zs[f][name]["WA"] for f in folds
                                                    if name in zs[f]])
  probes = {}
  for f in folds:
    rest = [g for g in folds if g != f]
    p = linear_probes(np.concatenate([emb[g] for g in rest]), sum((meta[g] for g in rest), []),
                      emb[f], meta[f], {}, tasks["multiclass"], split=f,
                      train_split="+".join(rest))
    for name, r in p.items():
      probes.setdefault(name, []).append(r)
  return {"multiclass": multiclass,
          "linear_probe": {name: _mean_of(rs) for name, rs in probes.items()}}


def _tasks_benchmark(model, path, *, templates=None, split="test", train_split="train"):
  have = splits_of(path)
  if split not in have:
    raise ValueError(f"{path}: no split {split!r} to evaluate; it has {have}")
  return evaluate_split(model, path, split, templates=templates or DEFAULT_TEMPLATES,
                        train_split=train_split if train_split in have else None)


def _retrieval_benchmark(model, path, *, templates=None, split="test"):
  recs = split_records(path, split)
  texts, owner = _captions(recs)
  emb = embed_records(model, recs, f"{path} split {split!r}")
  return {"retrieval": retrieval(emb, model.embed_text(texts), split=split,
                                 caption_owner=owner)}


# --benchmark=NAME -> (what it runs, the protocol). "tasks" is any corpus's.
BENCHMARKS = {
    "esc50": (esc50_folds, "ESC-50 5-fold zero-shot accuracy, CLAP's prompt 'This is a "
              "sound of ...'; 5-fold linear probe"),
    "crema_d": (_tasks_benchmark, "CREMA-D test split: emotion zero-shot (WA / UA), sex "
                "zero-shot, age correlation; linear probes trained on train"),
    "ravdess": (_tasks_benchmark, "RAVDESS test actors: emotion zero-shot (WA / UA), sex, "
                "intensity; linear probes trained on train"),
    "clotho": (_retrieval_benchmark, "Clotho evaluation split: text->audio and audio->text "
               "R@1/5/10, mAP@10 over all five captions"),
    "audiocaps": (_retrieval_benchmark, "AudioCaps test split: R@1/5/10, mAP@10 over all "
                  "captions"),
    "icbhi": (_tasks_benchmark, "ICBHI official test split: cycle classes and abnormal / "
              "crackles / wheezes zero-shot; linear probes (AUROC) trained on train"),
    "coughvid": (_tasks_benchmark, "COUGHVID test split: covid / symptomatic / sex zero-shot; "
                 "linear probes (AUROC) trained on train"),
    "coswara": (_tasks_benchmark, "Coswara test participants: covid / sex zero-shot, kind; "
                "linear probes (AUROC)"),
    "libritts_p": (_tasks_benchmark, "LibriTTS-P test speakers: gender, pitch / speed / "
                   "energy levels, graded f0 / rate / loudness; linear probes"),
    "tasks": (_tasks_benchmark, "any corpus: its declared tasks and retrieval on test; "
              "linear probes trained on train"),
}


def _warm(model, tasks, templates) -> None:
  """Every prompt of ``tasks`` through ``templates`` embedded in one call, when ``model``
  caches its text embeddings (``TextCache``)."""
  if not hasattr(model, "warm"):
    return
  prompts = [p for t in tasks["multiclass"].values() for p in t.prompts] + \
      [p for t in tasks["binary"].values() for p in (t.positive_prompt, t.negative_prompt)] + \
      [p for t in tasks["graded"].values() for p in (t.prompt, t.negative_prompt) if p]
  phrases = [q for p in prompts for q in ((p,) if isinstance(p, str) else p)]
  model.warm([t.format(q) for q in phrases for t in templates])


class TextCache:
  """``model`` whose ``embed_text`` remembers each text: a benchmark asks for the same
  prompts fold after fold (ESC-50: 60 prototypes x 5 folds), a task's per-speaker
  breakdown those it was scored with, and each call would run the text tower on a
  padded batch. ``warm`` embeds a list in one call."""

  def __init__(self, model):
    self.model, self.cache = model, {}

  def warm(self, texts):
    new = sorted(set(texts) - set(self.cache))
    if new:
      self.cache.update(zip(new, np.asarray(self.model.embed_text(new))))

  def embed_text(self, texts):
    texts = [texts] if isinstance(texts, str) else list(texts)
    self.warm(texts)
    return np.stack([self.cache[t] for t in texts])

  def embed_audio(self, *args, **kwargs):
    return self.model.embed_audio(*args, **kwargs)


def run_benchmark(model, name: str, path: str, templates: Sequence[str] | None = None) -> dict:
  """The sections of benchmark ``name`` on the corpus at ``path`` for ``model``."""
  if name not in BENCHMARKS:
    raise ValueError(f"benchmark {name!r}; use one of {sorted(BENCHMARKS)}")
  fn = BENCHMARKS[name][0]
  cached = TextCache(model)
  return fn(cached, path) if templates is None else fn(cached, path, templates=templates)


def main(argv=None) -> int:
  """``python -m jaxclap.evaluate --workdir=W --benchmark=esc50 --data=DIR``."""
  import argparse
  import json
  import os
  p = argparse.ArgumentParser(
      prog="python -m jaxclap.evaluate",
      description="Evaluate a trained run on a standard benchmark (a corpus a data/ "
      "builder wrote) and write <report_dir>: results.json, plots, report.md.",
      epilog="benchmarks:\n" + "\n".join(f"  {k:<11s} {v[1]}" for k, v in BENCHMARKS.items()),
      formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--workdir", required=True, help="a run folder of python -m jaxclap.main")
  p.add_argument("--benchmark", default="tasks", choices=sorted(BENCHMARKS),
                 help="the protocol (default tasks: what the corpus declares)")
  p.add_argument("--data", required=True, help="the corpus: <out>/<name>/1.0.0 of its builder")
  p.add_argument("--step", type=int, default=None, help="checkpoint step (default latest)")
  p.add_argument("--report_dir", default=None,
                 help="default <workdir>/report/<benchmark>")
  args = p.parse_args(argv)
  from jaxclap import host, inference, report
  host.skip_absent_accelerators()
  data = os.path.abspath(os.path.expanduser(args.data))
  try:
    model = inference.load(args.workdir, args.step)
    results = run_benchmark(model, args.benchmark, data)
  except (FileNotFoundError, KeyError, ValueError, NonFiniteError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(f"{args.benchmark} on {data}:")
  print(format_table(results))
  out = args.report_dir or os.path.join(args.workdir, "report", args.benchmark)
  report.write(out, results, title=f"{args.benchmark} on {data}", table=format_table(results),
               metrics_jsonl=os.path.join(args.workdir, "metrics.jsonl"),
               similarity=similarity_sample(model, data, _report_split(data, args.benchmark)))
  with open(os.path.join(out, "benchmark.json"), "w") as f:
    json.dump({"benchmark": args.benchmark, "data": data, "workdir": args.workdir,
               "step": args.step}, f, indent=2)
  print(f"wrote {out}/report.md")
  return 0


def report_run(workdir: str, config, results: dict, model=None) -> str:
  """``<workdir>/report/`` for a finished training run (``python -m jaxclap.main`` calls
  it): its end-of-training ``results``, the training curves of its metrics.jsonl and the
  similarity matrix of a few clips of its evaluation split (by ``jaxclap.load(workdir)``
  unless ``model`` is given). Returns the path of report.md."""
  import os
  from jaxclap import report
  order = list(TITLES)
  layout = sorted(((name, dict(e)["type"], None) for name, e in dict(config.evals).items()),
                  key=lambda x: (order.index(x[1]) if x[1] in order else len(order), x[0]))
  path = config.input.sources[0]["path"]
  similarity = None
  if path != "@corpus":   # resolved by training; "@corpus" only if it never started
    if model is None:
      from jaxclap import inference
      model = inference.load(workdir)
    similarity = similarity_sample(model, path, str(config.eval.split))
  # Which voices fail: the zero_shot / multiclass evaluators' own per-speaker counts
  # (from the calls they scored; nothing is embedded again), joined into one breakdown.
  parts = [v for k, v in results.items() if k.endswith("_per_speaker") and v]
  if parts:
    results = dict(results, per_speaker={"key": parts[0]["key"], "tasks": {
        t: v for p in parts for t, v in p["tasks"].items()}})
  return report.write(os.path.join(workdir, "report"), results,
                      title=f"evaluation of {workdir}",
                      table=format_table(results, layout, tasks=None if similarity is None
                                         else records.read_tasks(path)),
                      metrics_jsonl=os.path.join(workdir, "metrics.jsonl"),
                      similarity=similarity)


def speaker_breakdown(model, path: str, split: str,
                      templates: Sequence[str] = DEFAULT_TEMPLATES) -> dict | None:
  """``per_speaker`` of ``split`` for ``model`` with the corpus's declared tasks (None
  when its clips name no speaker or it declares no binary / multi-class task)."""
  tasks = records.read_tasks(path)
  if not (tasks["binary"] or tasks["multiclass"]):
    return None
  recs = split_records(path, split)
  emb = embed_records(model, recs, f"{path} split {split!r}")
  return per_speaker(emb, [r["metadata"] for r in recs], tasks, model.embed_text, templates,
                     split=split)


def _report_split(path: str, benchmark: str) -> str:
  have = splits_of(path)
  return "fold1" if benchmark == "esc50" else "test" if "test" in have else have[-1]


def similarity_sample(model, path: str, split: str, n: int = 24) -> dict:
  """The audio-text similarity matrix of the first ``n`` clips of ``split`` against
  their first captions (what the report plots): {"matrix", "ids", "captions"}."""
  recs = split_records(path, split)[:n]
  a = embed_records(model, recs, f"{path} split {split!r}")
  t = np.asarray(model.embed_text([r["captions"][0] for r in recs]))
  return {"matrix": (a @ t.T).tolist(), "ids": [r["id"] for r in recs],
          "captions": [r["captions"][0] for r in recs], "split": split}


if __name__ == "__main__":
  sys.exit(main())
