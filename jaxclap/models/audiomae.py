"""AudioMAE (Huang et al., 2022) checkpoints -> ``SpectrogramViT``, and AudioMAE's input.

AudioMAE's ViT-B is a timm ``VisionTransformer`` over a [1024 frames, 128 bins] Kaldi
fbank, 16 x 16 patches, a [CLS] token and fixed 2-D sin-cos positions; pretraining adds an
MAE decoder (``models_mae.MaskedAutoencoderViT``). Its keys map onto ``SpectrogramViT``:

  patch_embed.proj (Conv2d [d, 1, 16, 16])  -> patch_embed (Dense over row-major tiles)
  cls_token (+ pos_embed[:, 0], zero)       -> cls
  blocks.N.norm1 / norm2                    -> encoder/layer_N/attn_norm / mlp_norm
  blocks.N.attn.qkv (fused [3d, d])         -> encoder/layer_N/attn/{query,key,value}
  blocks.N.attn.proj, mlp.fc1, mlp.fc2      -> attn/out, mlp/fc_in, mlp/fc_out
  norm                                      -> norm
  decoder_embed, mask_token, decoder_blocks.N, decoder_norm, decoder_pred
                                            -> dec_embed, mask_token, decoder/layer_N, ...

Rules beyond the one-to-one table:

* ``pos_embed`` / ``decoder_pos_embed`` are not parameters of ours: ``SpectrogramViT``
  computes its sin-cos table. The stored table is checked against it (for the
  spectrogram height ``n_mels``), so a checkpoint with learned or differently laid out
  positions is refused instead of silently mis-positioned. Released AudioMAE checkpoints
  are refused this way: see "Positions" below.
* Decoder keys (``decoder_*``, ``mask_token``) are imported when the target tower has a
  decoder (``mae_depth > 0``) and ignored when it has none. A decoder that is not a plain
  ViT (AudioMAE's default ``decoder_mode=1``, Swin blocks with local attention and no
  [CLS], recognised by its relative-position keys) cannot be imported; build the tower
  with ``mae_depth=0`` to take the encoder alone.
* ``head.*`` (a fine-tuned classifier) is ignored. A fine-tuned checkpoint with
  ``fc_norm`` (timm's global pooling: LayerNorm *after* the mean over patch tokens, and
  no final ``norm``) is refused: ``SpectrogramViT`` norms tokens before pooling.

Positions. AudioMAE builds its table with ``get_2d_sincos_pos_embed_flexible(d,
patch_embed.patch_hw)``, and its ``PatchEmbed_org`` sets ``patch_hw = (W // p, H // p)``
= (8, 64) for a [H=1024, W=128] input: height and width swapped. The tokens are numbered
time-major (token ``t * 8 + f``) but the table is a grid of 8 rows of 64, so token k gets
the pair (k % 64, k // 64) instead of (f, t). Every released AudioMAE checkpoint (the
fine-tuned ones copy ``pos_embed`` from pretraining) carries that table;
``audiomae_positions`` reproduces it. It equals ``vit.sincos_2d(d, F/p, T/p)`` (grid
arguments swapped) and differs from what ``SpectrogramViT`` adds,
``vit.sincos_2d(d, T/p, F/p)``, unless the tile grid is square. Importing those weights
exactly needs AudioMAE's table: build the tower with ``pos_layout="audiomae"`` (for
shorter inputs it adds the table's first rows, as AudioMAE pads every clip to 1024
frames) and import with ``import_torch(positions="audiomae")``.

Input features (``features_config``): torchaudio's Kaldi fbank as AudioMAE's dataset
computes it (16 kHz, 25 ms Hanning window, 10 ms shift, 128 bins, dither 0, the clip's
mean removed from the waveform first), zero-padded or cut to 1024 frames, normalised as
``(fbank - mean) / (2 * std)`` with AudioSet's mean and std (AST's convention: the
doubled std is deliberate, it is what the checkpoints were trained on).
"""

from __future__ import annotations

from typing import Any, Mapping

