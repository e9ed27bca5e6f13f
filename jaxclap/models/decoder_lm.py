"""Decoder-LLM text towers: Qwen3 (Qwen3-Embedding) and Gemma3 (MedGemma's text model).

A ``DecoderTower`` is token embeddings, ``depth`` pre-norm blocks of the shared
``jaxclap.models.transformer.TransformerBlock`` (RMSNorm, grouped-query causal attention
with rotary positions and per-head q/k norms, gated MLP, no biases) and a final RMSNorm.
``family`` picks what differs between the two:

* ``"qwen3"``: RMSNorm ``x * w``, SwiGLU, logits scaled by ``head_dim ** -0.5``;
* ``"gemma3"``: RMSNorm ``x * (1 + w)`` and four norms per block, GeGLU (tanh),
  embeddings times ``sqrt(hidden_size)`` (rounded to the compute dtype, as HF does),
  logits scaled by ``query_pre_attn_scalar ** -0.5``, and sliding-window local layers
  (``rope_local_theta``) between global ones (every ``sliding_window_pattern``-th, with
  ``rope_scaling``, HF's linear factor), unless ``layer_types`` lists them.

Pooling, for the two-tower interface ``(ids, mask) -> (pooled [b, d], hidden [b, t, d])``:
``"last"`` is the state of the last real token (Qwen3-Embedding; ``mask.sum() - 1`` under
right padding, and the last position under left padding), ``"mean"`` the masked mean of
the last-layer states (AcuLa over MedGemma). Positions are ``0 .. t-1`` whatever the
padding, as in HF's forward without ``position_ids``; right padding (the pipeline's) keeps
the real tokens' positions and states independent of the padding.

``PRESETS`` name the published sizes; ``jax.eval_shape`` parameter counts (embeddings
included, no LM head: both tie it to the embeddings):

* ``qwen3-embedding-0.6b``: 595,776,512 (155,309,056 in the 151,669 x 1024 embeddings),
  the Qwen3-Embedding-0.6B checkpoint's count;
* ``qwen3-embedding-8b``: SLAP's text embedder (count in tests/test_recipes.py);
* ``medgemma-4b`` (gemma-3-4b's text model): 3,880,263,168 (671,252,480 in the
  262,208 x 2560 embeddings); the SigLIP vision tower of the multimodal checkpoint is
  not part of it.

``config_from_hf`` turns an HF ``config.json`` (dict or config object; a multimodal
Gemma3 config's ``text_config``) into tower fields; ``import_torch`` maps HF Qwen3Model /
Gemma3TextModel weights onto a tower's parameters (see its docstring).
"""

from __future__ import annotations

import functools
import re
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from jaxclap.models import convert, towers
from jaxclap.models.convert import (CheckpointMismatch, Rules, apply_rules, ident, linear_t,
                                    merge_heads_out, split_heads_bias, split_heads_in)
from jaxclap.models.transformer import (TransformerBlock, dense_init, layer_stack, logical,
                                        make_norm)

FAMILIES = ("qwen3", "gemma3")
LAYER_TYPES = ("full_attention", "sliding_attention")

PRESETS: dict[str, dict[str, Any]] = {
    # Qwen/Qwen3-Embedding-0.6B: 28 layers, 16 query / 8 key-value heads of 128, rope 1e6;
    # embeddings are the last real token's state (the model appends <|endoftext|>).
    "qwen3-embedding-0.6b": dict(
        family="qwen3", vocab_size=151669, hidden_size=1024, depth=28, num_heads=16,
        num_kv_heads=8, head_dim=128, mlp_dim=3072, rope_theta=1_000_000.0,
        rms_norm_eps=1e-6, pooling="last"),
    # Qwen/Qwen3-Embedding-8B (SLAP's text embedder): 36 layers, 32 query / 8 key-value
    # heads of 128, 12288-wide MLP, its config.json's 151,665-row vocabulary.
    "qwen3-embedding-8b": dict(
        family="qwen3", vocab_size=151665, hidden_size=4096, depth=36, num_heads=32,
        num_kv_heads=8, head_dim=128, mlp_dim=12288, rope_theta=1_000_000.0,
        rms_norm_eps=1e-6, pooling="last"),
    # google/medgemma-4b-it's text model = gemma-3-4b's: 34 layers, 8 query / 4 key-value
    # heads of 256, five 1024-token sliding-window layers (rope 1e4) per global layer
    # (rope 1e6, linear scaling x8); AcuLa mean-pools it.
    "medgemma-4b": dict(
        family="gemma3", vocab_size=262208, hidden_size=2560, depth=34, num_heads=8,
        num_kv_heads=4, head_dim=256, mlp_dim=10240, rope_theta=1_000_000.0,
        rope_local_theta=10_000.0, rope_scaling=8.0, sliding_window=1024,
        sliding_window_pattern=6, query_pre_attn_scalar=256.0, rms_norm_eps=1e-6,
        pooling="mean"),
}


