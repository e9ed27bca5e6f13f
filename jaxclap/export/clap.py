"""transformers' CLAP format: a run that ``ClapModel`` can hold, as ``ClapModel`` +
``ClapProcessor``, served by transformers alone; ``import_clap`` is the way back.


What can be exported: an HTS-AT audio tower (``model.audio.name="htsat"``, no fusion)
with a RoBERTa-style ``BertTower`` (``padding_idx`` set, ``pooling="pooler"``) and MLP
heads whose hidden width is ``embed_dim`` (``ClapProjectionLayer`` is Linear(hidden ->
embed_dim) -> activation -> Linear(embed_dim -> embed_dim)): the demo's
``audio=htsat,text=roberta`` with ``--config.model.head_hidden`` = ``embed_dim``. The
heads' activation becomes ``projection_hidden_act`` (LAION-CLAP's is "relu"; transformers
builds any of relu / gelu / gelu_pytorch_tanh / silu, so each of ours maps exactly).
Anything else is refused up front with an error naming the config field.

What is written to ``out``:
  config.json, model.safetensors   ``ClapModel``: text_model.* (inverse BERT rules, with
                                   the position_ids / token_type_ids buffers),
                                   audio_model.audio_encoder.* (``htsat.export_torch``,
                                   batch-norm statistics included), text_projection /
                                   audio_projection linear1 / linear2 from our heads,
                                   logit_scale_a = logit_scale_t = our logit_scale
                                   clamped to [0, ln 100] as training uses it; loaded
                                   into ``ClapModel`` with ``strict=True`` before saving
  processor and tokenizer files    ``ClapProcessor``: a ``ClapFeatureExtractor`` set to
                                   compute jaxclap's log-mel (below) and the run's
                                   byte-level BPE as ``RobertaTokenizerFast`` (ids
                                   checked equal to jaxclap's before anything is written)
  jaxclap_export.json              the run's config and step (``import_clap`` reads it)

The front end. transformers' ``ClapFeatureExtractor`` (``truncation="rand_trunc"``) is a
librosa-style log-mel: periodic Hann window as long as the FFT, reflect centre padding,
Slaney mel filters, ``10 log10(max(mel, 1e-10))``. So jaxclap's features must use
``win_length == n_fft`` and ``pad_mode="reflect"`` (what the demo's htsat setting uses),
``n_mels == model.audio.num_mel_bins`` and an integer ``input.clip_seconds``
(``max_length_s``). The extractor's sample rate is ``features.target_rate``: jaxclap
resamples audio at other rates on the device, transformers' extractor refuses it, so
resample first. Short clips are repeated then zero-padded (``input.pad="repeat"`` ->
``padding="repeatpad"``) or zero-padded (``"zero"`` -> ``"pad"``), as jaxclap does.
jaxclap's normalisation ``(dB - norm_mean) / norm_std`` is folded into HTS-AT's first
batch norm (``bn0``, per mel bin, running statistics at inference: exact algebra, float64
then rounded once), so the exported model takes transformers' raw dB features. Measured on
the runlocal demo (tests/test_export.py): features within 5e-4 dB (numpy's complex64 STFT
against XLA's float32 one), embeddings and zero-shot probabilities within 3e-7.

Limitation: clips longer than ``input.clip_seconds``. jaxclap cuts them into windows
(half-window hop) and averages the windows' embeddings; ``ClapFeatureExtractor`` with
``rand_trunc`` embeds ONE random crop of the window's length. Embeddings agree for clips
no longer than the window; for longer clips call the model once per window and average
(as ``jaxclap.inference`` does) to get jaxclap's answer. Likewise texts: jaxclap cuts a
caption to ``input.max_text_len`` tokens; the exported tokenizer has that
``model_max_length`` but, as any transformers tokenizer, truncates only when asked
(``truncation=True``; the zero-shot pipeline does not), so prompts longer than that differ.
Through ``ClapProcessor`` pass it as ``text_kwargs={"truncation": True}``: a bare
``truncation=`` reaches the feature extractor too, where it names the crop mode.

The way back: ``import_clap(out)`` reads such a folder into jaxclap variables
(``{"params", "batch_stats"}``), un-folding bn0 with the config's normalisation; the
round trip is bitwise when ``norm_mean=0, norm_std=1`` (the demo's htsat setting, where
the fold is the identity) and within float32 rounding of bn0's mean and scale otherwise
(one rounding each way). A logit_scale outside [0, ln 100] comes back clamped: that is
the value training and inference use.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Mapping

import flax.linen as nn
import numpy as np

from jaxclap.export.towers import LOG_100, variable_shapes
from jaxclap.models import bert, convert, htsat, transformer
from jaxclap.models import towers as registry
from jaxclap.models.towers import HF_ACT, NotExportable

AUDIO_PREFIX = "audio_model." + htsat.TORCH_PREFIX
TEXT_PREFIX = "text_model."


# ----------------------------------------------------------------- config -> transformers


def _feature_rate(config: Any) -> int:
  f = config.features
  return int(f.target_rate or f.sample_rate)


def feature_extractor_kwargs(config: Any) -> dict:
  """``ClapFeatureExtractor`` arguments computing ``config.features``' log-mel, or
  ``NotExportable`` naming the field that transformers' front end cannot reproduce."""
  f, inp = config.features, config.input
  kind = f.kind
  if kind != "logmel":
    raise NotExportable(f"config.features.kind={kind!r}: ClapFeatureExtractor computes a "
                        "log-mel ('logmel') only")
  n_fft, win = int(f.n_fft), int(f.win_length or f.n_fft)
  if win != n_fft:
    raise NotExportable(f"config.features.win_length={win} != n_fft={n_fft}: "
                        "ClapFeatureExtractor's window is always fft_window_size long")
  pad_mode = f.pad_mode
  if pad_mode != "reflect":
    raise NotExportable(f"config.features.pad_mode={pad_mode!r}: ClapFeatureExtractor pads "
                        "the STFT with 'reflect' only")
  rate, hop = _feature_rate(config), int(f.hop_length)
  seconds = float(inp.clip_seconds)
  if seconds != int(seconds):
    # max_length_s * sampling_rate becomes a float sample count, which numpy's padding
    # and slicing in the extractor reject.
    raise NotExportable(f"config.input.clip_seconds={seconds}: ClapFeatureExtractor's "
                        "max_length_s must be a whole number of seconds")
  multiple = int(f.frames_multiple or 1)
  frames = int(seconds) * rate // hop + 1
  if frames % multiple:
    raise NotExportable(f"config.features.frames_multiple={multiple} crops a window's "
                        f"{frames} frames; ClapFeatureExtractor keeps them all")
  pad = inp.pad
  if pad not in ("repeat", "zero"):
    raise NotExportable(f"config.input.pad={pad!r}: expected 'repeat' or 'zero'")
  fmax = f.fmax
  return dict(
      feature_size=int(f.n_mels), sampling_rate=rate, hop_length=hop,
      max_length_s=int(seconds), fft_window_size=n_fft, padding_value=0.0,
      return_attention_mask=False,          # HTS-AT sees a fixed-size image, no mask
      frequency_min=float(f.fmin), frequency_max=float(rate / 2 if fmax is None else fmax),
      top_db=None, truncation="rand_trunc",
      # "repeatpad": whole repeats, then zeros (jaxclap's "repeat"); any other value is
      # plain zero padding in the extractor, "pad" by its docstring.
      padding="repeatpad" if pad == "repeat" else "pad")


