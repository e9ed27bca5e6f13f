"""The run folder: its config, its checkpoints, and reading a model back from them.

A run folder (``--workdir``) holds ``config.json`` (what the model is rebuilt from),
``checkpoints/<step>/`` (Orbax: item ``state`` = the whole ``TrainState``, item ``data`` =
the grain iterator's position), ``metrics.jsonl``, ``tensorboard/``, ``results.json`` and,
for a corpus-trained vocabulary, ``tokenizer/``. This module is the one place that opens
it:

* ``manager`` / ``save`` / ``restore``: the trainer's periodic checkpoints and resume.
* ``restore_variables(workdir, abstract)``: the params and batch statistics of a run's
  latest checkpoint into given shapes/shardings (``init_from``, ``open_run``), without
  its optimiser state, step or data position.
* ``open_run(workdir)`` -> ``(config, variables)``: what inference and export need. It
  builds no optimiser and no trainer; the shapes come from the model alone.

It depends on the models and on nothing that trains, so inference and export never
import the trainer.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

CONFIG_FILE = "config.json"
ITEMS = ("state", "data")


def folder(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), "checkpoints")


def manager(workdir: str, config: Any = None):
  """The run's ``CheckpointManager``; with ``config`` (training) it keeps
  ``config.keep_checkpoints`` and creates the folder, without (reading) it only reads."""
  import orbax.checkpoint as ocp
  if config is None:
    return ocp.CheckpointManager(folder(workdir), item_names=ITEMS)
  return ocp.CheckpointManager(
      folder(workdir), item_names=ITEMS,
      options=ocp.CheckpointManagerOptions(max_to_keep=int(config.keep_checkpoints),
                                           create=True))


def save(mgr, state: Any, data_iter) -> None:
  """Saves the train state and the grain iterator's position at ``state.step``."""
  import grain
  import orbax.checkpoint as ocp
  mgr.save(int(state.step), args=ocp.args.Composite(
      state=ocp.args.StandardSave(state), data=grain.checkpoint.CheckpointSave(data_iter)))


def restore(mgr, abstract_state: Any, data_iter, step: int) -> Any:
  """The state saved at ``step``, straight into ``abstract_state``'s shardings; the
  iterator is moved to its saved position in place."""
  import grain
  import orbax.checkpoint as ocp
  restored = mgr.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract_state),
      data=grain.checkpoint.CheckpointRestore(data_iter)))
  return restored["state"]


def restore_variables(workdir: str, abstract: dict, step: int | None = None,
                      field: str = "workdir") -> tuple[dict, dict, int]:
  """``(params, model_state, step)`` of a run's checkpoint (latest, or ``step``),
  restored into ``abstract = {"params": ..., "model_state": ...}`` (ShapeDtypeStructs,
  with shardings). The optimiser state, step counter and data position are not read,
  so the run may have used another optimiser or loss; its model must be this one.
  ``field`` names the setting the workdir came from, for the errors."""
  import orbax.checkpoint as ocp
  mgr = manager(workdir)
  step = mgr.latest_step() if step is None else step
  if step is None:
    raise FileNotFoundError(f"{field}={workdir!r}: no checkpoint in {folder(workdir)}")
  try:
    got = mgr.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
        abstract, restore_args=ocp.checkpoint_utils.construct_restore_args(abstract),
        partial_restore=True)))["state"]
  except (ValueError, KeyError) as e:
    raise ValueError(f"{field}={workdir!r} (step {step}): its parameters do not fit this "
                     f"model: {e}") from e
  logging.info("read %s step %d", workdir, step)
  # Orbax leaves an empty subtree out: a model without batch statistics has no entry.
  model_state = dict(got["model_state"]) if abstract["model_state"] else {}
  return dict(got["params"]), model_state, step


def write_config(workdir: str, config: Any) -> None:
  with open(os.path.join(workdir, CONFIG_FILE), "w") as f:
    f.write(config.to_json_best_effort(indent=2))


def read_config(workdir: str) -> ml_collections.ConfigDict:
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    raise FileNotFoundError(f"{workdir}: no {CONFIG_FILE}; is it a jaxclap run folder?")
  with open(path) as f:
    return ml_collections.ConfigDict(json.load(f))


def open_run(workdir: str, step: int | None = None, device: Any = None
             ) -> tuple[ml_collections.ConfigDict, dict]:
  """``(config, variables)`` of a run folder: its config and the latest (or ``step``)
  checkpoint's ``{"params": ..., **model_state}`` (batch statistics for batch-norm
  towers) on ``device`` (default: this process's first device)."""
  from jaxclap.models import two_towers
  config = read_config(workdir)
  model = two_towers.from_config(config.model, compute_dtype(config))
  rng = jax.random.PRNGKey(0)
  shapes = jax.eval_shape(lambda: nn.meta.unbox(init_variables(model, config, rng, rng)))
  sharding = jax.sharding.SingleDeviceSharding(device or jax.local_devices()[0])
  shapes = jax.tree_util.tree_map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), shapes)
  # The checkpoint's TrainState keeps batch statistics under model_state.
  abstract = {"params": shapes.pop("params"), "model_state": shapes}
  params, model_state, _ = restore_variables(workdir, abstract, step)
  return config, {"params": params, **model_state}


# ---------------------------------------------------------------- the model's variables


def compute_dtype(config: Any):
  return jnp.bfloat16 if config.compute_dtype == "bfloat16" else jnp.float32


def dummy_batch(config: Any, batch: int = 2) -> dict:
  """A batch of the training input's shapes (zeros): what the model is initialised on."""
  c = config.input
  samples = int(round(float(c.clip_seconds) * int(c.sample_rate)))
  return {"audio": jnp.zeros((batch, samples), jnp.float32),
          "audio_len": jnp.full((batch,), samples, jnp.int32),
          "text_ids": jnp.zeros((batch, int(c.max_text_len)), jnp.int32),
          "text_mask": jnp.ones((batch, int(c.max_text_len)), jnp.int32)}


def init_variables(model: Any, config: Any, rng: jax.Array, mae_rng: jax.Array) -> dict:
  """``{"params": ..., **model_state}`` of a fresh model (boxed with logical axis
  names); a ViT with an MAE decoder gets its decoder exactly when a loss term uses it
  (``terms.uses_decoder``), for training, ``init_from`` and ``open_run`` alike."""
  from jaxclap import terms
  from jaxclap.models import two_towers
  batch = dummy_batch(config)
  spec, frames = two_towers.spectrogram(config.features, batch["audio"], batch["audio_len"])
  return model.init(rng, spec, frames, batch["text_ids"], batch["text_mask"],
                    mae_rng if terms.uses_decoder(config) else None)
