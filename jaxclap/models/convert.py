"""PyTorch checkpoints -> jaxclap parameters.

``import_tower(kind, source, target)`` is the one entry point: ``source`` is a safetensors
file, a ``torch.save``'d state_dict, an HF model folder (``load_state_dict`` reads any of
them into numpy arrays) or an already-loaded state dict; ``kind`` picks the importer that
the tower registers in its model file (``jaxclap.models.towers``; ``importers()`` lists
them). The BERT family (BERT, MiniLM, RoBERTa, CLAP's text encoder) is mapped here by
``import_bert``.

Every mapping is a table from our parameter path to the source key plus a transform
(PyTorch ``Linear`` stores [out, in], Flax [in, out]; attention kernels are split per
head). Missing, unexpected or mis-shaped keys raise ``CheckpointMismatch`` naming the key
and both shapes: a half-loaded tower trains silently badly, which is worse than not
starting.

The way back (``jaxclap.export``): ``export_rules`` walks a rule table backwards through
each transform's ``INVERSE``, and ``export_bert`` writes a ``BertTower`` as an HF state
dict, so that import and export share one table per model.
"""

from __future__ import annotations

import glob
import os
from typing import Any, Callable, Mapping

import flax.linen as nn
import numpy as np
from flax import traverse_util


class CheckpointMismatch(ValueError):
  pass


def load_state_dict(path: str) -> dict[str, np.ndarray]:
  """A safetensors file, a torch state_dict file, or an HF folder -> {key: np.ndarray}."""
  if os.path.isdir(path):
    files = sorted(glob.glob(os.path.join(path, "*.safetensors")))
    if not files:
      files = sorted(glob.glob(os.path.join(path, "pytorch_model*.bin")))
    if not files:
      raise FileNotFoundError(f"{path}: no *.safetensors or pytorch_model*.bin weights in it")
    out = {}
    for f in files:
      out.update(load_state_dict(f))
    return out
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path}: no such checkpoint")
  if path.endswith(".safetensors"):
    from safetensors.numpy import load_file
    try:
      return to_numpy(load_file(path))
    except TypeError:
      # bfloat16 (Qwen3, Gemma 3 weights) without ml_dtypes registered (it is once jax
      # is imported): numpy has no such dtype, so read through torch.
      from safetensors.torch import load_file as load_torch
      return to_numpy(load_torch(path))
    except Exception as e:  # noqa: BLE001 - a damaged header is a damaged file
      raise CheckpointMismatch(f"{path}: not a readable safetensors file ({e})") from None
  import argparse
  import torch
  try:
    # Research checkpoints (AudioMAE, PANNs) also pickle their argparse.Namespace of
    # training options; allowing that one class keeps weights_only's safety otherwise.
    with torch.serialization.safe_globals([argparse.Namespace]):
      sd = torch.load(path, map_location="cpu", weights_only=True)
  except Exception as e:  # noqa: BLE001
    raise CheckpointMismatch(f"{path}: not a readable PyTorch checkpoint ({e})") from None
  # Training checkpoints wrap the weights: {"state_dict": ...} (Lightning, msclap),
  # {"model": ...} (AudioMAE, PANNs) beside optimiser state and options.
  for wrapper in ("state_dict", "model"):
    if isinstance(sd, Mapping) and isinstance(sd.get(wrapper), Mapping):
      sd = sd[wrapper]
      break
  if not isinstance(sd, Mapping):
    raise CheckpointMismatch(f"{path}: holds a {type(sd).__name__}, not a state_dict")
  return to_numpy(sd)