def _tower_of_class(config: Any, side: str, cls: type, what: str):
  """The run's ``side`` tower, built, if it is the one ClapModel has (a ``cls``)."""
  tower_cfg = config.model[side]
  registered = registry.all_towers().get(tower_cfg.name)
  if registered is None or registered.module is not cls:
    raise NotExportable(f"config.model.{side}.name={tower_cfg.name!r}: {what}")
  return registry.module(tower_cfg)


def _audio_config(config: Any) -> dict:
  tower = _tower_of_class(config, "audio", htsat.HTSAT, "transformers' ClapModel has an "
                          "HTS-AT audio tower ('htsat') only")
  htsat.check_export(config)
  return htsat.config_to_hf(tower)


def _text_config(config: Any) -> dict:
  tower = _tower_of_class(config, "text", bert.BertTower, "ClapModel's text tower is a "
                          "RoBERTa encoder (a BertTower: 'roberta')")
  if tower.padding_idx is None:
    raise NotExportable("config.model.text.padding_idx is None: ClapTextModel numbers "
                        "positions RoBERTa's way, from padding_idx + 1 (set padding_idx)")
  if tower.pooling != "pooler":
    raise NotExportable(f"config.model.text.pooling={tower.pooling!r}: ClapModel projects "
                        "the tanh pooler's output ('pooler')")
  if tower.activation not in HF_ACT:
    raise NotExportable(f"config.model.text.activation={tower.activation!r} has no "
                        "transformers equivalent")
  return dict(
      vocab_size=int(tower.vocab_size), hidden_size=int(tower.hidden_size),
      num_hidden_layers=int(tower.depth), num_attention_heads=int(tower.num_heads),
      intermediate_size=int(tower.mlp_dim), hidden_act=HF_ACT[tower.activation],
      max_position_embeddings=int(tower.max_len), type_vocab_size=int(tower.type_vocab_size),
      layer_norm_eps=float(tower.layer_norm_eps), pad_token_id=int(tower.padding_idx),
      hidden_dropout_prob=float(tower.dropout_rate),
      attention_probs_dropout_prob=float(tower.dropout_rate),
      position_embedding_type="absolute")