import flax.linen as nn
import numpy as np

from jaxclap.models import convert, towers, vit
from jaxclap.models.convert import (CheckpointMismatch, Rules, ident, linear_t,
                                    merge_heads_out, split_heads_bias, split_heads_in)

# AudioMAE's input (dataset.py, main_pretrain.py / main_finetune_as.py).
SAMPLE_RATE = 16000
NUM_MEL_BINS = 128
TARGET_FRAMES = 1024          # 10.24 s: shorter fbanks are zero-padded, longer ones cut
FRAME_LENGTH_MS = 25.0
FRAME_SHIFT_MS = 10.0
WINDOW_TYPE = "hanning"
AUDIOSET_MEAN = -4.2677393    # fbank statistics of AudioSet (norm_stats['audioset'])
AUDIOSET_STD = 4.5689974
PATCH = 16

# ViT-B as released (mae_vit_base_patch16 / vit_base_patch16): SpectrogramViT fields.
VIT_B = dict(width=768, depth=12, num_heads=12, mlp_dim=3072, patch=PATCH, pooling="cls",
             layer_norm_eps=1e-6, mask_ratio=0.8, mae_width=512, mae_depth=8, mae_heads=16)


def features_config() -> dict:
  """``config.features`` for AudioMAE input, for a Kaldi fbank front end.

  Every field is one ``two_towers.spectrogram``'s ``kind="fbank"`` branch reads
  (waveform minus its clip mean -> ``fbank`` -> pad or cut to ``max_frames`` ->
  ``(x - norm_mean) / norm_std``; real frames from ``fbank_num_frames``). ``norm_std`` is
  already the doubled std. The bin count is ``n_mels`` alone (a second name for it would
  be a field nothing reads), and there is no ``dither``: ``jaxclap.audio.fbank`` is
  deterministic, which is AudioMAE's dither=0.
  """
  return dict(kind="fbank", sample_rate=SAMPLE_RATE, target_rate=SAMPLE_RATE,
              frame_length_ms=FRAME_LENGTH_MS, frame_shift_ms=FRAME_SHIFT_MS,
              n_mels=NUM_MEL_BINS, window_type=WINDOW_TYPE,
              low_freq=20.0, high_freq=0.0, preemph_coeff=0.97, remove_dc_offset=True,
              round_to_power_of_two=True, snip_edges=True,
              subtract_mean=True, max_frames=TARGET_FRAMES, frames_multiple=PATCH,
              norm_mean=AUDIOSET_MEAN, norm_std=2.0 * AUDIOSET_STD)


def audiomae_positions(width: int, time_tiles: int, mel_tiles: int) -> np.ndarray:
  """[time_tiles * mel_tiles, width]: the table AudioMAE adds to its time-major tokens
  (its ``patch_hw`` swap, see the module docstring); no [CLS] row."""
  return vit.sincos_2d(width, mel_tiles, time_tiles)


# --------------------------------------------------------------------------- rules

def _qkv(i: int, split):
  """One of q/k/v (i = 0, 1, 2) out of timm's fused ``qkv`` Linear, rows (3, heads, k)."""
  def fn(a, shape):
    if a.shape[0] % 3:
      raise ValueError("not a fused qkv")
    d = a.shape[0] // 3
    return split(a[i * d:(i + 1) * d], shape)
  return fn