class DecoderTower(nn.Module):
  """Qwen3 / Gemma3 decoder as a text tower; defaults are Qwen3-Embedding-0.6B's."""
  vocab_size: int = 151669
  hidden_size: int = 1024
  depth: int = 28
  num_heads: int = 16
  num_kv_heads: int = 8
  head_dim: int = 128
  mlp_dim: int = 3072
  family: str = "qwen3"
  rope_theta: float = 1_000_000.0            # full-attention layers
  rope_scaling: float = 1.0                  # linear factor on full-attention layers
  rope_local_theta: float | None = None      # sliding layers; None: rope_theta
  rope_local_scaling: float = 1.0
  rms_norm_eps: float = 1e-6
  sliding_window: int | None = None          # key j visible from i iff i - j < window
  sliding_window_pattern: int = 6            # gemma3: every n-th layer is global
  layer_types: Sequence[str] | None = None   # per layer, LAYER_TYPES; overrides the pattern
  query_pre_attn_scalar: float | None = None  # gemma3 logits * this ** -0.5; None: head_dim
  attn_logit_softcapping: float | None = None
  attention_bias: bool = False
  causal: bool = True                        # False: bidirectional (EmbeddingGemma-style)
  pooling: str = "last"
  dropout_rate: float = 0.0
  remat: bool | str = False
  scan_layers: bool = False                  # scanned layers (transformer.layer_stack): Gemma3's
                                             # sliding/global pattern scans a period at a time
  dtype: Any = jnp.float32

  def resolved_layer_types(self) -> tuple[str, ...]:
    """Each layer's attention kind, as HF's ``config.layer_types``."""
    if self.layer_types is not None:
      types = tuple(self.layer_types)
      if len(types) != self.depth or set(types) - set(LAYER_TYPES):
        raise ValueError(f"layer_types must list {self.depth} of {LAYER_TYPES}, got {types}")
    elif self.sliding_window is None:
      types = ("full_attention",) * self.depth
    elif self.family == "gemma3":
      p = self.sliding_window_pattern
      types = tuple("full_attention" if (i + 1) % p == 0 else "sliding_attention"
                    for i in range(self.depth))
    else:
      raise ValueError("sliding_window for a qwen3 tower needs layer_types (which layers "
                       "slide: HF's use_sliding_window / max_window_layers)")
    if "sliding_attention" in types and self.sliding_window is None:
      raise ValueError("layer_types has sliding_attention layers but sliding_window is None")
    return types

  @nn.compact
  def __call__(self, ids, mask, deterministic: bool = True):
    """ids, mask: int [b, t]. Returns (pooled [b, d], hidden states [b, t, d])."""
    if self.family not in FAMILIES:
      raise ValueError(f"family must be one of {FAMILIES}, got {self.family!r}")
    gemma = self.family == "gemma3"
    x = nn.Embed(self.vocab_size, self.hidden_size, name="embed_tokens",
                 embedding_init=logical(dense_init(), "vocab", "embed"))(ids)
    x = x.astype(self.dtype)
    if gemma:
      x = x * jnp.asarray(np.sqrt(self.hidden_size), self.dtype)
    x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
    scalar = self.query_pre_attn_scalar or self.head_dim
    types = self.resolved_layer_types()
    layers = []
    for kind in types:
      local = kind == "sliding_attention"
      layers.append(dict(
          num_heads=self.num_heads, mlp_dim=self.mlp_dim, pre_norm=True,
          activation="gelu_tanh" if gemma else "silu", layer_norm_eps=self.rms_norm_eps,
          dropout_rate=self.dropout_rate, dtype=self.dtype,
          head_dim=self.head_dim, num_kv_heads=self.num_kv_heads,
          norm="rms1p" if gemma else "rms", post_norms=gemma, qk_norm=True, gated_mlp=True,
          attn_bias=self.attention_bias, mlp_bias=False,
          rope_theta=(self.rope_local_theta or self.rope_theta) if local else self.rope_theta,
          rope_scale=self.rope_local_scaling if local else self.rope_scaling,
          query_scale=float(scalar) ** -0.5 if gemma else None,
          logit_softcap=self.attn_logit_softcapping, causal=self.causal,
          sliding_window=self.sliding_window if local else None))
    x = layer_stack(TransformerBlock, layers, remat=self.remat, scan=self.scan_layers,
                    deterministic=deterministic)(x, mask)
    x = make_norm("rms1p" if gemma else "rms", "norm", self.rms_norm_eps, self.dtype)(x)
    m = mask.astype(bool)
    if self.pooling == "last":
      # The last real position: mask.sum() - 1 under right padding, t - 1 under left.
      last = jnp.max(jnp.where(m, jnp.arange(m.shape[1])[None], 0), axis=1)
      pooled = jnp.take_along_axis(x, last[:, None, None], axis=1)[:, 0]
    elif self.pooling == "mean":
      # Sum in float32: hundreds of bf16 states lose the mean's low bits otherwise.
      w = m[..., None].astype(jnp.float32)
      pooled = ((x.astype(jnp.float32) * w).sum(1) / jnp.maximum(w.sum(1), 1.0)).astype(x.dtype)
    else:
      raise ValueError(f"pooling must be 'last' or 'mean', got {self.pooling!r}")
    return pooled, x