def _head_activation(config: Any) -> str:
  m = config.model
  if m.head != "mlp":
    raise NotExportable(f"config.model.head={m.head!r}: ClapProjectionLayer is "
                        "Linear -> activation -> Linear ('mlp')")
  hidden = m.head_hidden
  if hidden is not None and int(hidden) != int(m.embed_dim):
    raise NotExportable(f"config.model.head_hidden={hidden} != model.embed_dim={m.embed_dim}: "
                        "ClapProjectionLayer's hidden width is projection_dim")
  act = str(m.head_activation)
  if act not in HF_ACT:
    raise NotExportable(f"config.model.head_activation={act!r} has no transformers "
                        "equivalent")
  return HF_ACT[act]


def clap_config(config: Any, logit_scale: float = math.log(1 / 0.07), tokenizer: Any = None):
  """``transformers.ClapConfig`` for the run ``config`` (raises ``NotExportable`` naming
  the field that has no equivalent). ``tokenizer``: the exported transformers tokenizer,
  for the bos / eos ids (default: RoBERTa's 0 and 2)."""
  import transformers
  act = _head_activation(config)
  text = _text_config(config)
  if tokenizer is not None:
    text.update(bos_token_id=int(tokenizer.cls_token_id), eos_token_id=int(tokenizer.sep_token_id))
  return transformers.ClapConfig(
      text_config=text, audio_config=_audio_config(config),
      projection_dim=int(config.model.embed_dim), projection_hidden_act=act,
      logit_scale_init_value=float(math.exp(logit_scale)))


def check(config: Any) -> None:
  """Raises ``NotExportable`` (naming the config field) unless the run exports exactly."""
  clap_config(config)
  feature_extractor_kwargs(config)


# ------------------------------------------------------------------------- parameters


def fold_bn0(bn0: Mapping[str, np.ndarray], stats: Mapping[str, np.ndarray], mean: Any,
             std: Any) -> tuple[dict, dict]:
  """bn0 applied to ``(x - mean) / std`` == bn0' applied to the raw ``x``: the running mean
  becomes ``mean + std * mu`` and the scale ``gamma / std`` (variance and bias unchanged),
  since ``((x - m) / s - mu) g / sqrt(v + eps) = (x - (m + s mu)) (g / s) / sqrt(v + eps)``.
  Computed in float64 and rounded to float32 once. Returns (params, batch_stats)."""
  s = np.asarray(std, np.float64)
  if np.any(s == 0):
    raise NotExportable("config.features.norm_std is 0")
  m = np.asarray(mean, np.float64)
  scale = np.asarray(bn0["scale"], np.float64) / s
  mu = m + s * np.asarray(stats["mean"], np.float64)
  return ({"scale": scale.astype(np.float32), "bias": np.asarray(bn0["bias"], np.float32)},
          {"mean": mu.astype(np.float32), "var": np.asarray(stats["var"], np.float32)})