def block_rules(ours: tuple[str, ...], theirs: str) -> Rules:
  """One timm ``Block`` (pre-LN, fused qkv) -> one ``TransformerBlock``."""
  r: Rules = {}
  for i, name in enumerate(("query", "key", "value")):
    r[ours + ("attn", name, "kernel")] = (f"{theirs}.attn.qkv.weight", _qkv(i, split_heads_in))
    r[ours + ("attn", name, "bias")] = (f"{theirs}.attn.qkv.bias", _qkv(i, split_heads_bias))
  r[ours + ("attn", "out", "kernel")] = (f"{theirs}.attn.proj.weight", merge_heads_out)
  r[ours + ("attn", "out", "bias")] = (f"{theirs}.attn.proj.bias", ident)
  for ours_name, timm in (("attn_norm", "norm1"), ("mlp_norm", "norm2")):
    r[ours + (ours_name, "scale")] = (f"{theirs}.{timm}.weight", ident)
    r[ours + (ours_name, "bias")] = (f"{theirs}.{timm}.bias", ident)
  for ours_name, timm in (("fc_in", "fc1"), ("fc_out", "fc2")):
    r[ours + ("mlp", ours_name, "kernel")] = (f"{theirs}.mlp.{timm}.weight", linear_t)
    r[ours + ("mlp", ours_name, "bias")] = (f"{theirs}.mlp.{timm}.bias", ident)
  return r


def _patch_kernel(a, shape):
  """Conv2d [d, 1, p, p] -> Dense [p*p, d]: the kernel's (time, mel) pixels flatten
  row-major, as ``vit.patchify`` orders a tile."""
  if a.ndim != 4 or a.shape[1] != 1:
    raise ValueError("not a one-channel patch convolution")
  return a.reshape(a.shape[0], -1).T


def rules(depth: int, mae_depth: int = 0) -> Rules:
  """AudioMAE / timm ViT keys (without prefix) for a ``SpectrogramViT``."""
  r: Rules = {
      ("patch_embed", "kernel"): ("patch_embed.proj.weight", _patch_kernel),
      ("patch_embed", "bias"): ("patch_embed.proj.bias", ident),
      ("cls",): ("cls_token", ident),
      ("norm", "scale"): ("norm.weight", ident),
      ("norm", "bias"): ("norm.bias", ident),
  }
  for i in range(depth):
    r.update(block_rules(("encoder", f"layer_{i}"), f"blocks.{i}"))
  if mae_depth > 0:
    r.update({
        ("dec_embed", "kernel"): ("decoder_embed.weight", linear_t),
        ("dec_embed", "bias"): ("decoder_embed.bias", ident),
        ("mask_token",): ("mask_token", ident),
        ("dec_norm", "scale"): ("decoder_norm.weight", ident),
        ("dec_norm", "bias"): ("decoder_norm.bias", ident),
        ("dec_pred", "kernel"): ("decoder_pred.weight", linear_t),
        ("dec_pred", "bias"): ("decoder_pred.bias", ident),
    })
    for i in range(mae_depth):
      r.update(block_rules(("decoder", f"layer_{i}"), f"decoder_blocks.{i}"))
  return r


# --------------------------------------------------------------------------- import

POSITIONS = ("mae", "audiomae")


def _check_positions(table, key: str, width: int, mel_tiles: int, positions: str,
                     where: str) -> np.ndarray:
  """Validates a stored [1, 1 + n, width] sin-cos table; returns its [CLS] row."""
  a = np.asarray(table, np.float64)
  if a.ndim not in (2, 3) or a.shape[-1] != width or (a.ndim == 3 and a.shape[0] != 1):
    raise CheckpointMismatch(f"{where}: key {key!r} has shape {a.shape}, but the tower needs "
                             f"(1, 1 + tiles, {width})")
  a = a.reshape(-1, width)
  n = a.shape[0] - 1
  if n <= 0 or n % mel_tiles:
    raise CheckpointMismatch(
        f"{where}: key {key!r} holds {n} tile positions, not a whole number of time columns "
        f"of {mel_tiles} mel tiles (pass the checkpoint's n_mels=)")
  t_tiles = n // mel_tiles
  tables = {"mae": vit.sincos_2d(width, t_tiles, mel_tiles),
            "audiomae": audiomae_positions(width, t_tiles, mel_tiles)}
  close = lambda ref: np.max(np.abs(a[1:] - ref)) <= 1e-4
  if close(tables[positions]):
    return a[0]
  other = next(p for p in POSITIONS if p != positions)
  if close(tables[other]) and other == "audiomae":
    raise CheckpointMismatch(
        f"{where}: {key!r} is AudioMAE's position table for {t_tiles} x {mel_tiles} tiles: "
        f"its patch_hw swap gives token k the grid pair (k % {t_tiles}, k // {t_tiles}), while "
        f"SpectrogramViT adds the (mel, time) table; importing these weights exactly needs "
        f"a SpectrogramViT that adds AudioMAE's table (then pass positions='audiomae')")
  if close(tables[other]):
    raise CheckpointMismatch(f"{where}: {key!r} is the (mel, time) sin-cos table, not "
                             f"AudioMAE's swapped one: pass positions='mae'")
  raise CheckpointMismatch(
      f"{where}: {key!r} is not a fixed 2-D sin-cos table for {t_tiles} x {mel_tiles} "
      f"tiles (learned or interpolated positions?); SpectrogramViT cannot represent it")


