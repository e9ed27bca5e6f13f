"""Evaluators built from the config (big_vision style), run during training and at the end.

  config.eval                 what an evaluator leaves unset: split, batch_size, templates
  config.evals.<name> = dict(type=..., every=N, [split=, batch_size=, templates=,] ...)

``type`` is a key of ``REGISTRY``: "zero_shot" (binary antonym tasks), "retrieval"
(``pool="global"`` or ``"fine"``: CLSP's fine-grained captions), "multiclass", "graded",
"linear_probe" (``train_split``, default "validation"), "benchmark" (``benchmark`` of
``evaluate.BENCHMARKS`` on the corpus at ``data``). ``every``: also every N training
steps (0 or None: only at the end). Tasks come from the corpus's own metadata
(``records.read_tasks``), never from its path.

``Evaluators(config, trainer, tokenizer)`` checks every entry at once (an unknown type or
field raises naming ``config.evals.<name>.<field>``); ``run(variables, step)`` runs the
evaluators due at ``step``. Each split is embedded once per round, shared by every
evaluator on it, and its clips are embedded as ``jaxclap.load(workdir).embed_audio``
embeds them: training-length windows (``input_pipeline.eval_dataset``), the API's audio
function (``inference.Model.embed_windows``), pooled by ``windows.pool``.

Results are flat sections keyed by the evaluator's name: a zero_shot evaluator ``N``
writes ``N`` (balanced accuracy per task), ``N_accuracy``, ``N_f1``, ``N_macro_f1``,
``N_mean`` and ``N_counts``; linear_probe ``N`` writes ``N`` and ``N_train_split``; the
others ``N`` alone (see ``jaxclap.evaluate``); ``clips`` counts each embedded split.
An evaluator the corpus cannot feed (a ``zero_shot`` on a corpus that declares no binary
task, say, your own captions-only corpus) is left out, its reason under
``skipped[N]``; the table prints it and the tasks the corpus does declare.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import numpy as np

from jaxclap import evaluate, sharding
from jaxclap import windows as windows_lib
from jaxclap.corpus import records

# Fields of config.eval: every evaluator's default.
DEFAULTS = ("split", "batch_size", "templates")
# Fields every config.evals entry may set.
COMMON = ("type", "every", "split", "batch_size")


class Evaluator:
  """One ``config.evals.<name>`` entry. Subclasses set ``fields`` (their own fields and
  defaults), ``prompts`` (whether ``templates`` applies), ``title`` and ``run``."""
  fields: dict = {}
  prompts = False
  title = ""
  task_kinds: tuple[str, ...] = ()   # it needs at least one task of one of these kinds

  def unsupported(self, ctx) -> str | None:
    """Why the corpus cannot feed this evaluator (it declares no task of its kinds), or
    None: such an evaluator is left out of the round and the reason printed."""
    if self.task_kinds and not any(ctx.tasks[k] for k in self.task_kinds):
      return ("the corpus declares no " + " or ".join(f"{k} task" for k in self.task_kinds)
              + " (its tasks.json)")
    return None

  def __init__(self, name: str, entry: dict, defaults: dict):
    self.name = name
    for key, default in self.fields.items():
      setattr(self, key, entry.get(key, default))
    self.every = int(entry.get("every") or 0)
    if self.every < 0:
      raise ValueError(f"config.evals.{name}.every={self.every}: use N > 0, or 0 / None for "
                       "the end only")
    self.split = str(entry.get("split") or defaults["split"])
    self.batch_size = int(entry.get("batch_size") or defaults["batch_size"])
    self.templates = tuple(entry.get("templates") or defaults.get("templates")
                           or evaluate.DEFAULT_TEMPLATES)

  def needs(self) -> dict[str, set[str]]:
    """split -> caption pools whose text embeddings it needs (audio is always embedded)."""
    return {self.split: set()}

  def run(self, emb: dict, ctx) -> dict:
    """``emb[split]``: {"audio": [n, d], "text_<pool>": [n, d]}, rows in record order.
    Returns {suffix: value}; the section's key is the name followed by the suffix."""
    raise NotImplementedError