def from_preset(name: str, **overrides) -> DecoderTower:
  """``PRESETS[name]`` with ``overrides`` (pooling, remat, dtype, ...)."""
  if name not in PRESETS:
    raise ValueError(f"unknown decoder preset {name!r}; known: {sorted(PRESETS)}")
  return DecoderTower(**{**PRESETS[name], **overrides})


# ---------------------------------------------------------------------------------------
# HF configs and checkpoints.


def _rope(params: Mapping | None, where: str) -> tuple[float | None, float]:
  """(theta, linear factor) of one HF rope-parameters dict; other rope types refuse."""
  if not params:
    return None, 1.0
  kind = params.get("rope_type", params.get("type", "default"))
  if kind not in ("default", "linear"):
    raise ValueError(f"{where}: rope_type {kind!r} is not supported (default, linear)")
  factor = float(params.get("factor", 1.0)) if kind == "linear" else 1.0
  theta = params.get("rope_theta")
  return (None if theta is None else float(theta)), factor


# transformers' Qwen3Config / Gemma3TextConfig defaults: published config.json files leave
# them out (gemma-3-4b's text_config names six keys).
_HF_DEFAULTS = {
    "qwen3": dict(vocab_size=151936, hidden_size=4096, intermediate_size=22016,
                  num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32,
                  head_dim=128, rms_norm_eps=1e-6, rope_theta=10_000.0, sliding_window=4096,
                  use_sliding_window=False, max_window_layers=28, attention_bias=False),
    "gemma3": dict(vocab_size=262208, hidden_size=2304, intermediate_size=9216,
                   num_hidden_layers=26, num_attention_heads=8, num_key_value_heads=4,
                   head_dim=256, rms_norm_eps=1e-6, rope_theta=1_000_000.0,
                   rope_local_base_freq=10_000.0, sliding_window=4096, sliding_window_pattern=6,
                   query_pre_attn_scalar=256, attention_bias=False,
                   use_bidirectional_attention=False),
}