def import_torch(state_dict: Mapping[str, Any], target: Any, *, where: str = "checkpoint",
                 prefix: str | None = None, n_mels: int = NUM_MEL_BINS,
                 positions: str = "mae") -> dict:
  """AudioMAE / timm ViT weights -> ``SpectrogramViT`` params shaped like ``target``.

  ``target``: the tower's params (arrays or ShapeDtypeStructs); depth, decoder and patch
  size are read off it. ``n_mels``: the spectrogram height the checkpoint was trained on
  (128 for AudioMAE), which turns the stored position tables into a tile grid.
  ``positions``: the table the tower adds, ``"mae"`` (``SpectrogramViT`` as it is) or
  ``"audiomae"``. Keys may carry a prefix before ``patch_embed.proj.weight``; keys
  outside it are left alone. See the module docstring for the rules; anything missing,
  unexpected or mis-shaped raises ``CheckpointMismatch`` naming the key.
  """
  if positions not in POSITIONS:
    raise ValueError(f"positions must be one of {POSITIONS}, got {positions!r}")
  target = nn.meta.unbox(target)
  if "params" in target and "patch_embed" not in target:
    target = target["params"]
  prefix = convert._find_prefix(state_dict, "patch_embed.proj.weight", prefix, where)
  has = lambda k: prefix + k in state_dict
  depth = sum(1 for k in target.get("encoder", {}) if k.startswith("layer_"))
  mae_depth = sum(1 for k in target.get("decoder", {}) if k.startswith("layer_"))
  width = target["cls"].shape[-1]
  patch = int(round(np.sqrt(target["patch_embed"]["kernel"].shape[0])))
  if n_mels % patch:
    raise ValueError(f"n_mels={n_mels} is not a multiple of the patch size {patch}")
  mel_tiles = n_mels // patch

  if has("fc_norm.weight"):
    raise CheckpointMismatch(
        f"{where}: {prefix}fc_norm.* is timm's global-pool head (LayerNorm after the mean "
        f"over patch tokens, no final norm); SpectrogramViT norms tokens before pooling and "
        f"cannot represent it")
  if mae_depth and any(k.startswith(prefix + "decoder_blocks.") and "relative_position" in k
                       for k in state_dict):
    raise CheckpointMismatch(
        f"{where}: the checkpoint's decoder is AudioMAE's Swin local-attention decoder "
        f"(decoder_mode=1), not a plain ViT decoder; build the tower with mae_depth=0 to "
        f"import the encoder alone")

  state_dict = dict(state_dict)
  if has("pos_embed"):
    cls_pos = _check_positions(state_dict[prefix + "pos_embed"], prefix + "pos_embed", width,
                               mel_tiles, positions, where)
    if has("cls_token"):   # AudioMAE adds pos_embed[:, 0] (zero for sin-cos) to [CLS]
      state_dict[prefix + "cls_token"] = (np.asarray(state_dict[prefix + "cls_token"], np.float32)
                                          + cls_pos.astype(np.float32))
  if mae_depth and has("decoder_pos_embed"):
    key = prefix + "decoder_pos_embed"
    cls_pos = _check_positions(state_dict[key], key, target["mask_token"].shape[-1], mel_tiles,
                               positions, where)
    if np.max(np.abs(cls_pos)) > 1e-6:
      raise CheckpointMismatch(f"{where}: {key!r} has a non-zero [CLS] row; our decoder adds "
                               f"no position to [CLS]")

  def ignore(k: str) -> bool:   # k without the prefix
    if k in ("pos_embed", "decoder_pos_embed") or k.startswith("head."):
      return True
    return not mae_depth and (k.startswith("decoder_") or k == "mask_token")

  return convert.apply_rules(rules(depth, mae_depth), state_dict, target, prefix=prefix,
                             ignore=ignore, where=where)


