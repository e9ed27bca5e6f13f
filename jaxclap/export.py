r"""Export a trained run to PyTorch, in one of two formats picked by the audio tower:

  python -m jaxclap.export --workdir=DIR --out=OUT [--step=N]
  path = jaxclap.export.export(workdir, out, step=None)
  variables = jaxclap.export.import_export(OUT)     # the way back, either format

* HTS-AT runs that ``ClapModel`` can hold (RoBERTa text tower, ClapProjectionLayer heads,
  transformers' front end; see below): transformers' CLAP format (``ClapModel`` +
  ``ClapProcessor``), served by transformers alone (below).

  model = transformers.ClapModel.from_pretrained(OUT)
  processor = transformers.ClapProcessor.from_pretrained(OUT)
  transformers.pipeline("zero-shot-audio-classification", model=OUT)

* Every other run (the demo's default spectrogram ViT, CNN14, HTS-AT with another text
  tower or heads / features ClapModel cannot express): the towers format
  (``export_towers``), each tower as the PyTorch class that matches it, served by
  ``jaxclap.torch_model.ClapModelTorch`` (PyTorch + transformers; no JAX):

  OUT/audio/   ``ViTMAEModel`` (num_channels=1, image_size=(frames, n_mels), patch 16,
               mask_ratio 0, our sin-cos table in embeddings.position_embeddings with a
               zero [CLS] row). It reproduces our ViT exactly, padding included: call it
               with ``noise=arange(tiles)`` (keeps tile order) and ``attention_mask``
               [b, 1 + tiles] (transformers 5's ViTMAEModel takes one)
               or, for HTS-AT, ``ClapAudioModel`` (``ClapAudioConfig`` from the tower's
               fields, ``htsat.export_torch`` weights and buffers, strict load): fed
               jaxclap's own normalised log-mel as ``input_features`` [b, 1, T, F], its
               ``pooler_output`` is our pooled output (bn0 is not folded: the front end
               is ours; no fusion: ``enable_fusion=True`` is refused)
               or, for CNN14, ``jaxclap.torch_model.Cnn14Torch`` (no transformers class
               exists): ``config.json`` (channels, embed_dim, mel_bins, bn_eps) and
               ``model.safetensors`` in PANNs' / msclap's key names
               (``cnn14.export_torch``, the inverse of ``cnn14.import_torch``), called
               with the clip's real frames (padding masked as our Cnn14 does)
  OUT/text/    ``BertModel`` (BERT / MiniLM towers; ``add_pooling_layer=False`` unless the
               tower pools with the tanh pooler), ``RobertaModel`` (``padding_idx`` set),
               ``Qwen3Model`` or ``Gemma3TextModel``, each loaded strictly before saving,
               plus the tokenizer (ids checked against jaxclap's on probe texts)
  heads.safetensors      ``{audio,text}_head.{proj|fc_in|fc_out}.{weight,bias}`` (PyTorch
                         [out, in]) and the raw ``logit_scale`` (clamped when used)
  frontend.safetensors   the periodic Hann window and librosa's Slaney mel matrix jaxclap
                         computes with
  audio_mae_decoder.safetensors   the ViT's MAE decoder (training only; kept so that
                                  ``import_export`` gives every parameter back)
  jaxclap_export.json    format "jaxclap-towers": front end, window / hop / padding,
                         pooling, heads, tokenizer length, and the run's config

  Refused (``NotExportable``, naming the field): Kaldi fbank features, an on-device
  resampling rate (``features.target_rate``), text towers other than BERT / RoBERTa /
  Qwen3 / Gemma3, decoder options HF's models do not have, HTS-AT fusion or an HTS-AT
  whose ``num_mel_bins`` differs from ``features.n_mels``. ``import_export`` gives the
  HTS-AT / CNN14 batch-norm statistics back too (``{"params", "batch_stats"}``).

The rest of this docstring is about the CLAP format.

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

import argparse
import json
import math
import os
import sys
from typing import Any, Mapping

import numpy as np

from jaxclap.models import convert

# Our activation names -> transformers' ACT2FN names computing the same function.
_HF_ACT = {"relu": "relu", "gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh", "silu": "silu"}
_LOG_100 = math.log(100.0)
# Texts the exported tokenizer must encode exactly as jaxclap's does: spacing, case,
# punctuation, non-ASCII, a literal special token, and one long enough to be truncated.
_PROBES = ("A woman speaking quickly.", "", "  two  spaces and a tab\tthere",
           "Héllo wörld – naïve café 🙂", "a <mask> and </s> inside",
           " ".join(["a very long caption"] * 40))

AUDIO_PREFIX = "audio_model.audio_encoder."
TEXT_PREFIX = "text_model."


class NotExportable(ValueError):
  """The run's model or features have no exact transformers CLAP equivalent."""


def _get(cfg: Any, key: str, default: Any = None) -> Any:
  return cfg.get(key, default) if hasattr(cfg, "get") else getattr(cfg, key, default)


def _tower_kwargs(tower_cfg: Any) -> dict:
  kw = dict(tower_cfg.to_dict() if hasattr(tower_cfg, "to_dict") else tower_cfg)
  for k in ("name", "init", "init_kind"):
    kw.pop(k, None)
  return kw


# ----------------------------------------------------------------- config -> transformers


def _feature_rate(config: Any) -> int:
  f = config.features
  return int(_get(f, "target_rate") or f.sample_rate)


