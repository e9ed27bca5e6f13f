"""jaxclap's Zipformer audio tower in PyTorch: the class its towers export loads as.

The modules are the k2-fsa team's own (PyPI ``zipformer`` 0.1.3, icefall's model
repackaged: ``Conv2dSubsampling`` and ``Zipformer2``), so an export is an icefall state
dict (``encoder_embed.*``, ``encoder.*``) that icefall and SPEAR code load as it is. That
package's ``__init__`` imports its training utilities (tensorboard, lhotse's datasets),
which the model does not need: ``load_reference`` loads the three model files
(``modules/{zipformer,scaling,subsampling}.py``) and ``utils/utils.py`` (for
``torch_autocast``, which needs ``kaldialign``) by path under their own package names,
without running the package ``__init__`` files. Install it with
``pip install kaldialign && pip install --no-deps zipformer==0.1.3`` (its metadata pins an
older torch). This file imports PyTorch only: ``jaxclap.torch_model`` loads it by the name
the export's metadata gives, with no JAX installed.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import sys
import types

import torch
from torch import nn

REFERENCE = "pip install kaldialign && pip install --no-deps zipformer==0.1.3"


@functools.cache
def load_reference():
  """(``zipformer.modules.zipformer``, ``zipformer.modules.subsampling``) of the reference
  package, loaded by path (see the module docstring)."""
  spec = importlib.util.find_spec("zipformer")
  if spec is None:
    raise ImportError(f"the k2-fsa Zipformer reference is not installed: {REFERENCE}")
  root = spec.submodule_search_locations[0]

  def load(name, path):
    s = importlib.util.spec_from_file_location(name, path)
    m = importlib.util.module_from_spec(s)
    sys.modules[name] = m
    s.loader.exec_module(m)
    return m

  for pkg, sub in (("zipformer", ""), ("zipformer.modules", "modules")):
    if pkg not in sys.modules:
      p = types.ModuleType(pkg)
      p.__path__ = [os.path.join(root, sub)]
      sys.modules[pkg] = p
  if "zipformer.utils" not in sys.modules:
    load("zipformer.utils", os.path.join(root, "utils", "utils.py"))
  zf = sys.modules.get("zipformer.modules.zipformer") or load(
      "zipformer.modules.zipformer", os.path.join(root, "modules", "zipformer.py"))
  ss = sys.modules.get("zipformer.modules.subsampling") or load(
      "zipformer.modules.subsampling", os.path.join(root, "modules", "subsampling.py"))
  return zf, ss


def _tuple(v, n: int) -> tuple:
  v = (int(v),) if isinstance(v, int) else tuple(int(x) for x in v)
  return v * n if len(v) == 1 else v


class ZipformerTorch(nn.Module):
  """jaxclap's Zipformer tower (``jaxclap.models.zipformer.Zipformer``) in PyTorch,
  inference only: ``encoder_embed`` (the reference ``Conv2dSubsampling``) and ``encoder``
  (the reference ``Zipformer2``), in eval mode.

  ``forward(spec [b, T, F] fbank, frames [b] real frames or None)`` -> the mean over the
  real output frames [b, max(encoder_dim)], the Flax tower's pooled output; ``encode``
  gives the frames and their real counts. ``encode`` runs the reference's own stacks
  (its ``Zipformer2.forward`` loop without the streaming branches), because that forward
  asserts ``output_downsampling_factor == 2`` and SPEAR's release uses 1.

  ``from_pretrained(folder)`` reads ``config.json`` (``feature_dim``, ``embed_channels``
  (the subsampling's layer1/2/3_channels) and the encoder fields) and ``model.safetensors``; ``save_pretrained`` writes them.
  """

  def __init__(self, feature_dim: int, **fields):
    super().__init__()
    zf, ss = load_reference()
    n = len(fields["downsampling_factor"])
    embed = tuple(int(c) for c in fields.pop("embed_channels", (8, 32, 128)))
    enc = {k: (v if k in ("pos_dim", "output_downsampling_factor") else _tuple(v, n))
           for k, v in fields.items()}
    enc["pos_dim"] = int(enc["pos_dim"])
    enc["output_downsampling_factor"] = int(enc["output_downsampling_factor"])
    self.config = dict(feature_dim=int(feature_dim), embed_channels=list(embed),
                       **{k: (list(v) if isinstance(v, tuple) else v) for k, v in enc.items()})
    dims = enc["encoder_dim"]
    self.encoder_embed = ss.Conv2dSubsampling(int(feature_dim), dims[0], *embed)
    # encoder_unmasked_dim only sizes training-time feature masks (off in eval).
    self.encoder = zf.Zipformer(causal=False, encoder_unmasked_dim=min(dims), **enc)
    self._convert_num_channels = zf.convert_num_channels
    self.eval()

  @classmethod
  def from_pretrained(cls, folder: str) -> "ZipformerTorch":
    from safetensors.torch import load_file
    with open(os.path.join(folder, "config.json")) as f:
      cfg = json.load(f)
    cfg.pop("class", None)
    model = cls(cfg.pop("feature_dim"), **cfg)
    model.load_state_dict(load_file(os.path.join(folder, "model.safetensors")), strict=True)
    return model.eval()

  def save_pretrained(self, folder: str) -> None:
    from safetensors.torch import save_file
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "config.json"), "w") as f:
      json.dump({"class": "ZipformerTorch", **self.config}, f, indent=2)
    save_file({k: v.contiguous() for k, v in self.state_dict().items()},
              os.path.join(folder, "model.safetensors"))

  def encode(self, spec: torch.Tensor, frames: torch.Tensor | None = None):
    """spec [b, T, F] -> (frames [b, T', max(encoder_dim)], real output frames [b])."""
    if frames is None:
      frames = torch.full((spec.shape[0],), spec.shape[1], dtype=torch.long)
    x, lens = self.encoder_embed(spec, frames)
    pad = torch.arange(x.shape[1])[None, :] >= lens[:, None]
    x = x.permute(1, 0, 2)
    enc, outputs = self.encoder, []
    for i, module in enumerate(enc.encoders):
      ds = enc.downsampling_factor[i]
      x = self._convert_num_channels(x, enc.encoder_dim[i])
      x = module(x, chunk_size=-1, feature_mask=1.0, src_key_padding_mask=pad[..., ::ds],
                 attn_mask=None)
      outputs.append(x)
    x = enc.downsample_output(enc._get_full_dim_output(outputs))
    ods = enc.output_downsampling_factor
    return x.permute(1, 0, 2), (lens + ods - 1) // ods

  def forward(self, spec: torch.Tensor, frames: torch.Tensor | None = None) -> torch.Tensor:
    seq, lens = self.encode(spec, frames)
    valid = (torch.arange(seq.shape[1])[None, :] < torch.clamp(lens, min=1)[:, None])
    valid = valid.to(seq.dtype)[..., None]
    return (seq * valid).sum(1) / valid.sum(1)