# ------------------------------------------------- transformers ViTMAEModel (export)
#
# The way out (``jaxclap.export``): a ``SpectrogramViT`` encoder as transformers'
# ``ViTMAEModel`` (num_channels=1, image_size=(frames, n_mels), the Conv2d over the
# [1, T, F] image numbering tiles time-major as ``vit.patchify`` does). ViTMAE's blocks are
# the same pre-LN blocks (exact GELU); its ``position_embeddings`` [1, 1 + tiles, d] take
# our table with a zero [CLS] row. Run it with ``noise=arange(tiles)`` (argsort keeps the
# order, mask_ratio 0 keeps every tile) and ``attention_mask`` [b, 1 + tiles] to get our
# tower's tokens, padding tiles masked out of attention.

_patch_kernel_inverse = lambda a: np.ascontiguousarray(a.T).reshape(
    a.shape[1], 1, int(round(np.sqrt(a.shape[0]))), int(round(np.sqrt(a.shape[0]))))
convert.INVERSE.setdefault(id(_patch_kernel), _patch_kernel_inverse)


def vitmae_rules(depth: int) -> Rules:
  """transformers ``ViTMAEModel`` keys for a ``SpectrogramViT`` encoder (no decoder)."""
  r: Rules = {
      ("patch_embed", "kernel"): ("embeddings.patch_embeddings.projection.weight", _patch_kernel),
      ("patch_embed", "bias"): ("embeddings.patch_embeddings.projection.bias", ident),
      ("cls",): ("embeddings.cls_token", ident),
      ("norm", "scale"): ("layernorm.weight", ident),
      ("norm", "bias"): ("layernorm.bias", ident),
  }
  for i in range(depth):
    ours, theirs = ("encoder", f"layer_{i}"), f"layers.{i}"
    for name, hf in (("query", "q_proj"), ("key", "k_proj"), ("value", "v_proj")):
      r[ours + ("attn", name, "kernel")] = (f"{theirs}.attention.{hf}.weight", split_heads_in)
      r[ours + ("attn", name, "bias")] = (f"{theirs}.attention.{hf}.bias", split_heads_bias)
    r[ours + ("attn", "out", "kernel")] = (f"{theirs}.attention.o_proj.weight", merge_heads_out)
    r[ours + ("attn", "out", "bias")] = (f"{theirs}.attention.o_proj.bias", ident)
    for name, hf in (("attn_norm", "layernorm_before"), ("mlp_norm", "layernorm_after")):
      r[ours + (name, "scale")] = (f"{theirs}.{hf}.weight", ident)
      r[ours + (name, "bias")] = (f"{theirs}.{hf}.bias", ident)
    for name, hf in (("fc_in", "fc1"), ("fc_out", "fc2")):
      r[ours + ("mlp", name, "kernel")] = (f"{theirs}.mlp.{hf}.weight", linear_t)
      r[ours + ("mlp", name, "bias")] = (f"{theirs}.mlp.{hf}.bias", ident)
  return r


_DECODER = ("dec_embed", "mask_token", "decoder", "dec_norm", "dec_pred")