def feature_extractor_kwargs(config: Any) -> dict:
  """``ClapFeatureExtractor`` arguments computing ``config.features``' log-mel, or
  ``NotExportable`` naming the field that transformers' front end cannot reproduce."""
  f, inp = config.features, config.input
  kind = _get(f, "kind", "logmel")
  if kind != "logmel":
    raise NotExportable(f"config.features.kind={kind!r}: ClapFeatureExtractor computes a "
                        "log-mel ('logmel') only")
  n_fft, win = int(f.n_fft), int(_get(f, "win_length") or f.n_fft)
  if win != n_fft:
    raise NotExportable(f"config.features.win_length={win} != n_fft={n_fft}: "
                        "ClapFeatureExtractor's window is always fft_window_size long")
  pad_mode = _get(f, "pad_mode", "constant")
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
  multiple = int(_get(f, "frames_multiple", 1) or 1)
  frames = int(seconds) * rate // hop + 1
  if frames % multiple:
    raise NotExportable(f"config.features.frames_multiple={multiple} crops a window's "
                        f"{frames} frames; ClapFeatureExtractor keeps them all")
  pad = _get(inp, "pad", "zero")
  if pad not in ("repeat", "zero"):
    raise NotExportable(f"config.input.pad={pad!r}: expected 'repeat' or 'zero'")
  fmax = _get(f, "fmax")
  return dict(
      feature_size=int(f.n_mels), sampling_rate=rate, hop_length=hop,
      max_length_s=int(seconds), fft_window_size=n_fft, padding_value=0.0,
      return_attention_mask=False,          # HTS-AT sees a fixed-size image, no mask
      frequency_min=float(f.fmin), frequency_max=float(rate / 2 if fmax is None else fmax),
      top_db=None, truncation="rand_trunc",
      # "repeatpad": whole repeats, then zeros (jaxclap's "repeat"); any other value is
      # plain zero padding in the extractor, "pad" by its docstring.
      padding="repeatpad" if pad == "repeat" else "pad")


def _audio_config(config: Any) -> dict:
  from jaxclap.models import htsat
  a = config.model.audio
  if a.name != "htsat":
    raise NotExportable(f"config.model.audio.name={a.name!r}: transformers' ClapModel has "
                        "an HTS-AT audio tower ('htsat') only")
  tower = htsat.HTSAT(**_tower_kwargs(a))
  if tower.enable_fusion:
    raise NotExportable("config.model.audio.enable_fusion=True: the fusion front end is not "
                        "exported (jaxclap trains single-window towers)")
  width, depths, heads = tower.arch()
  if int(config.features.n_mels) != int(tower.num_mel_bins):
    raise NotExportable(f"config.features.n_mels={config.features.n_mels} != "
                        f"config.model.audio.num_mel_bins={tower.num_mel_bins}: "
                        "transformers' bn0 normalises num_mel_bins channels")
  ps = tower.patch_size if np.isscalar(tower.patch_size) else list(tower.patch_size)
  st = tower.patch_stride
  st = [int(st), int(st)] if np.isscalar(st) else [int(s) for s in st]
  return dict(
      spec_size=int(tower.spec_size), num_mel_bins=int(tower.num_mel_bins),
      window_size=int(tower.window_size), patch_size=ps, patch_stride=st,
      patch_embeds_hidden_size=width, hidden_size=tower.num_features(),
      depths=list(depths), num_attention_heads=list(heads), mlp_ratio=float(tower.mlp_ratio),
      layer_norm_eps=float(tower.layer_norm_eps), enable_patch_layer_norm=bool(tower.patch_norm),
      enable_fusion=False, fusion_type=None, hidden_act="gelu", qkv_bias=True,
      flatten_patch_embeds=True, patch_embed_input_channels=1,
      hidden_dropout_prob=float(tower.dropout_rate),
      attention_probs_dropout_prob=float(tower.attention_dropout_rate),
      drop_path_rate=float(tower.drop_path_rate))


