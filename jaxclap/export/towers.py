"""The towers format: a run exported tower by tower, each tower as the PyTorch class that
matches it (its registry record's ``export_torch``), the rest (front end, heads, pooling,
windows) as files ``jaxclap.torch_model.ClapModelTorch`` reads. Every run whose audio and
text towers register an export goes this way unless transformers' ``ClapModel`` holds it
(``jaxclap.export.clap``).
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Mapping

import numpy as np

from jaxclap.export.tokenizer import text_tokenizer
from jaxclap.models import convert, transformer
from jaxclap.models import towers as registry
from jaxclap.models.towers import HF_ACT, NotExportable

TOWERS_FORMAT = "jaxclap-towers"
HEADS_FILE, FRONTEND_FILE = "heads.safetensors", "frontend.safetensors"
LOG_100 = math.log(100.0)


def variable_shapes(config: Any) -> dict:
  """Shapes of the run's variables, ``{"params", "batch_stats"}``, without creating them.
  Built by training's own ``checkpoints.init_variables``, so the MAE decoder is there
  exactly when training created it (``terms.uses_decoder``: one criterion)."""
  import flax.linen as nn
  import jax
  from jaxclap import checkpoints
  from jaxclap.models import two_towers
  model = two_towers.from_config(config.model)
  init = lambda: checkpoints.init_variables(model, config, jax.random.PRNGKey(0),
                                            jax.random.PRNGKey(1))
  return nn.meta.unbox(jax.eval_shape(init))


def _exporting(config: Any, side: str) -> registry.Tower:
  name = config.model[side].name
  try:
    return registry.get(name, side)
  except ValueError:
    exported = sorted(n for n, t in registry.all_towers().items() if t.side == side)
    raise NotExportable(f"config.model.{side}.name={name!r}: the towers format exports "
                        f"the {side} towers {exported}") from None


def check(config: Any) -> None:
  """``NotExportable`` unless the towers format reproduces the run exactly."""
  f = config.features
  for side in registry.SIDES:
    _exporting(config, side).check_export(config)
  kind = f.kind
  if kind != "logmel":
    raise NotExportable(f"config.features.kind={kind!r}: the PyTorch front end computes the "
                        "log-mel ('logmel') only")
  target = f.target_rate
  if target and int(target) != int(f.sample_rate):
    raise NotExportable(f"config.features.target_rate={target} != sample_rate="
                        f"{f.sample_rate}: jaxclap's on-device resampler is not exported")
  if int(f.sample_rate) != int(config.input.sample_rate):
    raise NotExportable(f"config.features.sample_rate={f.sample_rate} != "
                        f"config.input.sample_rate={config.input.sample_rate}")
  if config.input.pad not in ("zero", "repeat"):
    raise NotExportable(f"config.input.pad={config.input.pad!r}")
  if config.model.head not in ("linear", "mlp"):
    raise NotExportable(f"config.model.head={config.model.head!r}")
  if str(config.model.head_activation) not in HF_ACT:
    raise NotExportable(f"config.model.head_activation={config.model.head_activation!r}")


def _heads_to_torch(params: Mapping) -> dict[str, np.ndarray]:
  out = {}
  for head in ("audio_head", "text_head"):
    for layer, p in params[head].items():
      out[f"{head}.{layer}.weight"] = np.ascontiguousarray(np.asarray(p["kernel"], np.float32).T)
      out[f"{head}.{layer}.bias"] = np.asarray(p["bias"], np.float32)
  out["logit_scale"] = np.asarray(params["logit_scale"], np.float32).reshape(())
  return out


def metadata(config: Any, step: int, workdir: str, audio: dict, text: dict) -> dict:
  """``jaxclap_export.json``; ``audio`` / ``text``: the towers' own entries."""
  f = config.features
  window, _, usable = registry.window_frames(config)
  n_fft = int(f.n_fft)
  fmax = f.fmax
  return {
      "format": TOWERS_FORMAT, "version": 1, "workdir": os.path.abspath(workdir),
      "step": int(step),
      "input": {"sample_rate": int(config.input.sample_rate), "window": window,
                "hop": max(1, window // 2), "pad": str(config.input.pad),
                "max_text_len": int(config.input.max_text_len)},
      "features": {"kind": "logmel", "n_fft": n_fft,
                   "win_length": int(f.win_length or n_fft),
                   "hop_length": int(f.hop_length), "n_mels": int(f.n_mels),
                   "fmin": float(f.fmin), "fmax": None if fmax is None else float(fmax),
                   "pad_mode": str(f.pad_mode), "power": 2.0,
                   "amin": 1e-10, "norm_mean": float(f.norm_mean), "norm_std": float(f.norm_std),
                   "frames_multiple": int(f.frames_multiple or 1),
                   "frames": usable, "file": FRONTEND_FILE},
      "audio": audio, "text": text,
      "heads": {"file": HEADS_FILE, "kind": str(config.model.head),
                "activation": str(config.model.head_activation),
                "logit_scale_max": LOG_100},
      "config": json.loads(config.to_json_best_effort()),
  }


def _tower_variables(variables: Mapping, side: str) -> dict:
  """One tower's ``{"params"[, "batch_stats"]}`` out of the model's variables."""
  import flax.linen as nn
  # PyTorch names layers one by one: scanned stacks (scan_layers) are unrolled.
  v = transformer.unstack_layers(nn.meta.unbox(dict(variables)))
  out = {"params": v["params"][side]}
  if side in v.get("batch_stats", {}):
    out["batch_stats"] = v["batch_stats"][side]
  return out


def export_towers(workdir: str, out: str, step: int | None = None, model: Any = None) -> str:
  """Writes the run tower by tower (see ``jaxclap.torch_model``); ``model``: the run
  already loaded by ``jaxclap.load`` (default: load it). Writes:

    audio/, text/   each tower as its registry record's ``torch_class`` (config.json +
                    model.safetensors, loaded strictly before saving); text/ also holds
                    the tokenizer
    heads.safetensors      {audio,text}_head.{proj|fc_in|fc_out}.{weight,bias}, logit_scale
    frontend.safetensors   the STFT window and the Slaney mel matrix jaxclap uses
    jaxclap_export.json    front end, windows, padding, pooling, heads and the run config
  plus any file a tower keeps beside its folder (the ViT's MAE decoder).
  """
  import ml_collections
  import safetensors.numpy
  from jaxclap import audio as audio_lib
  from jaxclap import inference

  with open(os.path.join(workdir, "config.json")) as f:
    run_config = ml_collections.ConfigDict(json.load(f))
  check(run_config)
  tok = text_tokenizer(run_config)
  if model is None:
    model = inference.load(workdir, step)
  if step is None:
    import orbax.checkpoint as ocp
    step = ocp.CheckpointManager(os.path.join(os.path.abspath(workdir),
                                              "checkpoints")).latest_step()
  config = model.config
  shapes = variable_shapes(config)
  os.makedirs(out, exist_ok=True)
  entries = {}
  for side in registry.SIDES:
    tv = _tower_variables(model.variables, side)
    if side in shapes.get("batch_stats", {}) and "batch_stats" not in tv:
      raise convert.CheckpointMismatch(f"{workdir}: no batch_stats for the "
                                       f"{config.model[side].name} {side} tower")
    entries[side] = _exporting(config, side).export_torch(config, tv, out)
  tok.save_pretrained(os.path.join(out, "text"))

  # Heads, logit scale, front end.
  import flax.linen as nn
  safetensors.numpy.save_file(_heads_to_torch(nn.meta.unbox(dict(model.variables["params"]))),
                              os.path.join(out, HEADS_FILE))
  f = config.features
  n_fft = int(f.n_fft)
  win = int(f.get("win_length") or n_fft)
  fmax = f.fmax
  sr = int(f.sample_rate)
  safetensors.numpy.save_file({
      "window": np.asarray(audio_lib._stft_window("hann", win), np.float32),
      "mel_filters": np.asarray(audio_lib._mel_basis(
          float(sr), n_fft, int(f.n_mels), float(f.fmin), float(sr / 2 if fmax is None else fmax),
          False, "slaney"), np.float32)}, os.path.join(out, FRONTEND_FILE))
  with open(os.path.join(out, "jaxclap_export.json"), "w") as fh:
    json.dump(metadata(config, step, workdir, entries["audio"], entries["text"]), fh, indent=2)
  return out


def import_towers(folder: str, meta: Mapping) -> dict:
  """A towers-format folder -> ``{"params": ...}`` (plus ``"batch_stats"`` for batch-norm
  towers), identical to the exported variables."""
  import ml_collections
  import safetensors.numpy
  config = ml_collections.ConfigDict(meta["config"])
  full = variable_shapes(config)
  target = full["params"]
  params, stats = {}, {}
  for side in registry.SIDES:
    tv = {"params": target[side]}
    if side in full.get("batch_stats", {}):
      tv["batch_stats"] = full["batch_stats"][side]
    flat = transformer.unstack_layers(tv)
    got = transformer.stack_layers(_exporting(config, side).import_export(config, folder, flat),
                                   tv)
    params[side] = got["params"]
    if "batch_stats" in got:
      stats[side] = got["batch_stats"]
  hsd = safetensors.numpy.load_file(os.path.join(folder, HEADS_FILE))
  params["logit_scale"] = np.asarray(hsd.pop("logit_scale"))
  for head in ("audio_head", "text_head"):
    params[head] = {}
    for layer, p in target[head].items():
      w, b = hsd.pop(f"{head}.{layer}.weight"), hsd.pop(f"{head}.{layer}.bias")
      if tuple(w.shape[::-1]) != tuple(p["kernel"].shape):
        raise convert.CheckpointMismatch(f"{folder}: {head}.{layer}.weight has shape {w.shape}")
      params[head][layer] = {"kernel": np.ascontiguousarray(w.T), "bias": b}
  if hsd:
    raise convert.CheckpointMismatch(f"{folder}/{HEADS_FILE}: unexpected keys {sorted(hsd)}")
  return {"params": params, "batch_stats": stats} if stats else {"params": params}