def to_numpy(state_dict: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """{key: torch tensor or array} -> {key: np.ndarray}. Floats narrower than 32 bits
  (bf16, fp16) become float32: importers transpose and reshape in numpy, and the towers'
  parameters are float32 whatever their compute dtype."""
  out = {}
  for k, v in state_dict.items():
    if hasattr(v, "detach"):
      v = v.detach().cpu()
      v = v.float().numpy() if v.is_floating_point() else v.numpy()
    v = np.asarray(v)
    # ml_dtypes' bfloat16 (registered by jax) is not of numpy kind "f".
    if (v.dtype.kind == "f" or v.dtype.name == "bfloat16") and v.dtype.itemsize < 4:
      v = v.astype(np.float32)
    out[k] = v
  return out


# A rule: our flattened param path -> (source key, transform(np array, our shape) -> array).
Rules = dict[tuple[str, ...], tuple[str, Callable[[np.ndarray, tuple], np.ndarray]]]

ident = lambda a, shape: a
linear_t = lambda a, shape: a.T                                  # [out, in] -> [in, out]
split_heads_in = lambda a, shape: a.T.reshape(shape)             # [h*k, d] -> [d, h, k]
split_heads_bias = lambda a, shape: a.reshape(shape)             # [h*k] -> [h, k]
merge_heads_out = lambda a, shape: a.T.reshape(shape)            # [d, h*k] -> [h, k, d]


def apply_rules(rules: Rules, state_dict: Mapping[str, np.ndarray], target: Any, *,
                prefix: str = "", ignore: Callable[[str], bool] = lambda k: False,
                where: str = "checkpoint") -> Any:
  """Fills ``target`` (a params tree of arrays or ShapeDtypeStructs) from ``state_dict``."""
  import flax.linen as nn
  flat = traverse_util.flatten_dict(nn.meta.unbox(target))
  missing_rules = [("/".join(p)) for p in flat if p not in rules]
  if missing_rules:
    raise CheckpointMismatch(f"no import rule for parameters {missing_rules[:5]}")
  used, out = set(), {}
  for path, leaf in flat.items():
    key, fn = rules[path]
    key = prefix + key
    if key not in state_dict:
      raise CheckpointMismatch(f"{where}: missing key {key!r} (for {'/'.join(path)}, "
                               f"shape {tuple(leaf.shape)})")
    src = np.asarray(state_dict[key])
    try:
      val = fn(src, tuple(leaf.shape))
    except ValueError:
      val = None
    if val is None or tuple(val.shape) != tuple(leaf.shape):
      raise CheckpointMismatch(
          f"{where}: key {key!r} has shape {tuple(src.shape)}, but {'/'.join(path)} needs "
          f"{tuple(leaf.shape)}")
    out[path] = np.asarray(val, dtype=np.float32)
    used.add(key)
  unexpected = sorted(k for k in state_dict
                      if k.startswith(prefix) and k not in used and not ignore(k[len(prefix):]))
  if unexpected:
    raise CheckpointMismatch(f"{where}: unexpected keys {unexpected[:8]}"
                             f"{' ...' if len(unexpected) > 8 else ''} ({len(unexpected)} in all)")
  return traverse_util.unflatten_dict(out)


def _transformer_block_rules(ours: tuple[str, ...], theirs: str) -> Rules:
  """Rules for one ``TransformerBlock`` from an HF BERT/RoBERTa layer."""
  a = f"{theirs}.attention"
  r: Rules = {}
  for ours_name, hf in (("query", "query"), ("key", "key"), ("value", "value")):
    r[ours + ("attn", ours_name, "kernel")] = (f"{a}.self.{hf}.weight", split_heads_in)
    r[ours + ("attn", ours_name, "bias")] = (f"{a}.self.{hf}.bias", split_heads_bias)
  r[ours + ("attn", "out", "kernel")] = (f"{a}.output.dense.weight", merge_heads_out)
  r[ours + ("attn", "out", "bias")] = (f"{a}.output.dense.bias", ident)
  r[ours + ("attn_norm", "scale")] = (f"{a}.output.LayerNorm.weight", ident)
  r[ours + ("attn_norm", "bias")] = (f"{a}.output.LayerNorm.bias", ident)
  r[ours + ("mlp", "fc_in", "kernel")] = (f"{theirs}.intermediate.dense.weight", linear_t)
  r[ours + ("mlp", "fc_in", "bias")] = (f"{theirs}.intermediate.dense.bias", ident)
  r[ours + ("mlp", "fc_out", "kernel")] = (f"{theirs}.output.dense.weight", linear_t)
  r[ours + ("mlp", "fc_out", "bias")] = (f"{theirs}.output.dense.bias", ident)
  r[ours + ("mlp_norm", "scale")] = (f"{theirs}.output.LayerNorm.weight", ident)
  r[ours + ("mlp_norm", "bias")] = (f"{theirs}.output.LayerNorm.bias", ident)
  return r


def bert_rules(depth: int, *, with_pooler: bool) -> Rules:
  """HF ``BertModel`` (and ``RobertaModel``) keys, without the model prefix."""
  r: Rules = {
      ("word_embeddings", "embedding"): ("embeddings.word_embeddings.weight", ident),
      ("position_embeddings", "embedding"): ("embeddings.position_embeddings.weight", ident),
      ("token_type_embeddings", "embedding"): ("embeddings.token_type_embeddings.weight", ident),
      ("embeddings_norm", "scale"): ("embeddings.LayerNorm.weight", ident),
      ("embeddings_norm", "bias"): ("embeddings.LayerNorm.bias", ident),
  }
  for i in range(depth):
    r.update(_transformer_block_rules(("encoder", f"layer_{i}"), f"encoder.layer.{i}"))
  if with_pooler:
    r[("pooler", "kernel")] = ("pooler.dense.weight", linear_t)
    r[("pooler", "bias")] = ("pooler.dense.bias", ident)
  return r



# Keys a BERT-family checkpoint holds that are not parameters: ``position_ids`` and
# ``token_type_ids`` are index buffers (ClapTextModel saves both).
_BERT_BUFFERS = ("embeddings.position_ids", "embeddings.token_type_ids")


def _find_prefix(state_dict: Mapping[str, Any], marker: str, prefix: str | None,
                 where: str) -> str:
  """The prefix of the keys ending in ``marker``: '' for a bare BertModel, 'bert.' or
  'roberta.' for HF task models, 'text_model.' for ClapModel. An explicit ``prefix`` wins;
  a checkpoint with several candidates (two text encoders) must name one."""
  if prefix is not None:
    if prefix + marker not in state_dict:
      raise CheckpointMismatch(f"{where}: missing key {prefix + marker!r} (prefix={prefix!r})")
    return prefix
  found = sorted(k[:-len(marker)] for k in state_dict if k.endswith(marker))
  if not found:
    raise CheckpointMismatch(f"{where}: no key ending in {marker!r}: not this tower's "
                             f"checkpoint (first keys: {sorted(state_dict)[:5]})")
  if len(found) > 1:
    raise CheckpointMismatch(f"{where}: several encoders hold {marker!r} (prefixes {found}); "
                             "pass prefix= to pick one")
  return found[0]


def _rename_legacy_layer_norm(state_dict: Mapping[str, Any]) -> Mapping[str, Any]:
  """Original Google/early HF BERT checkpoints name LayerNorm parameters gamma/beta;
  transformers renames them to weight/bias on load, and so do we."""
  if not any(k.endswith(("LayerNorm.gamma", "LayerNorm.beta")) for k in state_dict):
    return state_dict
  out = {}
  for k, v in state_dict.items():
    if k.endswith("LayerNorm.gamma"):
      k = k[:-len("gamma")] + "weight"
    elif k.endswith("LayerNorm.beta"):
      k = k[:-len("beta")] + "bias"
    out[k] = v
  return out


def import_bert(state_dict: Mapping[str, Any], target: Any, *, depth: int | None = None,
                where: str = "checkpoint", prefix: str | None = None) -> Any:
  """HF BertModel / RobertaModel / ClapTextModel weights -> ``BertTower`` params shaped
  like ``target``.

  ``depth`` defaults to the number of layers in ``target``. The checkpoint may be a whole
  task or two-tower model: the encoder is found by its prefix (see ``_find_prefix``) and
  keys outside it (an MLM head, ClapModel's audio tower and projections) are left alone;
  inside it, every key must be used. A checkpoint pooler is dropped when the tower pools
  with ``cls``/``mean`` (no ``pooler`` in ``target``).
  """
  import flax.linen as nn

  target = nn.meta.unbox(target)
  if depth is None:
    depth = sum(1 for k in target.get("encoder", {}) if k.startswith("layer_"))
  state_dict = _rename_legacy_layer_norm(state_dict)
  prefix = _find_prefix(state_dict, "embeddings.word_embeddings.weight", prefix, where)
  with_pooler = "pooler" in target
  ignore = lambda k: k in _BERT_BUFFERS or (not with_pooler and k.startswith("pooler."))
  return apply_rules(bert_rules(depth, with_pooler=with_pooler), state_dict, target,
                     prefix=prefix, ignore=ignore, where=where)


# ---------------------------------------------------------------- the way back (export)

# Each import transform's inverse, our array -> the checkpoint's layout, so that exporters
# walk the very rule tables the importers use (one table, two directions: they cannot
# drift apart). Keyed by the transform's identity.
INVERSE: dict[int, Callable[[np.ndarray], np.ndarray]] = {
    id(ident): lambda a: a,
    id(linear_t): lambda a: a.T,                                     # [in, out] -> [out, in]
    id(split_heads_in): lambda a: a.reshape(a.shape[0], -1).T,       # [d, h, k] -> [h*k, d]
    id(split_heads_bias): lambda a: a.reshape(-1),                   # [h, k] -> [h*k]
    id(merge_heads_out): lambda a: a.reshape(-1, a.shape[-1]).T,     # [h, k, d] -> [d, h*k]
}


def export_rules(rules: Rules, params: Any, *, prefix: str = "",
                 where: str = "params") -> dict[str, np.ndarray]:
  """``apply_rules`` backwards: our params tree -> {prefix + source key: float32 array}.
  Every parameter needs a rule and every rule a parameter (an exported checkpoint with a
  hole loads with random weights in PyTorch unless ``strict``)."""
  import flax.linen as nn
  flat = traverse_util.flatten_dict(nn.meta.unbox(params))
  no_rule = ["/".join(p) for p in flat if p not in rules]
  if no_rule:
    raise CheckpointMismatch(f"{where}: no export rule for parameters {no_rule[:5]}")
  absent = ["/".join(p) for p in rules if p not in flat]
  if absent:
    raise CheckpointMismatch(f"{where}: parameters {absent[:5]} that the checkpoint layout "
                             "needs are missing")
  out = {}
  for path, (key, fn) in rules.items():
    if id(fn) not in INVERSE:
      raise ValueError(f"{where}: the transform for {'/'.join(path)} -> {key!r} has no inverse")
    out[prefix + key] = np.ascontiguousarray(INVERSE[id(fn)](np.asarray(flat[path], np.float32)))
  return out


def export_bert(params: Any, *, prefix: str = "", buffers: bool = True) -> dict[str, np.ndarray]:
  """``BertTower`` params -> an HF BertModel / RobertaModel / ClapTextModel state dict
  (``prefix="text_model."`` inside ``ClapModel``), the inverse of ``import_bert``: the
  pooler is written when the tower has one (``pooling="pooler"``).

  ``buffers``: also write the ``embeddings.position_ids`` (0, 1, ..., max_len - 1) and
  ``embeddings.token_type_ids`` (zeros) index buffers, [1, max_len] int64, which
  ClapTextModel keeps persistent (so ``load_state_dict(strict=True)`` wants them);
  BertModel / RobertaModel keep them non-persistent (pass False)."""
  import flax.linen as nn
  params = nn.meta.unbox(params)
  depth = sum(1 for k in params.get("encoder", {}) if k.startswith("layer_"))
  out = export_rules(bert_rules(depth, with_pooler="pooler" in params), params,
                     prefix=prefix, where="BertTower")
  if buffers:
    rows = np.asarray(params["position_embeddings"]["embedding"]).shape[0]
    out[prefix + "embeddings.position_ids"] = np.arange(rows, dtype=np.int64)[None]
    out[prefix + "embeddings.token_type_ids"] = np.zeros((1, rows), np.int64)
  return out


def save_strict(module: Any, sd: Mapping[str, np.ndarray], folder: str) -> None:
  """Loads ``sd`` into the PyTorch ``module`` (every key used, every parameter and buffer
  filled) and ``save_pretrained``s it to ``folder``. ``strict=False`` so that a hole comes
  back as ``CheckpointMismatch`` naming the keys (``strict=True`` raises torch's
  RuntimeError before any check of ours runs); a shape mismatch still raises torch's
  RuntimeError, which names the key."""
  import torch
  module = module.eval()
  result = module.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in sd.items()},
                                  strict=False)
  if result.missing_keys or result.unexpected_keys:
    raise CheckpointMismatch(f"{type(module).__name__}: missing {result.missing_keys[:5]}, "
                             f"unexpected {result.unexpected_keys[:5]}")
  module.save_pretrained(folder)