def _text_config(config: Any) -> dict:
  from jaxclap.models import bert, two_towers
  t = config.model.text
  cls = two_towers.TEXT_TOWERS.get(t.name, (None,))[0]
  if cls is not bert.BertTower:
    raise NotExportable(f"config.model.text.name={t.name!r}: ClapModel's text tower is a "
                        "RoBERTa encoder (a BertTower: 'roberta')")
  tower = bert.BertTower(**_tower_kwargs(t))
  if tower.padding_idx is None:
    raise NotExportable("config.model.text.padding_idx is None: ClapTextModel numbers "
                        "positions RoBERTa's way, from padding_idx + 1 (set padding_idx)")
  if tower.pooling != "pooler":
    raise NotExportable(f"config.model.text.pooling={tower.pooling!r}: ClapModel projects "
                        "the tanh pooler's output ('pooler')")
  if tower.activation not in _HF_ACT:
    raise NotExportable(f"config.model.text.activation={tower.activation!r} has no "
                        "transformers equivalent")
  return dict(
      vocab_size=int(tower.vocab_size), hidden_size=int(tower.hidden_size),
      num_hidden_layers=int(tower.depth), num_attention_heads=int(tower.num_heads),
      intermediate_size=int(tower.mlp_dim), hidden_act=_HF_ACT[tower.activation],
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
  hidden = _get(m, "head_hidden")
  if hidden is not None and int(hidden) != int(m.embed_dim):
    raise NotExportable(f"config.model.head_hidden={hidden} != model.embed_dim={m.embed_dim}: "
                        "ClapProjectionLayer's hidden width is projection_dim")
  act = str(_get(m, "head_activation", "gelu"))
  if act not in _HF_ACT:
    raise NotExportable(f"config.model.head_activation={act!r} has no transformers "
                        "equivalent")
  return _HF_ACT[act]


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


# ----------------------------------------------------------------------- parameters


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
  return np.float32(np.clip(np.asarray(value, np.float32), 0.0, np.float32(_LOG_100)))


def clap_state_dict(config: Any, variables: Mapping) -> dict[str, np.ndarray]:
  """Our variables (``{"params", "batch_stats"}``) -> a complete ``ClapModel`` state dict
  (numpy; buffers included), with the feature normalisation folded into bn0."""
  import flax.linen as nn
  from jaxclap.models import htsat
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


# ------------------------------------------------------------------------ tokenizer


def _check_probe_ids(ours, probe, max_len: int, where: str) -> None:
  """The exported tokenizer must encode the probe texts exactly as jaxclap's does."""
  ids, _ = ours.encode(list(_PROBES), max_len)
  theirs = probe(list(_PROBES), padding="max_length", truncation=True, max_length=max_len,
                 return_tensors="np")["input_ids"]
  for text, a, b in zip(_PROBES, ids, theirs):
    if not np.array_equal(a, b):
      raise NotExportable(f"{where}: transformers encodes {text[:40]!r} as "
                          f"{b[:12].tolist()}..., jaxclap as {a[:12].tolist()}...")


def hf_tokenizer(config: Any, tokenizer: Any = None, check_pad: bool = True):
  """The run's tokenizer as a transformers ``RobertaTokenizerFast`` with
  ``model_max_length = input.max_text_len``, its ids checked against jaxclap's
  ``tokenizer.encode`` on a few probe texts (``NotExportable`` on any difference).
  ``check_pad``: the pad id must be ``model.text.padding_idx`` (RoBERTa positions)."""
  import transformers
  from jaxclap import tokenizers
  tc = config.tokenizer
  kind = str(tc.kind).lower()
  if kind not in ("roberta", "bpe", "clap"):
    raise NotExportable(f"config.tokenizer.kind={tc.kind!r}: ClapProcessor's tokenizer is a "
                        "RoBERTa byte-level BPE ('roberta')")
  path = _get(tc, "path")
  if not path or not os.path.isdir(str(path)):
    raise NotExportable(f"config.tokenizer.path={path!r} is not a tokenizer folder")
  extra = sorted(set(tc.to_dict() if hasattr(tc, "to_dict") else dict(tc)) - {"kind", "path"})
  if extra:
    raise NotExportable(f"config.tokenizer sets {extra}: only kind and path are exported")
  ours = tokenizer or tokenizers.from_config(tc)
  max_len = int(config.input.max_text_len)
  load = lambda: transformers.RobertaTokenizerFast.from_pretrained(str(path),
                                                                   model_max_length=max_len)
  # Probing with padding / truncation switches them on in the backend tokenizer, which
  # save_pretrained would write into tokenizer.json; from there ClapProcessor passes that
  # max_length (in tokens) to the feature extractor as a length in samples. So the probe
  # uses its own instance.
  hf, probe = load(), load()
  vocab = int(config.model.text.vocab_size)
  if len(hf) > vocab:
    # An id past the embedding table fails in PyTorch (and is clamped silently by a JAX
    # gather): the two would not agree.
    raise NotExportable(f"config.tokenizer at {path} has {len(hf)} tokens but "
                        f"config.model.text.vocab_size={vocab}")
  pad = int(config.model.text.get("padding_idx", -1) if check_pad else ours.pad_id)
  if hf.pad_token_id != pad or ours.pad_id != pad:
    raise NotExportable(f"the tokenizer pads with id {hf.pad_token_id} (jaxclap: "
                        f"{ours.pad_id}) but config.model.text.padding_idx={pad}")
  _check_probe_ids(ours, probe, max_len, f"config.tokenizer at {path}")
  return hf


# --------------------------------------------------------------------------- export


def export(workdir: str, out: str, step: int | None = None) -> str:
  """Writes the run in ``workdir`` (latest checkpoint, or ``step``) to the folder ``out``
  as a transformers ``ClapModel`` + ``ClapProcessor`` when it can hold the run (HTS-AT +
  RoBERTa, see ``check``), else in the towers format (``export_towers``); returns ``out``.
  Raises ``NotExportable`` naming the config field when neither format holds the run."""
  import ml_collections
  import torch
  import transformers
  from jaxclap import inference

  import orbax.checkpoint as ocp

  cfg_path = os.path.join(workdir, "config.json")
  if not os.path.exists(cfg_path):
    raise FileNotFoundError(f"{workdir}: no config.json; is it a jaxclap run folder?")
  with open(cfg_path) as f:
    run_config = ml_collections.ConfigDict(json.load(f))
  if run_config.model.audio.name != "htsat":   # the towers format (ViT, CNN14 runs)
    return export_towers(workdir, out, step)
  # HTS-AT runs that ClapModel cannot hold go to the towers format (which refuses, naming
  # the field, what it cannot hold either); decided before the checkpoint loads.
  try:
    check(run_config)
    tok = hf_tokenizer(run_config)
  except NotExportable as e:
    try:
      _towers_check(run_config)
    except NotExportable as e2:
      raise NotExportable(f"{e2} (and for transformers' ClapModel: {e})") from None
    return export_towers(workdir, out, step)
  if step is None:
    ckpts = os.path.join(os.path.abspath(workdir), "checkpoints")
    step = ocp.CheckpointManager(ckpts).latest_step()
    if step is None:
      raise FileNotFoundError(f"{workdir}: no checkpoints yet")
  model = inference.load(workdir, step)
  config = model.config
  sd = clap_state_dict(config, model.variables)
  cfg = clap_config(config, float(sd["logit_scale_a"]), tok)

  torch_model = transformers.ClapModel(cfg).eval()
  result = torch_model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in sd.items()},
                                       strict=True)
  if result.missing_keys or result.unexpected_keys:   # strict raises first; belt and braces
    raise convert.CheckpointMismatch(f"ClapModel: missing {result.missing_keys[:5]}, "
                                     f"unexpected {result.unexpected_keys[:5]}")
  os.makedirs(out, exist_ok=True)
  torch_model.save_pretrained(out)
  processor = transformers.ClapProcessor(
      feature_extractor=transformers.ClapFeatureExtractor(**feature_extractor_kwargs(config)),
      tokenizer=tok)
  processor.save_pretrained(out)
  with open(os.path.join(out, "jaxclap_export.json"), "w") as f:
    json.dump({"workdir": os.path.abspath(workdir), "step": int(step),
               "config": json.loads(config.to_json_best_effort())}, f, indent=2)
  return out