def export_vitmae(params: Mapping, positions: np.ndarray) -> tuple[dict, dict]:
  """``SpectrogramViT`` params -> (a ``ViTMAEModel`` state dict with
  ``embeddings.position_embeddings`` = [zero CLS row; ``positions``], the MAE decoder's
  params flattened as ``"dec_embed/kernel"``... (ViTMAEModel has no decoder; kept so that
  ``import_vitmae`` gives every parameter back))."""
  from flax import traverse_util
  params = nn.meta.unbox(dict(params))
  enc = {k: v for k, v in params.items() if k not in _DECODER}
  depth = sum(1 for k in enc.get("encoder", {}) if k.startswith("layer_"))
  sd = convert.export_rules(vitmae_rules(depth), enc, where="SpectrogramViT")
  pos = np.asarray(positions, np.float32)
  sd["embeddings.position_embeddings"] = np.concatenate(
      [np.zeros((1, pos.shape[-1]), np.float32), pos])[None]
  dec = traverse_util.flatten_dict({k: v for k, v in params.items() if k in _DECODER}, sep="/")
  return sd, {k: np.asarray(v, np.float32) for k, v in dec.items()}


# transformers 5 keeps the classic ViT key names on disk (``save_pretrained`` writes, and
# ``from_pretrained`` reads, ``encoder.layer.N.attention.attention.query``...) while its
# modules are named ``layers.N.attention.q_proj``...: both are read.
_VITMAE_DISK = (
    (r"^encoder\.layer\.(\d+)\.attention\.attention\.query\.", r"layers.\1.attention.q_proj."),
    (r"^encoder\.layer\.(\d+)\.attention\.attention\.key\.", r"layers.\1.attention.k_proj."),
    (r"^encoder\.layer\.(\d+)\.attention\.attention\.value\.", r"layers.\1.attention.v_proj."),
    (r"^encoder\.layer\.(\d+)\.attention\.output\.dense\.", r"layers.\1.attention.o_proj."),
    (r"^encoder\.layer\.(\d+)\.intermediate\.dense\.", r"layers.\1.mlp.fc1."),
    (r"^encoder\.layer\.(\d+)\.output\.dense\.", r"layers.\1.mlp.fc2."),
    (r"^encoder\.layer\.(\d+)\.layernorm_", r"layers.\1.layernorm_"),
)


def _vitmae_current_names(state_dict: Mapping[str, Any]) -> dict:
  import re
  out = {}
  for k, v in state_dict.items():
    k = k[len("vit."):] if k.startswith("vit.") else k
    for pat, rep in _VITMAE_DISK:
      k = re.sub(pat, rep, k)
    out[k] = v
  return out


def import_vitmae(state_dict: Mapping[str, Any], target: Any, decoder: Mapping | None = None,
                  *, positions: np.ndarray | None = None, where: str = "checkpoint") -> dict:
  """The inverse of ``export_vitmae``: ``target`` is the tower's params (shapes);
  ``positions``, when given, must equal the stored table's rows after [CLS] (whose row
  must be zero: our [CLS] has no position)."""
  from flax import traverse_util
  target = nn.meta.unbox(dict(target))
  enc_t = {k: v for k, v in target.items() if k not in _DECODER}
  depth = sum(1 for k in enc_t.get("encoder", {}) if k.startswith("layer_"))
  sd = _vitmae_current_names(state_dict)
  table = np.asarray(sd.pop("embeddings.position_embeddings"), np.float32)[0]
  if np.any(table[0] != 0):
    raise CheckpointMismatch(f"{where}: position_embeddings has a non-zero [CLS] row")
  if positions is not None and not np.array_equal(table[1:], np.asarray(positions, np.float32)):
    raise CheckpointMismatch(f"{where}: position_embeddings differ from the tower's table")
  out = convert.apply_rules(vitmae_rules(depth), sd, enc_t, where=where)
  dec_t = traverse_util.flatten_dict({k: v for k, v in target.items() if k in _DECODER},
                                     sep="/")
  if dec_t:
    decoder = dict(decoder or {})
    if sorted(decoder) != sorted(dec_t):
      raise CheckpointMismatch(f"{where}: MAE decoder keys {sorted(decoder)[:4]} != the "
                               f"tower's {sorted(dec_t)[:4]}")
    for k, v in dec_t.items():
      if tuple(decoder[k].shape) != tuple(v.shape):
        raise CheckpointMismatch(f"{where}: decoder {k} shape {decoder[k].shape} != {v.shape}")
    out.update(traverse_util.unflatten_dict(
        {k: np.asarray(v, np.float32) for k, v in decoder.items()}, sep="/"))
  return out