class ZeroShot(Evaluator):
  prompts = True
  task_kinds = ("binary",)

  def run(self, emb, ctx):
    audio, meta = emb[self.split]["audio"], ctx.metadata(self.split)
    zs = evaluate.zero_shot(audio, meta, ctx.tasks["binary"], ctx.embed_text, self.templates,
                            split=self.split)
    bal = zs["balanced_accuracy"]
    return {"": bal, "_accuracy": zs["accuracy"], "_f1": zs["f1"],
            "_macro_f1": zs["macro_f1"],
            "_mean": float(np.mean(list(bal.values()))) if bal else float("nan"),
            "_counts": zs["counts"],
            **_per_speaker(audio, meta, {"binary": ctx.tasks["binary"]}, ctx, self)}


class Retrieval(Evaluator):
  fields = dict(pool="global")

  def __init__(self, name, entry, defaults):
    super().__init__(name, entry, defaults)
    if self.pool not in ("global", "fine"):
      raise ValueError(f"config.evals.{name}.pool={self.pool!r}; use 'global' or 'fine'")
    self.title = "retrieval" + (" (fine-grained captions)" if self.pool == "fine" else "")

  def needs(self):
    return {self.split: {self.pool}}

  def run(self, emb, ctx):
    e = emb[self.split]
    return {"": evaluate.retrieval(e["audio"], e[f"text_{self.pool}"], split=self.split)}


class Multiclass(Evaluator):
  prompts = True
  task_kinds = ("multiclass",)

  def run(self, emb, ctx):
    audio, meta = emb[self.split]["audio"], ctx.metadata(self.split)
    return {"": evaluate.zero_shot_multiclass(audio, meta, ctx.tasks["multiclass"],
                                              ctx.embed_text, self.templates, split=self.split),
            **_per_speaker(audio, meta, {"multiclass": ctx.tasks["multiclass"]}, ctx, self)}


def _per_speaker(audio, meta, tasks, ctx, e) -> dict:
  """``{"_per_speaker": ...}``: which voices the evaluator's own calls got wrong
  (``evaluate.per_speaker``, for the report), or {} where clips name no speaker. Its
  prompts are the ones just scored, so ``ctx.embed_text`` (memoised) embeds nothing anew."""
  ps = evaluate.per_speaker(audio, meta, tasks, ctx.embed_text, e.templates, split=e.split)
  return {"_per_speaker": ps} if ps else {}


class Graded(Evaluator):
  prompts = True
  task_kinds = ("graded",)

  def run(self, emb, ctx):
    return {"": evaluate.graded(emb[self.split]["audio"], ctx.metadata(self.split),
                                ctx.tasks["graded"], ctx.embed_text, self.templates,
                                split=self.split)}


class LinearProbe(Evaluator):
  """Trained on ``train_split``'s embeddings (by the same model), tested on ``split``."""
  fields = dict(train_split="validation")
  task_kinds = ("binary", "multiclass")

  def needs(self):
    return {self.split: set(), self.train_split: set()}

  def run(self, emb, ctx):
    return {"": evaluate.linear_probes(emb[self.train_split]["audio"],
                                       ctx.metadata(self.train_split),
                                       emb[self.split]["audio"], ctx.metadata(self.split),
                                       ctx.tasks["binary"], ctx.tasks["multiclass"],
                                       split=self.split, train_split=self.train_split),
            "_train_split": self.train_split}


class Benchmark(Evaluator):
  """A standard benchmark (``evaluate.BENCHMARKS``: ``benchmark="esc50"``, ...) on another
  corpus, ``data`` (a data/ builder's output), by the model being trained, clip by clip
  through the API (``inference.Model.embed_audio``); its sections nest under the name."""
  fields = dict(benchmark=None, data=None)
  prompts = True

  def __init__(self, name, entry, defaults):
    super().__init__(name, entry, defaults)
    if self.benchmark not in evaluate.BENCHMARKS:
      raise ValueError(f"config.evals.{name}.benchmark={self.benchmark!r}; use one of "
                       f"{sorted(evaluate.BENCHMARKS)}")
    if not self.data:
      raise ValueError(f"config.evals.{name}.data: not set; the corpus folder the "
                       f"benchmark reads (data/{self.benchmark}.py's output)")
    self.title = f"{self.benchmark} on {self.data}"
    self.explicit_templates = tuple(entry["templates"]) if entry.get("templates") else None

  def needs(self):
    return {}   # it reads its own corpus

  def run(self, emb, ctx):
    return {"": evaluate.run_benchmark(ctx.model, self.benchmark, self.data,
                                       self.explicit_templates)}