# ------------------------------------------------------------------------ the way back


def _target(config: Any, mae: bool = False):
  """Shapes of the run's variables, ``{"params", "batch_stats"}``, without creating them
  (``mae``: with the ViT's MAE decoder, which only the reconstruction pass creates)."""
  import flax.linen as nn
  import jax
  import jax.numpy as jnp
  from jaxclap.models import two_towers
  model = two_towers.from_config(config.model)
  samples = int(round(float(config.input.clip_seconds) * int(config.input.sample_rate)))
  t = int(config.input.max_text_len)

  def init():
    wave = jnp.zeros((1, samples), jnp.float32)
    spec, frames = two_towers.spectrogram(config.features, wave, jnp.full((1,), samples))
    return model.init(jax.random.PRNGKey(0), spec, frames, jnp.zeros((1, t), jnp.int32),
                      jnp.ones((1, t), jnp.int32),
                      rng=jax.random.PRNGKey(1) if mae else None)
  return nn.meta.unbox(jax.eval_shape(init))


def import_clap(source: str | Mapping[str, Any], config: Any = None) -> dict:
  """A ``ClapModel`` written by ``export`` (its folder, or a state dict) -> jaxclap
  variables ``{"params": ..., "batch_stats": {"audio": ...}}`` for the run ``config``
  (default: the ``jaxclap_export.json`` in the folder). bn0 is un-folded with the config's
  ``features.norm_mean`` / ``norm_std``; ``logit_scale_a`` and ``logit_scale_t`` must agree
  (ours is one parameter). Every key must be used (``CheckpointMismatch`` otherwise)."""
  import ml_collections
  from jaxclap.models import htsat
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
  target = _target(config)
  tp, ts = target["params"], target["batch_stats"]
  audio = htsat.import_torch(sd, {"params": tp["audio"], "batch_stats": ts["audio"]},
                             prefix=AUDIO_PREFIX, where=where)
  bn0_p, bn0_s = unfold_bn0(audio["params"]["bn0"], audio["batch_stats"]["bn0"],
                            config.features.norm_mean, config.features.norm_std)
  audio["params"]["bn0"], audio["batch_stats"]["bn0"] = bn0_p, bn0_s
  text = convert.import_bert(sd, tp["text"], prefix=TEXT_PREFIX, where=where)

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


# ------------------------------------------------------------ towers format (any ViT run)
#
# Runs that transformers' ClapModel cannot hold (the demo's spectrogram ViT, BERT / MiniLM
# text towers, linear heads...) export tower by tower: each tower to the transformers
# class that matches it, the rest (front end, pooling, heads, windows) to files that
# ``jaxclap.torch_model.ClapModelTorch`` reads.

TOWERS_FORMAT = "jaxclap-towers"
# Our audio tower -> the class OUT/audio holds (Cnn14Torch: jaxclap.torch_model's).
TOWERS_AUDIO = {"vit": "ViTMAEModel", "htsat": "ClapAudioModel", "cnn14": "Cnn14Torch"}
HTSAT_PREFIX = "audio_encoder."      # ClapAudioModel's state-dict prefix
HEADS_FILE, FRONTEND_FILE, DECODER_FILE = ("heads.safetensors", "frontend.safetensors",
                                           "audio_mae_decoder.safetensors")