def config_from_hf(config: Any) -> dict[str, Any]:
  """HF Qwen3 / Gemma3(Text) config (a ``config.json`` dict or a config object) ->
  ``DecoderTower`` fields (pooling, remat and dtype are the caller's). Reads the old keys
  (``rope_theta``, ``rope_scaling``, ``rope_local_base_freq``, ``sliding_window_pattern``)
  and transformers 5's ``rope_parameters`` / ``layer_types``; a multimodal Gemma3 config
  gives its ``text_config``."""
  c = dict(config.to_dict() if hasattr(config, "to_dict") else config)
  if isinstance(c.get("text_config"), Mapping):
    c = dict(c["text_config"])
  family = {"qwen3": "qwen3", "gemma3_text": "gemma3", "gemma3": "gemma3"}.get(
      c.get("model_type"))
  if family is None:
    raise ValueError(f"model_type {c.get('model_type')!r}: DecoderTower reads qwen3 and "
                     "gemma3 configs")
  c = {**_HF_DEFAULTS[family], **{k: v for k, v in c.items() if v is not None}}
  depth = int(c["num_hidden_layers"])
  rp = c.get("rope_parameters")
  if family == "gemma3":
    if isinstance(rp, Mapping) and "full_attention" in rp:
      theta, scaling = _rope(rp.get("full_attention"), "rope_parameters.full_attention")
      local_theta, local_scaling = _rope(rp.get("sliding_attention"),
                                         "rope_parameters.sliding_attention")
    else:
      theta, scaling = _rope(c.get("rope_scaling"), "rope_scaling")   # global layers only
      local_theta, local_scaling = None, 1.0
    theta = theta or float(c["rope_theta"])
    local_theta = local_theta or float(c["rope_local_base_freq"])
    types = c.get("layer_types") or [
        "full_attention" if (i + 1) % int(c["sliding_window_pattern"]) == 0
        else "sliding_attention" for i in range(depth)]
  else:
    theta, scaling = _rope(rp if isinstance(rp, Mapping) else c.get("rope_scaling"), "rope")
    theta, local_theta, local_scaling = theta or float(c["rope_theta"]), None, scaling
    types = c.get("layer_types") or [
        "sliding_attention" if c["use_sliding_window"] and i >= int(c["max_window_layers"])
        else "full_attention" for i in range(depth)]
  types = tuple(types)
  causal = not c.get("use_bidirectional_attention", False)
  window = int(c["sliding_window"]) if "sliding_attention" in types else None
  if window is not None and not causal:
    window = window // 2 + 1        # HF's bidirectional Gemma3: |i - j| < window // 2 + 1
  return dict(
      family=family, vocab_size=int(c["vocab_size"]), hidden_size=int(c["hidden_size"]),
      depth=depth, num_heads=int(c["num_attention_heads"]),
      num_kv_heads=int(c["num_key_value_heads"]), head_dim=int(c["head_dim"]),
      mlp_dim=int(c["intermediate_size"]), rope_theta=float(theta), rope_scaling=scaling,
      rope_local_theta=local_theta, rope_local_scaling=local_scaling,
      rms_norm_eps=float(c["rms_norm_eps"]), sliding_window=window, layer_types=types,
      query_pre_attn_scalar=float(c["query_pre_attn_scalar"]) if family == "gemma3" else None,
      # Gemma3's config carries attn_logit_softcapping (Gemma2's), but HF's Gemma3
      # attention never applies it; Qwen3 has none.
      attn_logit_softcapping=None,
      attention_bias=bool(c["attention_bias"]), causal=causal)


