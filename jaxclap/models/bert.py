"""BERT-family text tower: BERT, MiniLM, RoBERTa and CLAP's RoBERTa (HF ``ClapTextModel``).

Word + position + token-type embeddings, a LayerNorm, then post-LN transformer blocks
(``jaxclap.models.transformer``) and a pooling:
  ``cls``     the first ([CLS] / <s>) token's final state
  ``mean``    masked mean over real tokens (sentence-transformers, all-MiniLM-L6-v2)
  ``pooler``  tanh(Dense([CLS] state)): HF's BertPooler, and what ``ClapModel`` feeds its
              text projection (``text_model(...).pooler_output``)

The family differs only in configuration. BERT numbers positions 0, 1, 2, ...;
RoBERTa (and CLAP's text encoder, which is RoBERTa) numbers real tokens from
``padding_idx + 1`` and gives every pad token the position ``padding_idx``, counting
non-pad ids as fairseq's ``make_positions`` does. Setting ``padding_idx`` switches to that
numbering, so the hidden states match transformers at every position, padding included.
RoBERTa also has a single token type and ``layer_norm_eps=1e-5``; ``config_from_hf`` reads
all of this from a transformers ``config.json``.
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping

import flax.linen as nn
import jax.numpy as jnp

from jaxclap.models import convert, towers
from jaxclap.models.transformer import ACTIVATIONS, Encoder, dense_init, layer_norm, logical


class BertTower(nn.Module):
  vocab_size: int = 30522
  hidden_size: int = 384
  depth: int = 6
  num_heads: int = 12
  mlp_dim: int = 1536
  max_len: int = 512              # rows of the position table (HF max_position_embeddings)
  type_vocab_size: int = 2
  layer_norm_eps: float = 1e-12
  pooling: str = "mean"
  padding_idx: int | None = None  # RoBERTa-style positions (the pad id, 1 for RoBERTa/CLAP)
  activation: str = "gelu"
  dropout_rate: float = 0.0
  remat: bool | str = False
  scan_layers: bool = False   # one scanned layer (jaxclap.models.transformer.layer_stack)
  dtype: Any = jnp.float32

  def positions(self, ids):
    """Position ids [b, t] as transformers computes them for this family."""
    if self.padding_idx is None:
      return jnp.broadcast_to(jnp.arange(ids.shape[1])[None], ids.shape)
    real = (ids != self.padding_idx).astype(jnp.int32)
    return jnp.cumsum(real, axis=1) * real + self.padding_idx

  @nn.compact
  def __call__(self, ids, mask, deterministic: bool = True):
    """ids, mask: int [b, t]. Returns (pooled [b, d], hidden states [b, t, d])."""
    # The largest position id is t - 1 (BERT) or padding_idx + t (RoBERTa); an
    # out-of-range gather would silently clamp instead of failing.
    longest = ids.shape[1] + (0 if self.padding_idx is None else self.padding_idx + 1)
    if longest > self.max_len:
      raise ValueError(f"text length {ids.shape[1]} needs {longest} positions; the tower's "
                       f"max_len={self.max_len}")
    if self.pooling not in ("cls", "mean", "pooler"):
      raise ValueError(f"pooling must be 'cls', 'mean' or 'pooler', got {self.pooling!r}")
    if self.activation not in ACTIVATIONS:
      raise ValueError(f"activation={self.activation!r}; known: {sorted(ACTIVATIONS)}")
    embed = lambda n, name: nn.Embed(n, self.hidden_size, name=name,
                                     embedding_init=logical(dense_init(), "vocab", "embed"))
    x = (embed(self.vocab_size, "word_embeddings")(ids)
         + embed(self.max_len, "position_embeddings")(self.positions(ids))
         + embed(self.type_vocab_size, "token_type_embeddings")(jnp.zeros_like(ids)))
    x = layer_norm("embeddings_norm", self.layer_norm_eps, self.dtype)(x.astype(self.dtype))
    x = nn.Dropout(self.dropout_rate)(x, deterministic=deterministic)
    x = Encoder(self.depth, self.num_heads, self.mlp_dim, pre_norm=False,
                activation=self.activation, layer_norm_eps=self.layer_norm_eps,
                dropout_rate=self.dropout_rate, remat=self.remat, dtype=self.dtype,
                scan_layers=self.scan_layers, name="encoder")(x, mask, deterministic)
    if self.pooling == "cls":
      pooled = x[:, 0]
    elif self.pooling == "mean":
      m = mask[..., None].astype(x.dtype)
      pooled = (x * m).sum(1) / jnp.maximum(m.sum(1), 1.0)
    else:
      pooled = jnp.tanh(nn.Dense(self.hidden_size, dtype=self.dtype, name="pooler",
                                 kernel_init=logical(dense_init(), "embed", "mlp"),
                                 bias_init=logical(nn.initializers.zeros, "mlp"))(x[:, 0]))
    return pooled, x


# transformers' hidden_act names -> ours. "gelu_new" and "gelu_pytorch_tanh" are both the
# tanh approximation.
_HF_ACTIVATIONS = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh",
                   "relu": "relu", "silu": "silu", "swish": "silu"}
# Families whose embeddings use RoBERTa's padding-offset positions.
_ROBERTA_TYPES = ("roberta", "xlm-roberta", "camembert", "clap_text_model")


def config_from_hf(config: Mapping[str, Any] | str | os.PathLike,
                   pooling: str | None = None) -> dict[str, Any]:
  """``BertTower`` fields from a transformers ``BertConfig`` / ``RobertaConfig`` /
  ``ClapTextConfig`` (a dict, a ``config.json`` path, or the folder holding it). A
  ``ClapConfig`` uses its ``text_config``.

  ``pooling`` defaults to what the source model exposes: ``pooler`` for CLAP (its
  projection reads ``pooler_output``), ``cls`` otherwise; sentence-transformers models
  such as all-MiniLM-L6-v2 want ``mean``, which their config.json does not say.
  """
  if not isinstance(config, Mapping):
    path = os.fspath(config)
    if os.path.isdir(path):
      path = os.path.join(path, "config.json")
    with open(path, encoding="utf-8") as f:
      config = json.load(f)
  config = dict(config)
  model_type = config.get("model_type", "bert")
  if model_type == "clap":
    config = dict(config.get("text_config") or {})
    model_type = "clap_text_model"
  if model_type not in ("bert",) + _ROBERTA_TYPES:
    raise ValueError(f"config model_type={model_type!r} is not a BERT-family text encoder")
  act = config.get("hidden_act", "gelu")
  if act not in _HF_ACTIVATIONS:
    raise ValueError(f"hidden_act={act!r} has no BertTower activation")
  if config.get("position_embedding_type", "absolute") != "absolute":
    raise ValueError(f"position_embedding_type={config['position_embedding_type']!r}: only "
                     "absolute position embeddings are implemented")
  roberta = model_type in _ROBERTA_TYPES
  # Defaults are transformers' own for each config class, for configs that omit a field.
  return dict(
      vocab_size=int(config.get("vocab_size", 50265 if roberta else 30522)),
      hidden_size=int(config.get("hidden_size", 768)),
      depth=int(config.get("num_hidden_layers", 12)),
      num_heads=int(config.get("num_attention_heads", 12)),
      mlp_dim=int(config.get("intermediate_size", 3072)),
      max_len=int(config.get("max_position_embeddings", 514 if roberta else 512)),
      type_vocab_size=int(config.get("type_vocab_size", 1 if roberta else 2)),
      layer_norm_eps=float(config.get("layer_norm_eps", 1e-12)),
      padding_idx=int(config.get("pad_token_id", 1)) if roberta else None,
      activation=_HF_ACTIVATIONS[act],
      pooling=pooling or ("pooler" if model_type == "clap_text_model" else "cls"),
  )


# ------------------------------------------------- the towers export (jaxclap.export)


def config_to_hf(tower: BertTower) -> tuple[str, dict, bool]:
  """(transformers class name, its config fields, add_pooling_layer) of ``tower``'s twin,
  dropout off: ``RobertaModel`` when it numbers positions from ``padding_idx + 1``."""
  kw = dict(vocab_size=int(tower.vocab_size), hidden_size=int(tower.hidden_size),
            num_hidden_layers=int(tower.depth), num_attention_heads=int(tower.num_heads),
            intermediate_size=int(tower.mlp_dim), hidden_act=towers.HF_ACT[tower.activation],
            max_position_embeddings=int(tower.max_len),
            type_vocab_size=int(tower.type_vocab_size), layer_norm_eps=float(tower.layer_norm_eps),
            hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
            position_embedding_type="absolute")
  if tower.padding_idx is not None:
    kw["pad_token_id"] = int(tower.padding_idx)
    return "RobertaModel", kw, tower.pooling == "pooler"
  return "BertModel", kw, tower.pooling == "pooler"


def check_export(config: Any) -> None:
  activation = towers.module(config.model.text).activation
  if activation not in towers.HF_ACT:
    raise towers.NotExportable(f"config.model.text.activation={activation!r} has no "
                               "transformers equivalent")


def _export(config: Any, variables: Mapping, out: str) -> dict:
  """OUT/text as ``BertModel`` / ``RobertaModel`` (no pooler unless the tower pools with
  it: load with ``add_pooling_layer=False`` then); the metadata entry."""
  import transformers
  tower = towers.module(config.model.text)
  cls_name, kw, pooler = config_to_hf(tower)
  cls = getattr(transformers, cls_name)
  convert.save_strict(cls(cls.config_class(**kw), add_pooling_layer=pooler),
                      convert.export_bert(variables["params"], buffers=False),
                      os.path.join(out, "text"))
  return {"class": cls_name, "path": "text", "inputs": "encoder", "add_pooling_layer": pooler,
          "pooling": str(tower.pooling)}


def _import_export(config: Any, folder: str, target: Mapping) -> dict:
  where = os.path.join(folder, "text")
  return {"params": convert.import_bert(convert.load_state_dict(where), target["params"],
                                        where=where)}


# -------------------------------------------------------------------------- registration

_EXPORT = dict(export_torch=_export, import_export=_import_export, check_export=check_export)
_BERT_SMALL = dict(hidden_size=32, depth=2, num_heads=2, mlp_dim=64)
towers.register(towers.Tower(
    name="bert", side="text", module=BertTower, import_torch=convert.import_bert,
    aliases=("minilm",), torch_class="BertModel", **_EXPORT,
    presets={
        # real pretrained all-MiniLM-L6-v2 weights
        "minilm": dict(name="bert", init="minilm", vocab_size=30522, hidden_size=384,
                       depth=6, num_heads=12, mlp_dim=1536, max_len=512, pooling="mean"),
        "bert": dict(name="bert", vocab_size=30522, hidden_size=256, depth=4, num_heads=4,
                     mlp_dim=1024, max_len=512, pooling="cls")},
    runlocal={"minilm": {}, "bert": _BERT_SMALL}))
towers.register(towers.Tower(
    name="roberta", side="text", module=BertTower, import_torch=convert.import_bert,
    torch_class="RobertaModel", **_EXPORT,
    # RoBERTa: positions from padding_idx + 1, one token type, LayerNorm eps 1e-5.
    presets={"roberta": dict(name="roberta", vocab_size=4000, hidden_size=256, depth=4,
                             num_heads=4, mlp_dim=1024, max_len=514, type_vocab_size=1,
                             padding_idx=1, layer_norm_eps=1e-5, pooling="pooler")},
    runlocal={"roberta": _BERT_SMALL}))