def _towers_check(config: Any) -> None:
  """``NotExportable`` unless the towers format reproduces the run exactly."""
  from jaxclap.models import bert, decoder_lm, two_towers
  a, t, f = config.model.audio, config.model.text, config.features
  if a.name not in TOWERS_AUDIO:
    raise NotExportable(f"config.model.audio.name={a.name!r}: the towers format exports "
                        f"the audio towers {sorted(TOWERS_AUDIO)}")
  if a.name == "htsat":
    if bool(_get(a, "enable_fusion", False)):
      raise NotExportable("config.model.audio.enable_fusion=True: the fusion front end is "
                          "not exported (jaxclap trains single-window towers)")
    from jaxclap.models import htsat
    tower = htsat.HTSAT(**_tower_kwargs(a))
    if int(f.n_mels) != int(tower.num_mel_bins):
      raise NotExportable(f"config.features.n_mels={f.n_mels} != "
                          f"config.model.audio.num_mel_bins={tower.num_mel_bins}: "
                          "ClapAudioModel's bn0 normalises num_mel_bins channels")
  kind = _get(f, "kind", "logmel")
  if kind != "logmel":
    raise NotExportable(f"config.features.kind={kind!r}: the PyTorch front end computes the "
                        "log-mel ('logmel') only")
  target = _get(f, "target_rate")
  if target and int(target) != int(f.sample_rate):
    raise NotExportable(f"config.features.target_rate={target} != sample_rate="
                        f"{f.sample_rate}: jaxclap's on-device resampler is not exported")
  if int(f.sample_rate) != int(config.input.sample_rate):
    raise NotExportable(f"config.features.sample_rate={f.sample_rate} != "
                        f"config.input.sample_rate={config.input.sample_rate}")
  if _get(config.input, "pad", "zero") not in ("zero", "repeat"):
    raise NotExportable(f"config.input.pad={config.input.pad!r}")
  cls = two_towers.TEXT_TOWERS.get(t.name, (None,))[0]
  if cls is bert.BertTower:
    tower = bert.BertTower(**_tower_kwargs(t))
    if tower.activation not in _HF_ACT:
      raise NotExportable(f"config.model.text.activation={tower.activation!r} has no "
                          "transformers equivalent")
  elif cls is decoder_lm.DecoderTower:
    _decoder_hf(config)
  else:
    raise NotExportable(f"config.model.text.name={t.name!r}: the towers format exports "
                        "BERT-family ('bert', 'roberta') and decoder ('qwen3', 'gemma3') "
                        "text towers")
  if _get(config.model, "head") not in ("linear", "mlp"):
    raise NotExportable(f"config.model.head={config.model.head!r}")
  if str(_get(config.model, "head_activation", "gelu")) not in _HF_ACT:
    raise NotExportable(f"config.model.head_activation={config.model.head_activation!r}")


def _bert_hf(config: Any):
  """(transformers class name, config kwargs, add_pooling_layer) for the BertTower."""
  from jaxclap.models import bert
  tower = bert.BertTower(**_tower_kwargs(config.model.text))
  kw = dict(vocab_size=int(tower.vocab_size), hidden_size=int(tower.hidden_size),
            num_hidden_layers=int(tower.depth), num_attention_heads=int(tower.num_heads),
            intermediate_size=int(tower.mlp_dim), hidden_act=_HF_ACT[tower.activation],
            max_position_embeddings=int(tower.max_len),
            type_vocab_size=int(tower.type_vocab_size), layer_norm_eps=float(tower.layer_norm_eps),
            hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
            position_embedding_type="absolute")
  if tower.padding_idx is not None:   # RoBERTa's positions, from padding_idx + 1
    kw["pad_token_id"] = int(tower.padding_idx)
    return "RobertaModel", kw, tower.pooling == "pooler"
  return "BertModel", kw, tower.pooling == "pooler"


def _decoder_tower(config: Any):
  from jaxclap.models import decoder_lm, two_towers
  t = config.model.text
  fixed = two_towers.TEXT_TOWERS[t.name][1]
  kw = _tower_kwargs(t)
  preset = kw.pop("preset", None)
  if preset is not None:
    kw = {**decoder_lm.PRESETS[preset], **kw}
  return decoder_lm.DecoderTower(**{**kw, **fixed})


def _decoder_hf(config: Any):
  """(model class, config class, kwargs) of the decoder text tower's transformers twin."""
  from jaxclap.models import decoder_lm
  tower = _decoder_tower(config)
  try:
    return decoder_lm.config_to_hf(tower)
  except ValueError as e:
    raise NotExportable(f"config.model.text ({tower.family}): {e}") from None


def _text_tokenizer(config: Any):
  """The run's tokenizer as a transformers tokenizer (``model_max_length`` =
  ``input.max_text_len``), ids checked against jaxclap's on the probe texts."""
  import transformers
  from jaxclap import tokenizers
  tc = config.tokenizer
  kind = str(tc.kind).lower()
  if kind in ("roberta", "bpe", "clap"):
    return hf_tokenizer(config, check_pad=_get(config.model.text, "padding_idx") is not None)
  extra = sorted(set(tc.to_dict() if hasattr(tc, "to_dict") else dict(tc)) - {"kind", "path"})
  if extra:
    raise NotExportable(f"config.tokenizer sets {extra}: only kind and path are exported")
  if kind == "minilm":
    path = str(tokenizers.minilm_dir())
  elif kind in ("wordpiece", "bert", "hf", "qwen3", "gemma"):
    path = str(_get(tc, "path"))
    if os.path.isfile(path):
      path = os.path.dirname(path)
  else:
    raise NotExportable(f"config.tokenizer.kind={tc.kind!r} is not exported")
  max_len = int(config.input.max_text_len)
  load = lambda: transformers.AutoTokenizer.from_pretrained(path, model_max_length=max_len)
  hf, probe = load(), load()
  ours = tokenizers.from_config(tc)
  _check_probe_ids(ours, probe, max_len, f"config.tokenizer ({kind})")
  return hf


