"""The run's tokenizer as a transformers tokenizer, for either export format: its ids
checked against jaxclap's own on probe texts before anything is written."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from jaxclap.models.towers import NotExportable

# Texts the exported tokenizer must encode exactly as jaxclap's does: spacing, case,
# punctuation, non-ASCII, a literal special token, and one long enough to be truncated.
_PROBES = ("A woman speaking quickly.", "", "  two  spaces and a tab\tthere",
           "Héllo wörld – naïve café 🙂", "a <mask> and </s> inside",
           " ".join(["a very long caption"] * 40))
_BPE_KINDS = ("roberta", "bpe", "clap")


def _check_probe_ids(ours, probe, max_len: int, where: str) -> None:
  """The exported tokenizer must encode the probe texts exactly as jaxclap's does."""
  ids, _ = ours.encode(list(_PROBES), max_len)
  theirs = probe(list(_PROBES), padding="max_length", truncation=True, max_length=max_len,
                 return_tensors="np")["input_ids"]
  for text, a, b in zip(_PROBES, ids, theirs):
    if not np.array_equal(a, b):
      raise NotExportable(f"{where}: transformers encodes {text[:40]!r} as "
                          f"{b[:12].tolist()}..., jaxclap as {a[:12].tolist()}...")


def _only_kind_and_path(tc: Any) -> None:
  extra = sorted(set(tc.to_dict() if hasattr(tc, "to_dict") else dict(tc)) - {"kind", "path"})
  if extra:
    raise NotExportable(f"config.tokenizer sets {extra}: only kind and path are exported")


def hf_tokenizer(config: Any, tokenizer: Any = None, check_pad: bool = True):
  """The run's tokenizer as a transformers ``RobertaTokenizerFast`` with
  ``model_max_length = input.max_text_len``, its ids checked against jaxclap's
  ``tokenizer.encode`` on a few probe texts (``NotExportable`` on any difference).
  ``check_pad``: the pad id must be ``model.text.padding_idx`` (RoBERTa positions)."""
  import transformers
  from jaxclap import tokenizers
  tc = config.tokenizer
  kind = str(tc.kind).lower()
  if kind not in _BPE_KINDS:
    raise NotExportable(f"config.tokenizer.kind={tc.kind!r}: ClapProcessor's tokenizer is a "
                        "RoBERTa byte-level BPE ('roberta')")
  path = tc.get("path")
  if not path or not os.path.isdir(str(path)):
    raise NotExportable(f"config.tokenizer.path={path!r} is not a tokenizer folder")
  _only_kind_and_path(tc)
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


def text_tokenizer(config: Any):
  """The run's tokenizer, whatever its kind, as a transformers tokenizer
  (``model_max_length`` = ``input.max_text_len``), ids checked on the probe texts."""
  import transformers
  from jaxclap import tokenizers
  tc = config.tokenizer
  kind = str(tc.kind).lower()
  if kind in _BPE_KINDS:
    return hf_tokenizer(config, check_pad=config.model.text.get("padding_idx") is not None)
  _only_kind_and_path(tc)
  if kind == "minilm":
    path = str(tokenizers.minilm_dir())
  elif kind in ("wordpiece", "bert", "hf", "qwen3", "gemma"):
    path = str(tc.get("path"))
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