def decoder_rules(depth: int, family: str) -> Rules:
  """HF Qwen3Model / Gemma3TextModel keys (without prefix) for a ``DecoderTower``."""
  if family not in FAMILIES:
    raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
  r: Rules = {("embed_tokens", "embedding"): ("embed_tokens.weight", ident),
              ("norm", "scale"): ("norm.weight", ident)}
  for i in range(depth):
    ours, theirs = (f"layer_{i}",), f"layers.{i}"
    a = f"{theirs}.self_attn"
    for name, hf in (("query", "q_proj"), ("key", "k_proj"), ("value", "v_proj")):
      r[ours + ("attn", name, "kernel")] = (f"{a}.{hf}.weight", split_heads_in)
      r[ours + ("attn", name, "bias")] = (f"{a}.{hf}.bias", split_heads_bias)
    r[ours + ("attn", "out", "kernel")] = (f"{a}.o_proj.weight", merge_heads_out)
    r[ours + ("attn", "out", "bias")] = (f"{a}.o_proj.bias", ident)
    r[ours + ("attn", "query_norm", "scale")] = (f"{a}.q_norm.weight", ident)
    r[ours + ("attn", "key_norm", "scale")] = (f"{a}.k_norm.weight", ident)
    for name, hf in (("gate", "gate_proj"), ("fc_in", "up_proj"), ("fc_out", "down_proj")):
      r[ours + ("mlp", name, "kernel")] = (f"{theirs}.mlp.{hf}.weight", linear_t)
    r[ours + ("attn_norm", "scale")] = (f"{theirs}.input_layernorm.weight", ident)
    if family == "gemma3":
      # Gemma's post_attention_layernorm normalises the attention output; Qwen's (same
      # name) is the pre-MLP norm.
      r[ours + ("attn_post_norm", "scale")] = (f"{theirs}.post_attention_layernorm.weight", ident)
      r[ours + ("mlp_norm", "scale")] = (f"{theirs}.pre_feedforward_layernorm.weight", ident)
      r[ours + ("mlp_post_norm", "scale")] = (f"{theirs}.post_feedforward_layernorm.weight", ident)
    else:
      r[ours + ("mlp_norm", "scale")] = (f"{theirs}.post_attention_layernorm.weight", ident)
  return r


_EMBED = "embed_tokens.weight"


def _prefix(state_dict: Mapping[str, Any], where: str) -> str:
  """'' for a bare Qwen3Model / Gemma3TextModel, 'model.' for *ForCausalLM,
  'model.language_model.' / 'language_model.model.' for multimodal Gemma3."""
  found = sorted(k[:-len(_EMBED)] for k in state_dict if k.endswith(_EMBED))
  if len(found) != 1:
    raise CheckpointMismatch(
        f"{where}: expected one key ending in {_EMBED!r}, found {len(found)} "
        f"({[p + _EMBED for p in found][:4] or sorted(state_dict)[:5]})")
  return found[0]


def _split_rows(sd: dict, key: str, sizes: Sequence[int], names: Sequence[str],
                where: str) -> None:
  """Replaces the fused ``key`` (rows = ``sizes`` stacked) by one key per ``names``."""
  a = np.asarray(sd.pop(key))
  if a.shape[0] != sum(sizes):
    raise CheckpointMismatch(f"{where}: fused key {key!r} has shape {tuple(a.shape)}, but "
                             f"needs {sum(sizes)} rows ({' + '.join(map(str, sizes))})")
  for name, part in zip(names, np.split(a, np.cumsum(sizes)[:-1], axis=0)):
    if name in sd:
      raise CheckpointMismatch(f"{where}: both fused {key!r} and separate {name!r}")
    sd[name] = part


def _unfuse(state_dict: Mapping[str, Any], prefix: str, target: Any, where: str) -> dict:
  """Splits fused ``self_attn.qkv_proj`` and ``mlp.gate_up_proj`` (Phi-3 style: gate rows
  first) into HF's separate projections, sized from ``target``. A fused key of a layer
  the target lacks stays, to be reported as unexpected."""
  sd = dict(state_dict)
  flat = traverse_util.flatten_dict(nn.meta.unbox(target))
  pat = re.compile(re.escape(prefix)
                   + r"layers\.(\d+)\.(self_attn\.qkv_proj|mlp\.gate_up_proj)\.(weight|bias)")
  for key in [k for k in sd if pat.fullmatch(k)]:
    i, module, kind = pat.fullmatch(key).groups()
    base, ours = f"{prefix}layers.{i}", f"layer_{i}"
    if module == "self_attn.qkv_proj":
      kernels = [flat.get((ours, "attn", n, "kernel")) for n in ("query", "key", "value")]
      if any(k is None for k in kernels):
        continue
      rows = [k.shape[1] * k.shape[2] for k in kernels]          # heads x head_dim
      names = [f"{base}.self_attn.{p}_proj.{kind}" for p in "qkv"]
    else:
      gate = flat.get((ours, "mlp", "gate", "kernel"))
      if gate is None:
        continue
      rows = [gate.shape[1], gate.shape[1]]
      names = [f"{base}.mlp.{p}_proj.{kind}" for p in ("gate", "up")]
    _split_rows(sd, key, rows, names, where)
  return sd


