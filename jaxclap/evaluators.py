"""Evaluation of a trained model on a held-out split of its first source.

``evaluate_model(trainer, variables, config, tokenizer)`` embeds ``config.eval.split``
and runs the metrics of ``jaxclap.evaluate`` that ``config.eval.metrics`` names.
"""

from __future__ import annotations

import os
from typing import Any

import flax.linen as nn
import jax
import numpy as np

from jaxclap import sharding


def evaluate_model(trainer, variables, config: Any, tokenizer) -> dict | None:
  """Embeds ``config.eval.split`` of the first source and runs ``jaxclap.evaluate``.
  ``variables``: ``TrainState.variables()`` (params, and batch statistics if any).

  ``eval.metrics`` (default ``("zero_shot", "retrieval")``) picks from "zero_shot",
  "retrieval" (global captions), "retrieval_fine" (fine-grained captions), "multiclass",
  "graded" and "linear_probe"; the probe trains on
  ``eval.probe_train_split`` (default "validation") embedded by the same model."""
  from jaxclap import evaluate
  ecfg = config.get("eval")
  if not ecfg:
    return None
  metrics = ecfg.get("metrics") or EVAL_METRICS[:2]
  if isinstance(metrics, str):   # "zero_shot,graded" from a command line
    metrics = [m.strip() for m in metrics.split(",") if m.strip()]
  metrics = tuple(metrics)
  unknown = set(metrics) - set(EVAL_METRICS)
  if unknown:
    raise ValueError(f"eval.metrics: unknown {sorted(unknown)}; choose from {EVAL_METRICS}")
  path = config.input.sources[0]["path"]
  # One compiled embedding function for both splits (the probe's train split too).
  probe_split = ecfg.get("probe_train_split") or "validation"
  splits = (ecfg.split, probe_split) if "linear_probe" in metrics else (ecfg.split,)
  pools = ("fine",) if "retrieval_fine" in metrics else ()
  embedded = _embed_splits(trainer, variables, config, tokenizer, splits, pools)
  audio_emb, text_emb = embedded[0][:2]
  metadata = evaluate.split_metadata(path, ecfg.split)
  # Prompts go through the inference API's text path (one compiled batch shape).
  from jaxclap.inference import Model
  embed_text = Model(config, variables, tokenizer, trainer.model).embed_text
  templates = tuple(ecfg.get("templates") or evaluate.DEFAULT_TEMPLATES)
  tasks, multiclass_tasks, graded_tasks = _corpus_tasks(path)
  out = {"split": ecfg.split, "clips": int(len(audio_emb))}
  if "zero_shot" in metrics:
    zs = evaluate.zero_shot(audio_emb, metadata, tasks, embed_text, templates)
    bal = zs["balanced_accuracy"]
    out.update({"zero_shot": bal, "zero_shot_accuracy": zs["accuracy"],
                "zero_shot_f1": zs["f1"], "zero_shot_macro_f1": zs["macro_f1"],
                "zero_shot_mean": float(np.mean(list(bal.values()))) if bal else float("nan"),
                "counts": zs["counts"]})
  if "retrieval" in metrics:
    out["retrieval"] = evaluate.retrieval(audio_emb, text_emb)
  if "retrieval_fine" in metrics:   # CLSP's fine-grained retrieval: the fine captions
    out["retrieval_fine"] = evaluate.retrieval(audio_emb, embedded[0][2])
  if "multiclass" in metrics:
    out["multiclass"] = evaluate.zero_shot_multiclass(audio_emb, metadata, multiclass_tasks,
                                                      embed_text, templates)
  if "graded" in metrics:
    out["graded"] = evaluate.graded(audio_emb, metadata, graded_tasks, embed_text, templates)
  if "linear_probe" in metrics:
    out["linear_probe"] = _linear_probes(
        embedded[1][0], evaluate.split_metadata(path, probe_split), audio_emb, metadata,
        tasks, multiclass_tasks)
    out["probe_train_split"] = probe_split
  return out