# config.evals.<name>.type -> evaluator; the order is the printed table's.
REGISTRY = {"zero_shot": ZeroShot, "multiclass": Multiclass, "retrieval": Retrieval,
            "graded": Graded, "linear_probe": LinearProbe, "benchmark": Benchmark}


def build(config: Any) -> list[Evaluator]:
  """The evaluators of ``config.evals``, every entry checked against ``REGISTRY``."""
  defaults = dict(config.get("eval") or {})
  unknown = sorted(set(defaults) - set(DEFAULTS))
  if unknown:
    raise ValueError(f"config.eval.{unknown[0]}: unknown field; config.eval holds the "
                     f"defaults {DEFAULTS} of the evaluators, which are "
                     "config.evals.<name> = dict(type=..., every=...)")
  out = []
  for name, entry in sorted(dict(config.get("evals") or {}).items()):
    entry = dict(entry or {})
    kind = entry.get("type")
    if kind not in REGISTRY:
      raise ValueError(f"config.evals.{name}.type={kind!r}; use one of {list(REGISTRY)}")
    cls = REGISTRY[kind]
    allowed = COMMON + (("templates",) if cls.prompts else ()) + tuple(cls.fields)
    for field in sorted(set(entry) - set(allowed)):
      raise ValueError(f"config.evals.{name}.{field}: unknown field of type {kind!r}; "
                       f"it takes {list(allowed)}")
    missing = [k for k in ("split", "batch_size") if not entry.get(k) and not defaults.get(k)]
    if missing:
      raise ValueError(f"config.evals.{name}.{missing[0]}: not set, and config.eval has "
                       "no default")
    e = cls(name, entry, defaults)
    e.kind = kind
    if e.split != defaults.get("split"):   # tell it apart from one on the default split
      e.title = f"{e.title or evaluate.TITLES[kind]} on {e.split}"
    out.append(e)
  return sorted(out, key=lambda e: (list(REGISTRY).index(e.kind), e.name))