# ------------------------------------------------- the towers export (jaxclap.export)

# The MAE decoder (training only) beside OUT/audio, so that the way back is complete.
DECODER_FILE = "audio_mae_decoder.safetensors"


def _export_positions(config: Any) -> np.ndarray:
  """The run's ViT position table for one exported window (no [CLS] row)."""
  vt = towers.module(config.model.audio)
  _, _, frames = towers.window_frames(config)
  p, n_mels = int(vt.patch), int(config.features.n_mels)
  t_tiles, f_tiles = frames // p, n_mels // p
  if vt.pos_layout == "mae":
    return np.asarray(vit.sincos_2d(int(vt.width), t_tiles, f_tiles))
  if vt.pos_layout == "audiomae":
    return np.asarray(vit.sincos_2d(int(vt.width), f_tiles,
                                    int(vt.pos_max_frames) // p))[:t_tiles * f_tiles]
  raise towers.NotExportable(f"config.model.audio.pos_layout={vt.pos_layout!r}")


def _export(config: Any, variables: Mapping, out: str) -> dict:
  """OUT/audio as ``ViTMAEModel`` (+ the decoder file); the metadata entry."""
  import os
  import safetensors.numpy
  import transformers
  vt = towers.module(config.model.audio)
  _, _, frames = towers.window_frames(config)
  sd, dec = export_vitmae(variables["params"], _export_positions(config))
  vcfg = transformers.ViTMAEConfig(
      hidden_size=int(vt.width), num_hidden_layers=int(vt.depth),
      num_attention_heads=int(vt.num_heads), intermediate_size=int(vt.mlp_dim),
      hidden_act="gelu", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
      layer_norm_eps=float(vt.layer_norm_eps), image_size=[frames, int(config.features.n_mels)],
      patch_size=int(vt.patch), num_channels=1, qkv_bias=True, mask_ratio=0.0,
      norm_pix_loss=False)
  convert.save_strict(transformers.ViTMAEModel(vcfg), sd, os.path.join(out, "audio"))
  if dec:
    safetensors.numpy.save_file(dec, os.path.join(out, DECODER_FILE))
  return {"class": "ViTMAEModel", "path": "audio", "inputs": "tiles", "patch": int(vt.patch),
          "pooling": str(vt.pooling), "mae_decoder": DECODER_FILE}


def _import_export(config: Any, folder: str, target: Mapping) -> dict:
  import os
  import safetensors.numpy
  where = os.path.join(folder, "audio")
  dec_path = os.path.join(folder, DECODER_FILE)
  dec = safetensors.numpy.load_file(dec_path) if os.path.exists(dec_path) else {}
  return {"params": import_vitmae(convert.load_state_dict(where), target["params"], dec,
                                  positions=_export_positions(config), where=where)}


# -------------------------------------------------------------------------- registration

towers.register(towers.Tower(
    name="vit", side="audio", module=vit.SpectrogramViT, import_torch=import_torch,
    aliases=("audiomae",), torch_class="ViTMAEModel", export_torch=_export,
    import_export=_import_export,
    presets={"vit": dict(name="vit", width=192, depth=4, num_heads=3, mlp_dim=768, patch=16,
                         pooling="mean", mask_ratio=0.75, mae_width=96, mae_depth=1,
                         mae_heads=3, flip_mask_ratio=0.0, shared_mae_pass=False),
             "audiomae-vit-b": dict(name="vit", **VIT_B)},
    runlocal={"vit": dict(width=32, depth=1, num_heads=2, mlp_dim=64, mae_width=32,
                          mae_heads=2)}))