def _all_rows(x) -> np.ndarray:
  """Every process's rows of a batch-sharded array (or of per-process numpy rows)."""
  if jax.process_count() == 1:
    return np.asarray(x)
  from jax.experimental import multihost_utils
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def _corpus_tasks(path: str) -> tuple[dict, dict, dict]:
  """The (binary, multi-class, graded) zero-shot tasks a corpus defines: the embedded
  corpus's ``speech_corpus.BINARY_TASKS`` and ``speech_tasks.MULTICLASS_TASKS`` /
  ``GRADED_TASKS``; none for other corpora (their evaluation is retrieval, until they
  define tasks)."""
  from jaxclap.corpus import speech_corpus, speech_tasks
  if speech_corpus.NAME not in path.split(os.sep):
    return {}, {}, {}
  return (dict(speech_corpus.BINARY_TASKS), dict(speech_tasks.MULTICLASS_TASKS),
          dict(speech_tasks.GRADED_TASKS))


# What ``eval.metrics`` may name; the first two are the default.
EVAL_METRICS = ("zero_shot", "retrieval", "multiclass", "graded", "linear_probe",
                "retrieval_fine")


def _embed_splits(trainer, variables, config: Any, tokenizer, splits,
                  extra_pools: tuple[str, ...] = ()) -> list[tuple[np.ndarray, ...]]:
  """Per split of the first source: (audio, text[, text of each extra pool]) embeddings
  of every clip, rows in record order (as ``evaluate.split_metadata``); text = one
  global caption per clip, an extra pool's one caption of that pool (e.g. "fine",
  CLSP's fine-grained retrieval) read with the same record."""
  from jaxclap import input_pipeline
  mesh = trainer.mesh
  embed = jax.jit(lambda v, b: trainer.model.apply(
      v, *trainer.features(b), b["text_ids"], b["text_mask"])[:2])
  embed_text = jax.jit(lambda v, ids, mask: trainer.model.apply(
      v, ids, mask, method=trainer.model.embed_text))
  text_keys = [(f"text_ids_{p}", f"text_mask_{p}") for p in extra_pools]
  out = []
  for split in splits:
    spec = dict(config.input.sources[0], split=split)
    ds = input_pipeline.eval_dataset(config.input, tokenizer, spec,
                                     batch_size=int(config.eval.batch_size),
                                     process_index=jax.process_index(),
                                     process_count=jax.process_count(),
                                     extra_pools=extra_pools)
    rows, record_rows = [], []
    with nn.logical_axis_rules(trainer.rules):
      for i in range(len(ds)):
        local = ds[i]
        keys = ("audio", "audio_len", "text_ids", "text_mask") + sum(text_keys, ())
        batch = sharding.global_batch({k: local[k] for k in keys}, mesh)
        got = list(embed(variables, batch))
        got += [embed_text(variables, batch[ids], batch[mask]) for ids, mask in text_keys]
        keep = _all_rows(local["valid"]).astype(bool)
        rows.append([_all_rows(x)[keep] for x in got])
        record_rows.append(_all_rows(local["record"])[keep])
    order = np.argsort(np.concatenate(record_rows))
    out.append(tuple(np.concatenate(col)[order] for col in zip(*rows)))
  return out


def _linear_probes(train_emb, train_meta, test_emb, test_meta, tasks, multiclass_tasks) -> dict:
  """``evaluate.linear_probe`` of each binary task's 0/1 label and each multi-class task's
  class, on the clips of each split that have one; tasks the train split cannot probe
  (fewer than two classes) are left out."""
  from jaxclap import evaluate
  out = {}
  for label_fn, task_set in ((evaluate.task_label, tasks),
                             (evaluate.multiclass_label, multiclass_tasks)):
    for name, task in task_set.items():
      assert name not in out, f"task name {name!r} is both binary and multi-class"
      tr = [(i, l) for i, l in enumerate(label_fn(task, m) for m in train_meta) if l is not None]
      te = [(i, l) for i, l in enumerate(label_fn(task, m) for m in test_meta) if l is not None]
      if not tr or not te:
        continue
      (tr_i, tr_y), (te_i, te_y) = zip(*tr), zip(*te)
      r = evaluate.linear_probe(train_emb[list(tr_i)], tr_y, test_emb[list(te_i)], te_y)
      if r is not None:
        out[name] = r
  return out