def _heads_to_torch(params: Mapping) -> dict[str, np.ndarray]:
  out = {}
  for head in ("audio_head", "text_head"):
    for layer, p in params[head].items():
      out[f"{head}.{layer}.weight"] = np.ascontiguousarray(np.asarray(p["kernel"], np.float32).T)
      out[f"{head}.{layer}.bias"] = np.asarray(p["bias"], np.float32)
  out["logit_scale"] = np.asarray(params["logit_scale"], np.float32).reshape(())
  return out


def _window_frames(config: Any) -> tuple[int, int, int]:
  """(samples per window, real frames, frames after the frames_multiple crop)."""
  f = config.features
  window = int(round(float(config.input.clip_seconds) * int(config.input.sample_rate)))
  frames = window // int(f.hop_length) + 1
  multiple = int(_get(f, "frames_multiple", 1) or 1)
  return window, frames, frames // multiple * multiple


def _text_pooling(config: Any) -> str:
  if config.model.text.name in ("qwen3", "gemma3"):
    return str(_decoder_tower(config).pooling)
  from jaxclap.models import bert
  return str(bert.BertTower(**_tower_kwargs(config.model.text)).pooling)


def _audio_metadata(a: Any) -> dict:
  cls = TOWERS_AUDIO[a.name]
  if a.name == "vit":
    return {"class": cls, "path": "audio", "patch": int(_get(a, "patch", 16)),
            "pooling": str(_get(a, "pooling", "cls")), "mae_decoder": DECODER_FILE}
  if a.name == "htsat":   # input_features [b, 1, T, F] -> pooler_output (no frame mask)
    return {"class": cls, "path": "audio", "pooling": "pooler_output"}
  return {"class": cls, "path": "audio", "pooling": "max+mean over real frames"}


