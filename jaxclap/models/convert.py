"""PyTorch checkpoints -> jaxclap parameters.

``load_state_dict(path)`` reads a safetensors file, a ``torch.save``'d state_dict or an HF
model folder into numpy arrays; ``import_tower(kind, state_dict, target)`` maps it onto a
tower's parameter tree. Every mapping is a table from our parameter path to the source
key plus a transform (PyTorch ``Linear`` stores [out, in], Flax [in, out]; attention
kernels are split per head). Missing, unexpected or mis-shaped keys raise
``CheckpointMismatch`` naming the key and both shapes: a half-loaded tower trains
silently badly, which is worse than not starting.
"""

from __future__ import annotations

import glob
import os
from typing import Any, Callable, Mapping

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
      return dict(load_file(path))
    except Exception as e:  # noqa: BLE001 - a damaged header is a damaged file
      raise CheckpointMismatch(f"{path}: not a readable safetensors file ({e})") from None
  import torch
  try:
    sd = torch.load(path, map_location="cpu", weights_only=True)
  except Exception as e:  # noqa: BLE001
    raise CheckpointMismatch(f"{path}: not a readable PyTorch checkpoint ({e})") from None
  if isinstance(sd, Mapping) and "state_dict" in sd:
    sd = sd["state_dict"]
  if not isinstance(sd, Mapping):
    raise CheckpointMismatch(f"{path}: holds a {type(sd).__name__}, not a state_dict")
  return {k: v.detach().float().numpy() if v.is_floating_point() else v.numpy()
          for k, v in sd.items()}


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


def _strip_prefix(state_dict: Mapping[str, np.ndarray], marker: str) -> str:
  """The prefix before ``marker`` in the checkpoint's keys ('' or e.g. 'bert.')."""
  for k in state_dict:
    i = k.find(marker)
    if i >= 0:
      return k[:i]
  raise CheckpointMismatch(f"no key containing {marker!r}: not this tower's checkpoint "
                           f"(first keys: {sorted(state_dict)[:5]})")


def import_bert(state_dict: Mapping[str, np.ndarray], target: Any, *, depth: int,
                where: str = "checkpoint") -> Any:
  """HF BertModel / RobertaModel weights -> ``BertTower`` params shaped like ``target``."""
  prefix = _strip_prefix(state_dict, "embeddings.word_embeddings.weight")
  with_pooler = "pooler" in target
  # position_ids is a buffer; an unused pooler is dropped by pooling='cls'/'mean' towers.
  ignore = lambda k: k.endswith("position_ids") or (not with_pooler and k.startswith("pooler."))
  return apply_rules(bert_rules(depth, with_pooler=with_pooler), state_dict, target,
                     prefix=prefix, ignore=ignore, where=where)