def unfold_bn0(bn0: Mapping[str, np.ndarray], stats: Mapping[str, np.ndarray], mean: Any,
               std: Any) -> tuple[dict, dict]:
  """The inverse of ``fold_bn0``."""
  s = np.asarray(std, np.float64)
  m = np.asarray(mean, np.float64)
  scale = np.asarray(bn0["scale"], np.float64) * s
  mu = (np.asarray(stats["mean"], np.float64) - m) / s
  return ({"scale": scale.astype(np.float32), "bias": np.asarray(bn0["bias"], np.float32)},
          {"mean": mu.astype(np.float32), "var": np.asarray(stats["var"], np.float32)})


def _head_to_torch(head: Mapping, name: str) -> dict[str, np.ndarray]:
  out = {}
  for ours, theirs in (("fc_in", "linear1"), ("fc_out", "linear2")):
    out[f"{name}.{theirs}.weight"] = np.ascontiguousarray(np.asarray(head[ours]["kernel"],
                                                                     np.float32).T)
    out[f"{name}.{theirs}.bias"] = np.asarray(head[ours]["bias"], np.float32)
  return out


def clamp_logit_scale(value: Any) -> np.float32:
  """Our logit_scale parameter as training uses it: clamped to [0, ln 100]."""
  return np.float32(np.clip(np.asarray(value, np.float32), 0.0, np.float32(LOG_100)))


def clap_state_dict(config: Any, variables: Mapping) -> dict[str, np.ndarray]:
  """Our variables (``{"params", "batch_stats"}``) -> a complete ``ClapModel`` state dict
  (numpy; buffers included), with the feature normalisation folded into bn0."""
  import flax.linen as nn
  check(config)
  v = nn.meta.unbox(dict(variables))
  params, stats = v["params"], v.get("batch_stats", {})
  if "audio" not in stats:
    raise convert.CheckpointMismatch("variables have no batch_stats for the HTS-AT audio "
                                     "tower (TrainState.model_state)")
  audio_p, audio_s = dict(params["audio"]), dict(stats["audio"])
  bn0_p, bn0_s = fold_bn0(audio_p["bn0"], audio_s["bn0"], config.features.norm_mean,
                          config.features.norm_std)
  audio_p["bn0"], audio_s["bn0"] = bn0_p, bn0_s
  sd = htsat.export_torch({"params": audio_p, "batch_stats": audio_s}, prefix=AUDIO_PREFIX)
  sd.update(convert.export_bert(params["text"], prefix=TEXT_PREFIX, buffers=True))
  sd.update(_head_to_torch(params["audio_head"], "audio_projection"))
  sd.update(_head_to_torch(params["text_head"], "text_projection"))
  scale = clamp_logit_scale(params["logit_scale"])
  sd["logit_scale_a"] = np.asarray(scale, np.float32).reshape(())
  sd["logit_scale_t"] = np.asarray(scale, np.float32).reshape(())
  return sd



# --------------------------------------------------------------------------- export


def holds_audio_tower(config: Any) -> bool:
  """Whether the run's audio tower is the one ``ClapModel`` has (HTS-AT)."""
  tower = registry.all_towers().get(config.model.audio.name)
  return tower is not None and tower.module is htsat.HTSAT


def export_clap(workdir: str, out: str, step: int | None, tokenizer: Any) -> str:
  """Writes the run in ``workdir`` (``check``ed, its ``hf_tokenizer`` given) to ``out``
  as a transformers ``ClapModel`` + ``ClapProcessor``; returns ``out``."""
  import orbax.checkpoint as ocp
  import transformers
  from jaxclap import inference
  if step is None:
    ckpts = os.path.join(os.path.abspath(workdir), "checkpoints")
    step = ocp.CheckpointManager(ckpts).latest_step()
    if step is None:
      raise FileNotFoundError(f"{workdir}: no checkpoints yet")
  model = inference.load(workdir, step)
  config = model.config
  # transformers names layers one by one: scanned stacks (scan_layers) unrolled first.
  sd = clap_state_dict(config, transformer.unstack_layers(nn.meta.unbox(dict(model.variables))))
  cfg = clap_config(config, float(sd["logit_scale_a"]), tokenizer)

  os.makedirs(out, exist_ok=True)
  convert.save_strict(transformers.ClapModel(cfg), sd, out)
  processor = transformers.ClapProcessor(
      feature_extractor=transformers.ClapFeatureExtractor(**feature_extractor_kwargs(config)),
      tokenizer=tokenizer)
  processor.save_pretrained(out)
  with open(os.path.join(out, "jaxclap_export.json"), "w") as f:
    json.dump({"workdir": os.path.abspath(workdir), "step": int(step),
               "config": json.loads(config.to_json_best_effort())}, f, indent=2)
  return out