def towers_metadata(config: Any, step: int, workdir: str, text_class: str,
                    pooler: bool) -> dict:
  f = config.features
  window, _, usable = _window_frames(config)
  a = config.model.audio
  n_fft = int(f.n_fft)
  fmax = _get(f, "fmax")
  return {
      "format": TOWERS_FORMAT, "version": 1, "workdir": os.path.abspath(workdir),
      "step": int(step),
      "input": {"sample_rate": int(config.input.sample_rate), "window": window,
                "hop": max(1, window // 2), "pad": str(_get(config.input, "pad", "zero")),
                "max_text_len": int(config.input.max_text_len)},
      "features": {"kind": "logmel", "n_fft": n_fft,
                   "win_length": int(_get(f, "win_length") or n_fft),
                   "hop_length": int(f.hop_length), "n_mels": int(f.n_mels),
                   "fmin": float(f.fmin), "fmax": None if fmax is None else float(fmax),
                   "pad_mode": str(_get(f, "pad_mode", "constant")), "power": 2.0,
                   "amin": 1e-10, "norm_mean": float(f.norm_mean), "norm_std": float(f.norm_std),
                   "frames_multiple": int(_get(f, "frames_multiple", 1) or 1),
                   "frames": usable, "file": FRONTEND_FILE},
      "audio": _audio_metadata(a),
      "text": {"class": text_class, "path": "text", "add_pooling_layer": bool(pooler),
               "pooling": _text_pooling(config)},
      "heads": {"file": HEADS_FILE, "kind": str(config.model.head),
                "activation": str(_get(config.model, "head_activation", "gelu")),
                "logit_scale_max": _LOG_100},
      "config": json.loads(config.to_json_best_effort()),
  }


def export_towers(workdir: str, out: str, step: int | None = None, model: Any = None) -> str:
  """Writes a ViT, HTS-AT or CNN14 run tower by tower (see ``jaxclap.torch_model``);
  ``model``: the run already loaded by ``jaxclap.load`` (default: load it). Writes:

    audio/   transformers ``ViTMAEModel`` / ``ClapAudioModel`` (HTS-AT), or
             ``Cnn14Torch`` (PANNs key names) (config.json + model.safetensors; strict)
    text/    ``BertModel`` / ``RobertaModel`` (no pooler unless the tower pools with it:
             load with ``add_pooling_layer=False`` then), or ``Qwen3Model`` /
             ``Gemma3TextModel``; strict load; plus the tokenizer files
    heads.safetensors      {audio,text}_head.{proj|fc_in|fc_out}.{weight,bias}, logit_scale
    frontend.safetensors   the STFT window and the Slaney mel matrix jaxclap uses
    audio_mae_decoder.safetensors   the ViT's MAE decoder (training only; for the way back)
    jaxclap_export.json    front end, windows, padding, pooling, heads and the run config
  """
  import flax.linen as nn
  import ml_collections
  import safetensors.numpy
  import transformers
  from jaxclap import audio as audio_lib
  from jaxclap import inference
  from jaxclap.models import audiomae, vit

  with open(os.path.join(workdir, "config.json")) as f:
    run_config = ml_collections.ConfigDict(json.load(f))
  _towers_check(run_config)
  tok = _text_tokenizer(run_config)
  if model is None:
    model = inference.load(workdir, step)
  if step is None:
    import orbax.checkpoint as ocp
    step = ocp.CheckpointManager(os.path.join(os.path.abspath(workdir),
                                              "checkpoints")).latest_step()
  config = model.config
  params = nn.meta.unbox(dict(model.variables["params"]))
  os.makedirs(out, exist_ok=True)

  # Audio: ViTMAEModel, ClapAudioModel (HTS-AT) or Cnn14Torch.
  a = config.model.audio
  n_mels = int(config.features.n_mels)
  if a.name == "vit":
    vt = vit.SpectrogramViT(**_tower_kwargs(a))
    _, _, frames = _window_frames(config)
    patch = int(vt.patch)
    pos = _vit_positions(vt, frames, n_mels)
    sd, dec = audiomae.export_vitmae(params["audio"], pos)
    vcfg = transformers.ViTMAEConfig(
        hidden_size=int(vt.width), num_hidden_layers=int(vt.depth),
        num_attention_heads=int(vt.num_heads), intermediate_size=int(vt.mlp_dim),
        hidden_act="gelu", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
        layer_norm_eps=float(vt.layer_norm_eps), image_size=[frames, n_mels],
        patch_size=patch, num_channels=1, qkv_bias=True, mask_ratio=0.0, norm_pix_loss=False)
    _save_strict(transformers.ViTMAEModel(vcfg), sd, os.path.join(out, "audio"))
    if dec:
      safetensors.numpy.save_file(dec, os.path.join(out, DECODER_FILE))
  else:
    stats = nn.meta.unbox(dict(model.variables.get("batch_stats", {})))
    if "audio" not in stats:
      raise convert.CheckpointMismatch(f"{workdir}: no batch_stats for the {a.name} audio "
                                       "tower")
    audio_vars = {"params": params["audio"], "batch_stats": stats["audio"]}
    if a.name == "htsat":
      from jaxclap.models import htsat
      acfg = transformers.ClapAudioConfig(**_htsat_audio_config(config))
      sd = htsat.export_torch(audio_vars, prefix=HTSAT_PREFIX)
      _save_strict(transformers.ClapAudioModel(acfg), sd, os.path.join(out, "audio"))
    else:
      from jaxclap.models import cnn14
      from jaxclap.torch_model import Cnn14Torch
      tower = cnn14.Cnn14(**_tower_kwargs(a))
      sd = cnn14.export_torch(audio_vars)
      _save_strict(Cnn14Torch(tower.channels, tower.embed_dim, n_mels, cnn14.BN_EPS), sd,
                   os.path.join(out, "audio"))

  # Text: BertModel / RobertaModel, or Qwen3Model / Gemma3TextModel.
  text_dir = os.path.join(out, "text")
  if config.model.text.name in ("qwen3", "gemma3"):
    from jaxclap.models import decoder_lm
    cls_name, cfg_name, kw = _decoder_hf(config)
    tsd = decoder_lm.export_torch(params["text"], _decoder_tower(config).family)
    cls = getattr(transformers, cls_name)
    _save_strict(cls(getattr(transformers, cfg_name)(**kw)), tsd, text_dir)
    pooler = False
  else:
    cls_name, kw, pooler = _bert_hf(config)
    tsd = convert.export_bert(params["text"], buffers=False)
    cls = getattr(transformers, cls_name)
    _save_strict(cls(cls.config_class(**kw), add_pooling_layer=pooler), tsd, text_dir)
  tok.save_pretrained(text_dir)

  # Heads, logit scale, front end.
  safetensors.numpy.save_file(_heads_to_torch(params), os.path.join(out, HEADS_FILE))
  f = config.features
  n_fft = int(f.n_fft)
  win = int(_get(f, "win_length") or n_fft)
  fmax = _get(f, "fmax")
  sr = int(f.sample_rate)
  safetensors.numpy.save_file({
      "window": np.asarray(audio_lib._stft_window("hann", win), np.float32),
      "mel_filters": np.asarray(audio_lib._mel_basis(
          float(sr), n_fft, n_mels, float(f.fmin), float(sr / 2 if fmax is None else fmax),
          False, "slaney"), np.float32)}, os.path.join(out, FRONTEND_FILE))
  with open(os.path.join(out, "jaxclap_export.json"), "w") as fh:
    json.dump(towers_metadata(config, step, workdir, cls_name, pooler), fh, indent=2)
  return out


def _htsat_audio_config(config: Any) -> dict:
  """``ClapAudioConfig`` fields of the run's HTS-AT (dropout off: inference)."""
  kw = _audio_config(config)
  kw.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, drop_path_rate=0.0)
  return kw


def _vit_positions(vt: Any, frames: int, n_mels: int) -> np.ndarray:
  """The ViT's position table for a window of ``frames`` x ``n_mels`` (no [CLS] row)."""
  from jaxclap.models import vit
  p = int(vt.patch)
  t_tiles, f_tiles = frames // p, n_mels // p
  if vt.pos_layout == "mae":
    return np.asarray(vit.sincos_2d(int(vt.width), t_tiles, f_tiles))
  if vt.pos_layout == "audiomae":
    return np.asarray(vit.sincos_2d(int(vt.width), f_tiles,
                                    int(vt.pos_max_frames) // p))[:t_tiles * f_tiles]
  raise NotExportable(f"config.model.audio.pos_layout={vt.pos_layout!r}")


def _save_strict(module: Any, sd: Mapping[str, np.ndarray], folder: str) -> None:
  import torch
  module = module.eval()
  result = module.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in sd.items()},
                                  strict=True)
  if result.missing_keys or result.unexpected_keys:
    raise convert.CheckpointMismatch(f"{type(module).__name__}: missing "
                                     f"{result.missing_keys[:5]}, unexpected "
                                     f"{result.unexpected_keys[:5]}")
  module.save_pretrained(folder)


