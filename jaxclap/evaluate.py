"""Evaluation on a held-out split: zero-shot, retrieval, linear probes, correlations.

* Zero-shot (SLAP's protocol): each binary task is a pair of antonym descriptions
  ("a high-pitched voice" / "a low-pitched voice", never a negation), each put through
  several prompt templates; the text embeddings of one side are averaged (then
  re-normalised) into a class prototype, and a clip is assigned the nearer prototype.
  Only clips whose metadata puts them on one side take part (a "mid" pitch is neither).
  Balanced accuracy, plain accuracy, and F1 of the positive side (SLAP's metric) / macro-F1.
* Multi-class zero-shot (CLSP's gender / age / emotion): one prototype per class, argmax;
  weighted accuracy (WA, plain accuracy) and unweighted accuracy (UA, mean per-class
  recall: chance is 1/classes however skewed the split).
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
    labels = [task_label(task, m) for m in metadata]
    idx = np.array([i for i, l in enumerate(labels) if l is not None])
    if idx.size == 0:
      continue
    y = np.array([labels[i] for i in idx])
    where = _where(f"zero_shot task {name!r}", split)
    pos = prototypes(embed_text, task.positive_prompt, templates, where)
    neg = prototypes(embed_text, task.negative_prompt, templates, where)
    s_pos, s_neg = audio_emb[idx] @ pos, audio_emb[idx] @ neg
    windows.check_finite(np.stack([s_pos, s_neg], 1), f"{where}: similarities", "clips")
    pred = (s_pos > s_neg).astype(int)
    acc[name] = float(np.mean(pred == y))
    bal[name] = float(balanced_accuracy_score(y, pred)) if 0 < y.sum() < y.size else acc[name]
    # zero_division=0: no positive clip and none predicted scores 0, not a warning.
    f1[name] = float(f1_score(y, pred, pos_label=1, zero_division=0))
    macro_f1[name] = float(f1_score(y, pred, labels=[0, 1], average="macro", zero_division=0))
    counts[name] = {"clips": int(idx.size), "positive": int(y.sum())}
  return {"balanced_accuracy": bal, "accuracy": acc, "f1": f1, "macro_f1": macro_f1,
          "counts": counts}


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
    labels = [multiclass_label(task, m) for m in metadata]
    idx = np.array([i for i, l in enumerate(labels) if l is not None])
    if idx.size == 0:
      continue
    y = np.array([labels[i] for i in idx])
    where = _where(f"multiclass task {name!r}", split)
    protos = np.stack([prototypes(embed_text, p, templates, where) for p in task.prompts])
    sim = audio_emb[idx] @ protos.T
    windows.check_finite(sim, f"{where}: similarities", "clips")
    pred = np.argmax(sim, axis=1)
    # A class absent from the split has no recall to average (it can still be predicted,
    # and then costs the true class its recall).
    present = np.unique(y)
    out[name] = {
        "WA": float(accuracy_score(y, pred)),
        "UA": float(recall_score(y, pred, labels=present, average="macro", zero_division=0)),
        "macro_f1": float(f1_score(y, pred, labels=present, average="macro", zero_division=0)),
        "clips": int(idx.size),
        "classes": {task.classes[c]: int(np.sum(y == c)) for c in present},
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
  from sklearn.metrics import accuracy_score, f1_score, recall_score, roc_auc_score
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
              split: str | None = None) -> dict[str, float]:
  """Paired rows (clip i <-> caption i): R@k and mAP@10 each way, and chance's R@1.

  Ties are counted in expectation over a random order of the tied items: with g items
  strictly above the correct one and t tied with it (itself included), its rank is
  uniform on g+1 .. g+t. Sorting code breaks ties by index, i.e. arbitrarily, so this
  is what such code reports on average, without its dependence on the row order. The
  other two conventions lie about a collapsed model: counting ties for the model gives a
  constant model R@1 = 100%, counting them against it gives 0%, below chance; the
  expectation gives it exactly chance (R@k = k/n) and leaves untied ranks as they are.
  Non-finite embeddings or similarities raise ``NonFiniteError`` naming ``split``."""
  _check(audio_emb, "retrieval", "audio embeddings", split, "clips")
  _check(text_emb, "retrieval", "text embeddings", split, "captions")
  sim = np.asarray(audio_emb, np.float64) @ np.asarray(text_emb, np.float64).T
  _check(sim, "retrieval", "similarities", split, "clips")
  harmonic = np.concatenate([[0.0], np.cumsum(1.0 / np.arange(1, 11))])   # H(0), .., H(10)
  # Equal up to rounding is a tie: a matrix product need not give identical rows
  # bit-identical dot products (BLAS kernels sum edge blocks in another order).
  tol = 1e-6 * max(1.0, float(np.abs(sim).max()))
  out = {}
  for name, s in (("text_to_audio", sim.T), ("audio_to_text", sim)):
    correct = np.diag(s)[:, None]
    above = np.sum(s > correct + tol, axis=1)                 # g
    tied = np.sum(np.abs(s - correct) <= tol, axis=1)         # t >= 1: the correct item itself
    for k in ks:   # P(rank <= k) = (how many of g+1 .. g+t are <= k) / t
      out[f"{name}/R@{k}"] = float(np.mean(np.clip(k - above, 0, tied) / tied))
    # E[1/rank if rank <= 10 else 0] = (H(min(g+t, 10)) - H(min(g, 10))) / t
    ap = (harmonic[np.minimum(above + tied, 10)] - harmonic[np.minimum(above, 10)]) / tied
    out[f"{name}/mAP@10"] = float(np.mean(ap))
  out["chance/R@1"] = 1.0 / len(sim)
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
          "linear_probe": "linear probe (logistic regression)"}


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


_TABLES = {"zero_shot": _zero_shot_table, "retrieval": _retrieval_table,
           **{kind: _per_task_table(kind) for kind in _COLUMNS}}