def import_clap(source: str | Mapping[str, Any], config: Any = None) -> dict:
  """A ``ClapModel`` written by ``export`` (its folder, or a state dict) -> jaxclap
  variables ``{"params": ..., "batch_stats": {"audio": ...}}`` for the run ``config``
  (default: the ``jaxclap_export.json`` in the folder). bn0 is un-folded with the config's
  ``features.norm_mean`` / ``norm_std``; ``logit_scale_a`` and ``logit_scale_t`` must agree
  (ours is one parameter). Every key must be used (``CheckpointMismatch`` otherwise)."""
  import ml_collections
  where = "state dict"
  if not isinstance(source, Mapping):
    where = os.fspath(source)
    if config is None:
      meta = os.path.join(where, "jaxclap_export.json")
      if not os.path.exists(meta):
        raise FileNotFoundError(f"{where}: no jaxclap_export.json; pass config=")
      with open(meta) as f:
        config = ml_collections.ConfigDict(json.load(f)["config"])
    sd = convert.load_state_dict(where)
  else:
    sd = convert.to_numpy(source)
    if config is None:
      raise ValueError("import_clap of a state dict needs config=")
  check(config)
  target = variable_shapes(config)
  tp, ts = target["params"], target["batch_stats"]
  audio = htsat.import_torch(sd, {"params": tp["audio"], "batch_stats": ts["audio"]},
                             prefix=AUDIO_PREFIX, where=where)
  bn0_p, bn0_s = unfold_bn0(audio["params"]["bn0"], audio["batch_stats"]["bn0"],
                            config.features.norm_mean, config.features.norm_std)
  audio["params"]["bn0"], audio["batch_stats"]["bn0"] = bn0_p, bn0_s
  text = transformer.stack_layers(
      convert.import_bert(sd, transformer.unstack_layers(tp["text"]), prefix=TEXT_PREFIX,
                          where=where), tp["text"])

  used = {k for k in sd if k.startswith((AUDIO_PREFIX, TEXT_PREFIX))}
  heads = {}
  for ours, theirs in (("audio_head", "audio_projection"), ("text_head", "text_projection")):
    head = {}
    for layer, lin in (("fc_in", "linear1"), ("fc_out", "linear2")):
      w, b = f"{theirs}.{lin}.weight", f"{theirs}.{lin}.bias"
      for key in (w, b):
        if key not in sd:
          raise convert.CheckpointMismatch(f"{where}: missing key {key!r}")
      want = tuple(tp[ours][layer]["kernel"].shape)
      if tuple(sd[w].shape[::-1]) != want or tuple(sd[b].shape) != want[-1:]:
        raise convert.CheckpointMismatch(
            f"{where}: {w!r} has shape {tuple(sd[w].shape)}, but {ours}/{layer}/kernel "
            f"needs {want} (transposed)")
      head[layer] = {"kernel": np.ascontiguousarray(np.asarray(sd[w], np.float32).T),
                     "bias": np.asarray(sd[b], np.float32)}
      used |= {w, b}
    heads[ours] = head
  for key in ("logit_scale_a", "logit_scale_t"):
    if key not in sd:
      raise convert.CheckpointMismatch(f"{where}: missing key {key!r}")
  a, t = np.asarray(sd["logit_scale_a"], np.float32), np.asarray(sd["logit_scale_t"], np.float32)
  if a != t:
    raise convert.CheckpointMismatch(f"{where}: logit_scale_a={float(a)} != logit_scale_t="
                                     f"{float(t)}; jaxclap has one logit_scale")
  used |= {"logit_scale_a", "logit_scale_t"}
  unexpected = sorted(set(sd) - used)
  if unexpected:
    raise convert.CheckpointMismatch(f"{where}: unexpected keys {unexpected[:8]} "
                                     f"({len(unexpected)} in all)")
  params = {"audio": audio["params"], "text": text, **heads,
            "logit_scale": a.reshape(())}
  return {"params": params, "batch_stats": {"audio": audio["batch_stats"]}}