def import_torch(state_dict: Mapping[str, np.ndarray], target: Any, *, family: str,
                 where: str = "checkpoint") -> Any:
  """HF Qwen3 / Gemma3 text weights -> ``DecoderTower`` params shaped like ``target``.

  Takes bare ``Qwen3Model`` / ``Gemma3TextModel`` keys or any prefix before them
  (``model.`` of *ForCausalLM, ``model.language_model.`` / ``language_model.model.`` of
  multimodal Gemma3, whose vision keys are left alone), separate or fused
  (``qkv_proj``, ``gate_up_proj``) projections. ``lm_head.weight`` is ignored: tied to the
  embeddings in both families, and a text tower has no use for an untied one. Missing,
  unexpected or mis-shaped keys raise ``CheckpointMismatch`` naming the key and both
  shapes.
  """
  prefix = _prefix(state_dict, where)
  sd = _unfuse(state_dict, prefix, target, where)
  depth = sum(1 for k in nn.meta.unbox(target) if re.fullmatch(r"layer_\d+", k))
  ignore = lambda k: k == "lm_head.weight" or k.endswith("rotary_emb.inv_freq")
  return apply_rules(decoder_rules(depth, family), sd, target, prefix=prefix, ignore=ignore,
                     where=where)


# ---------------------------------------------------------------------------------------
# The way out (jaxclap.export): a DecoderTower as transformers' Qwen3Model / Gemma3TextModel.

HF_CLASSES = {"qwen3": ("Qwen3Model", "Qwen3Config"),
              "gemma3": ("Gemma3TextModel", "Gemma3TextConfig")}


def config_to_hf(tower: DecoderTower) -> tuple[str, str, dict]:
  """(model class, config class, config kwargs) of transformers' model computing the
  tower's hidden states, the inverse of ``config_from_hf``. Raises ``ValueError`` for
  what HF's models cannot express (attention logit soft-capping, which HF's Gemma3 never
  applies; a sliding window without causal masking)."""
  if tower.family not in FAMILIES:
    raise ValueError(f"family must be one of {FAMILIES}, got {tower.family!r}")
  if tower.attn_logit_softcapping is not None:
    raise ValueError("attn_logit_softcapping: transformers' Qwen3 / Gemma3 attention does "
                     "not apply it")
  types = list(tower.resolved_layer_types())
  sliding = "sliding_attention" in types
  if sliding and not tower.causal:
    raise ValueError("a sliding window without causal masking has no exact HF window")
  kw = dict(vocab_size=int(tower.vocab_size), hidden_size=int(tower.hidden_size),
            intermediate_size=int(tower.mlp_dim), num_hidden_layers=int(tower.depth),
            num_attention_heads=int(tower.num_heads),
            num_key_value_heads=int(tower.num_kv_heads), head_dim=int(tower.head_dim),
            rms_norm_eps=float(tower.rms_norm_eps), attention_bias=bool(tower.attention_bias),
            attention_dropout=0.0, layer_types=types,
            sliding_window=int(tower.sliding_window) if sliding else None)
  full = {"rope_type": "default", "rope_theta": float(tower.rope_theta)}
  if tower.rope_scaling != 1.0:
    full = {"rope_type": "linear", "rope_theta": float(tower.rope_theta),
            "factor": float(tower.rope_scaling)}
  if tower.family == "qwen3":
    if tower.rope_local_theta not in (None, tower.rope_theta) or tower.rope_local_scaling != 1.0:
      raise ValueError("qwen3: one rope for every layer (rope_local_* unset)")
    if not tower.causal:
      raise ValueError("qwen3 with causal=False has no transformers equivalent")
    kw.update(hidden_act="silu", rope_parameters=full, use_sliding_window=sliding,
              max_window_layers=types.index("sliding_attention") if sliding else tower.depth)
    return HF_CLASSES["qwen3"] + (kw,)
  local = {"rope_type": "default",
           "rope_theta": float(tower.rope_local_theta or tower.rope_theta)}
  if tower.rope_local_scaling != 1.0:
    local = {**local, "rope_type": "linear", "factor": float(tower.rope_local_scaling)}
  kw.update(hidden_activation="gelu_pytorch_tanh",
            rope_parameters={"full_attention": full, "sliding_attention": local},
            query_pre_attn_scalar=_int_scalar(tower.query_pre_attn_scalar or tower.head_dim),
            attn_logit_softcapping=None, final_logit_softcapping=None,
            use_bidirectional_attention=not tower.causal,
            sliding_window=int(tower.sliding_window) if sliding else 4096)
  return HF_CLASSES["gemma3"] + (kw,)