# --------------------------------------------------------------------------- entry point

def importers() -> dict[str, Callable[..., Any]]:
  """Checkpoint kind -> import function, from the tower registry (each tower's importer
  lives in its model file). Each has the signature ``fn(state_dict, target, *,
  where="checkpoint", **kw) -> params``."""
  from jaxclap.models import towers
  return {kind: t.import_torch for kind, t in towers.checkpoint_kinds().items()}


def importer(name: str) -> Callable[..., Any]:
  """The import function registered for tower kind ``name``."""
  known = importers()
  key = str(name).lower()
  if key not in known:
    raise ValueError(f"unknown tower kind {name!r}; known: {sorted(known)}")
  return known[key]


def import_tower(name: str, source: str | os.PathLike | Mapping[str, Any], target: Any, *,
                 where: str | None = None, **kw) -> Any:
  """The one entry point: a checkpoint -> tower ``name``'s params shaped like ``target``.

  ``source``: a safetensors file, a ``torch.save``'d state_dict, an HF model folder, or an
  already-loaded state dict (numpy arrays or torch tensors). ``target``: the tower's params
  tree, arrays or ``jax.eval_shape`` ShapeDtypeStructs. ``where`` names the source in
  errors (default: the path). ``kw`` go to the importer (``prefix=``, ``depth=`` for the
  BERT family). Returns numpy float32 arrays in the tree structure of ``target``.
  """
  fn = importer(name)
  if isinstance(source, Mapping):
    state_dict, where = to_numpy(source), where or "checkpoint"
  else:
    path = os.fspath(source)
    state_dict, where = load_state_dict(path), where or path
  from jaxclap.models import transformer
  if transformer.has_scanned(nn.meta.unbox(target)):
    # Checkpoints name layers one by one: import unrolled, then stack (scan_layers).
    flat = transformer.unstack_layers(nn.meta.unbox(target))
    return transformer.stack_layers(fn(state_dict, flat, where=where, **kw),
                                    nn.meta.unbox(target))
  return fn(state_dict, target, where=where, **kw)