class Evaluators:
  """The evaluators of one run; ``run`` embeds each split they need once per round."""

  def __init__(self, config: Any, trainer, tokenizer):
    self.config, self.trainer, self.tokenizer = config, trainer, tokenizer
    self.evaluators = build(config)
    self.total = int(config.total_steps)
    self.path = config.input.sources[0]["path"]
    self._tasks = None
    self._datasets, self._metadata, self._api = {}, {}, None

  def __bool__(self):
    return bool(self.evaluators)

  def due(self, step: int) -> list[Evaluator]:
    """The evaluators to run after ``step``: every one at the last step."""
    return [e for e in self.evaluators
            if step >= self.total or (e.every and step % e.every == 0)]

  def run(self, variables, step: int) -> dict:
    """One round: the results of the evaluators due at ``step`` (flat sections, see the
    module docstring); ``variables``: ``TrainState.variables()``."""
    due = self.due(step)
    if self._tasks is None:
      self._tasks = records.read_tasks(self.path)   # the corpus's own, not its path's
    ctx = _Context(self._tasks, self.metadata, None, None)
    skipped = {e.name: why for e in due if (why := e.unsupported(ctx))}
    due = [e for e in due if e.name not in skipped]
    if not due:
      return {"skipped": skipped} if skipped else {}
    needs: dict[str, set[str]] = {}
    sizes: dict[str, int] = {}
    for e in due:
      for split, pools in e.needs().items():
        needs.setdefault(split, set()).update(pools)
        sizes[split] = max(sizes.get(split, 0), e.batch_size)
    emb = {split: self.embed_split(variables, split, sorted(pools), sizes[split])
           for split, pools in needs.items()}
    ctx.model = self._model(variables)
    # Each text once per round: the per-speaker breakdowns ask for the prompts just scored.
    ctx.embed_text = evaluate.TextCache(ctx.model).embed_text
    out = {"skipped": skipped} if skipped else {}
    for e in due:
      out.update({e.name + suffix: v for suffix, v in e.run(emb, ctx).items()})
    out["clips"] = {split: int(len(e["audio"])) for split, e in emb.items()}
    return out

  def table(self, results: dict) -> str:
    """``evaluate.format_table`` of ``results``, one section per evaluator."""
    return evaluate.format_table(results, [(e.name, e.kind, e.title or None)
                                           for e in self.evaluators],
                                 tasks=self._tasks)

  # -- embeddings

  def metadata(self, split: str) -> list[dict]:
    if split not in self._metadata:
      self._metadata[split] = evaluate.split_metadata(self.path, split)
    return self._metadata[split]

  def _model(self, variables):
    """The inference API on ``variables``: one ``inference.Model``, its compiled functions
    reused by every round (a new Model per round would recompile them)."""
    from jaxclap.inference import Model
    if self._api is None:
      self._api = Model(self.config, variables, self.tokenizer, self.trainer.model)
    return self._api.with_variables(variables)

  def _dataset(self, split: str, pools: tuple[str, ...], batch_size: int):
    from jaxclap import input_pipeline
    key = (split, pools, batch_size)
    if key not in self._datasets:
      spec = dict(self.config.input.sources[0], split=split)
      self._datasets[key] = input_pipeline.eval_dataset(
          self.config.input, self.tokenizer, spec, batch_size=batch_size,
          process_index=jax.process_index(), process_count=jax.process_count(),
          extra_pools=tuple(p for p in pools if p != "global"))
    return self._datasets[key]

  def embed_split(self, variables, split: str, pools=(), batch_size: int | None = None
                  ) -> dict:
    """{"audio": [n, d], and "text_<pool>" for each caption pool}: every clip of
    ``split`` of the first source, rows in record order (as ``evaluate.split_metadata``).
    Audio as ``inference.Model.embed_audio``: each window through its ``embed_windows``,
    a clip's windows pooled by ``windows.pool``; text: one caption per clip."""
    api = self._model(variables)
    batch_size = int(batch_size or self.config.eval.batch_size)
    ds = self._dataset(split, tuple(pools), batch_size)
    n = len(self.metadata(split))
    text_batches = -(-n // batch_size)   # the later batches hold windows only
    text_keys = {p: ("text_ids", "text_mask") if p == "global" else
                 (f"text_ids_{p}", f"text_mask_{p}") for p in pools}
    audio, owner, clips, text = [], [], [], {p: [] for p in pools}
    mesh = self.trainer.mesh
    with nn.logical_axis_rules(self.trainer.rules):
      for i in range(len(ds)):
        local = ds[i]
        keys = ("audio", "audio_len") + (sum(text_keys.values(), ()) if i < text_batches
                                         else ())
        batch = sharding.global_batch({k: local[k] for k in keys}, mesh)
        audio.append(_all_rows(api.embed_windows(batch["audio"], batch["audio_len"])))
        owner.append(_all_rows(local["owner"]))
        if pools and i < text_batches:
          for p, (ids, mask) in text_keys.items():
            text[p].append(_all_rows(api.embed_text_ids(batch[ids], batch[mask])))
          clips.append(np.where(_all_rows(local["valid"]).astype(bool),
                                _all_rows(local["record"]), -1))
    owner = np.concatenate(owner)
    keep = owner >= 0
    out = {"audio": windows_lib.pool(np.concatenate(audio)[keep], owner[keep], n,
                                     f"evaluation of split {split!r}")}
    if pools:
      clips = np.concatenate(clips).astype(np.int64)   # gathered rows may come back int32
      order = np.argsort(np.where(clips >= 0, clips, np.iinfo(np.int64).max))[:n]
      for p in pools:
        out[f"text_{p}"] = np.concatenate(text[p])[order]
    return out


class _Context:
  """What evaluators read besides embeddings: the corpus's tasks, a split's metadata, and
  the API's text path for prompts."""

  def __init__(self, tasks, metadata, embed_text, model=None):
    self.tasks = {k: dict(tasks.get(k) or {}) for k in ("binary", "multiclass", "graded")}
    self.metadata, self.embed_text, self.model = metadata, embed_text, model


def scalars(results: dict) -> dict[str, float]:
  """The finite float leaves of ``results``, keys joined by "/" (counts, which are ints,
  and strings left out): what goes to TensorBoard and metrics.jsonl."""
  out = {}

  def walk(prefix, v):
    if isinstance(v, dict):
      for k, x in v.items():
        walk(f"{prefix}/{k}", x)
    elif isinstance(v, float) and math.isfinite(v):
      out[prefix] = v

  for k, v in results.items():
    if not k.endswith("_per_speaker"):   # counts per voice: the report's, not a curve
      walk(k, v)
  return out


def _all_rows(x) -> np.ndarray:
  """Every process's rows of a batch-sharded array (or of per-process numpy rows)."""
  if jax.process_count() == 1:
    return np.asarray(x)
  from jax.experimental import multihost_utils
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))