def import_export(folder: str) -> dict:
  """A folder written by ``export`` -> jaxclap variables: ``import_clap`` for a ClapModel
  export, else (the towers format) ``{"params": ...}`` (plus ``"batch_stats"`` for HTS-AT
  and CNN14) read back from audio/, text/ and heads.safetensors, identical to the
  exported ones."""
  import ml_collections
  import safetensors.numpy
  from jaxclap.models import audiomae, vit
  with open(os.path.join(folder, "jaxclap_export.json")) as f:
    meta = json.load(f)
  if meta.get("format") != TOWERS_FORMAT:
    return import_clap(folder)
  config = ml_collections.ConfigDict(meta["config"])
  a = config.model.audio
  full = _target(config, mae=a.name == "vit" and int(_get(a, "mae_depth", 0) or 0) > 0)
  target = full["params"]
  where = os.path.join(folder, "audio")
  audio_stats = None
  if a.name == "vit":
    vt = vit.SpectrogramViT(**_tower_kwargs(a))
    _, _, frames = _window_frames(config)
    dec_path = os.path.join(folder, DECODER_FILE)
    dec = safetensors.numpy.load_file(dec_path) if os.path.exists(dec_path) else {}
    audio = audiomae.import_vitmae(
        convert.load_state_dict(where), target["audio"], dec,
        positions=_vit_positions(vt, frames, int(config.features.n_mels)), where=where)
  else:
    tv = {"params": target["audio"], "batch_stats": full["batch_stats"]["audio"]}
    if a.name == "htsat":
      from jaxclap.models import htsat
      got = htsat.import_torch(convert.load_state_dict(where), tv, prefix=HTSAT_PREFIX,
                               where=where)
    elif a.name == "cnn14":
      from jaxclap.models import cnn14
      got = cnn14.import_torch(convert.load_state_dict(where), tv, prefix="", where=where)
    else:
      raise NotExportable(f"{folder}: config.model.audio.name={a.name!r}")
    audio, audio_stats = got["params"], got["batch_stats"]
  where = os.path.join(folder, "text")
  if config.model.text.name in ("qwen3", "gemma3"):
    from jaxclap.models import decoder_lm
    text = decoder_lm.import_torch(convert.load_state_dict(where), target["text"],
                                   family=_decoder_tower(config).family, where=where)
  else:
    text = convert.import_bert(convert.load_state_dict(where), target["text"], where=where)
  hsd = safetensors.numpy.load_file(os.path.join(folder, HEADS_FILE))
  params = {"audio": audio, "text": text, "logit_scale": np.asarray(hsd.pop("logit_scale"))}
  for head in ("audio_head", "text_head"):
    params[head] = {}
    for layer, p in target[head].items():
      w, b = hsd.pop(f"{head}.{layer}.weight"), hsd.pop(f"{head}.{layer}.bias")
      if tuple(w.shape[::-1]) != tuple(p["kernel"].shape):
        raise convert.CheckpointMismatch(f"{folder}: {head}.{layer}.weight has shape {w.shape}")
      params[head][layer] = {"kernel": np.ascontiguousarray(w.T), "bias": b}
  if hsd:
    raise convert.CheckpointMismatch(f"{folder}/{HEADS_FILE}: unexpected keys {sorted(hsd)}")
  if audio_stats is not None:
    return {"params": params, "batch_stats": {"audio": audio_stats}}
  return {"params": params}


# ------------------------------------------------------------------------------ CLI


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
      prog="python -m jaxclap.export",
      description="Export a jaxclap run to PyTorch. HTS-AT runs (+ RoBERTa text tower, "
                  "MLP heads) become transformers' CLAP format: ClapModel weights and "
                  "config plus a ClapProcessor (feature extractor + tokenizer), loadable "
                  "with ClapModel.from_pretrained(OUT) and pipeline('zero-shot-audio-"
                  "classification', model=OUT). Other runs (spectrogram ViT, CNN14, other "
                  "HTS-AT runs) become the towers format: OUT/audio a ViTMAEModel / "
                  "ClapAudioModel / Cnn14Torch, OUT/text a BertModel / RobertaModel / "
                  "Qwen3Model / Gemma3TextModel with its tokenizer, heads and front end "
                  "files; serve it with jaxclap.torch_model.ClapModelTorch.from_pretrained"
                  "(OUT).",
      epilog="Runs with no exact equivalent (for ClapModel: linear heads, a head width "
             "other than embed_dim, win_length != n_fft, constant STFT padding, ...; for "
             "the towers format: fbank features, on-device resampling, other text "
             "towers) are refused with the config field named. The exported ClapModel "
             "processor embeds one random crop of clips longer than input.clip_seconds, "
             "where jaxclap averages windows; see the jaxclap.export docstring.")
  parser.add_argument("--workdir", required=True,
                      help="the run folder written by python -m jaxclap.main")
  parser.add_argument("--out", required=True, help="the folder to write (created)")
  parser.add_argument("--step", type=int, default=None,
                      help="the checkpoint step to export (default: the latest)")
  args = parser.parse_args(argv)
  try:
    path = export(args.workdir, args.out, args.step)
  except (NotExportable, FileNotFoundError) as e:
    print(f"jaxclap.export: {e}", file=sys.stderr)
    return 2
  print(path)
  return 0


if __name__ == "__main__":
  sys.exit(main())