def _int_scalar(v: float) -> int:
  """Gemma3TextConfig's query_pre_attn_scalar is an int field."""
  if float(v) != int(v):
    raise ValueError(f"query_pre_attn_scalar={v}: Gemma3TextConfig takes a whole number")
  return int(v)


def export_torch(params: Mapping, family: str) -> dict[str, np.ndarray]:
  """``DecoderTower`` params -> a bare ``Qwen3Model`` / ``Gemma3TextModel`` state dict,
  the inverse of ``import_torch`` (biases only where the tower has them)."""
  from jaxclap.models import convert
  params = nn.meta.unbox(dict(params))
  flat = traverse_util.flatten_dict(params)
  depth = sum(1 for k in params if re.fullmatch(r"layer_\d+", k))
  rules = {p: r for p, r in decoder_rules(depth, family).items()
           if p in flat or p[-1] != "bias"}
  return convert.export_rules(rules, params, where="DecoderTower")


# ------------------------------------------------- the towers export (jaxclap.export)


def check_export(config: Any) -> tuple[str, str, dict]:
  """``config_to_hf`` of the run's tower, its refusals as ``NotExportable``."""
  tower = towers.module(config.model.text)
  try:
    return config_to_hf(tower)
  except ValueError as e:
    raise towers.NotExportable(f"config.model.text ({tower.family}): {e}") from None


def _export(config: Any, variables: Mapping, out: str) -> dict:
  import os
  import transformers
  tower = towers.module(config.model.text)
  cls_name, cfg_name, kw = check_export(config)
  model = getattr(transformers, cls_name)(getattr(transformers, cfg_name)(**kw))
  convert.save_strict(model, export_torch(variables["params"], tower.family),
                      os.path.join(out, "text"))
  return {"class": cls_name, "path": "text", "inputs": "decoder",
          "pooling": str(tower.pooling)}


def _import_export(config: Any, folder: str, target: Mapping) -> dict:
  import os
  where = os.path.join(folder, "text")
  return {"params": import_torch(convert.load_state_dict(where), target["params"],
                                 family=towers.module(config.model.text).family, where=where)}


# -------------------------------------------------------------------------- registration

_SMALL = dict(hidden_size=32, depth=2, num_heads=2, num_kv_heads=1, head_dim=16, mlp_dim=64)
_DEMO = {
    "qwen3": (dict(name="qwen3", vocab_size=4000, hidden_size=256, depth=4, num_heads=4,
                   num_kv_heads=2, head_dim=64, mlp_dim=768, pooling="last"), _SMALL),
    "gemma3": (dict(name="gemma3", vocab_size=4000, hidden_size=256, depth=4, num_heads=4,
                    num_kv_heads=2, head_dim=64, mlp_dim=768, sliding_window=16,
                    sliding_window_pattern=2, query_pre_attn_scalar=64.0, pooling="mean"),
               {**_SMALL, "query_pre_attn_scalar": 16.0}),
}
for _family in FAMILIES:
  towers.register(towers.Tower(
      name=_family, side="text", module=DecoderTower, fixed={"family": _family},
      import_torch=functools.partial(import_torch, family=_family),
      torch_class=HF_CLASSES[_family][0], export_torch=_export,
      import_export=_import_export, check_export=check_export,
      presets={_family: _DEMO[_family][0],
               **{k: v for k, v in PRESETS.items() if v["family"] == _family}},
      runlocal={_family: _DEMO[_family][1]}))
