"""jaxclap's CNN14 audio tower in PyTorch: the class its towers export loads as.

transformers has no CNN14, so the tower's PyTorch twin lives here, beside its Flax module
(``jaxclap.models.cnn14``), in a file that imports PyTorch only: ``jaxclap.torch_model``
loads it by the name the export's metadata gives, with no JAX installed.
"""

from __future__ import annotations

import json
import os
from typing import Sequence

import torch
from torch import nn


class _Cnn14Block(nn.Module):
  """PANNs' ConvBlock: (3x3 conv without bias -> BatchNorm2d -> ReLU) x 2, then a pool."""

  def __init__(self, cin: int, cout: int, eps: float):
    super().__init__()
    self.conv1 = nn.Conv2d(cin, cout, (3, 3), padding=(1, 1), bias=False)
    self.conv2 = nn.Conv2d(cout, cout, (3, 3), padding=(1, 1), bias=False)
    self.bn1 = nn.BatchNorm2d(cout, eps=eps)
    self.bn2 = nn.BatchNorm2d(cout, eps=eps)

  def forward(self, x, valid, pool: int):
    for conv, bn in ((self.conv1, self.bn1), (self.conv2, self.bn2)):
      if valid is not None:
        x = x * valid[:, None, :, None]
      x = nn.functional.relu(bn(conv(x)))
    return nn.functional.avg_pool2d(x, pool) if pool > 1 else x


class Cnn14Torch(nn.Module):
  """jaxclap's CNN14 audio tower (``jaxclap.models.cnn14.Cnn14``) in PyTorch, inference
  only (eval-mode batch norm with the running statistics, no dropout).

  PANNs' / msclap's module layout and state-dict key names (``bn0.*``,
  ``conv_block{i}.conv{j}.weight``, ``conv_block{i}.bn{j}.*``, ``fc1.*``), without the
  torchlibrosa front end and the AudioSet classifier: it takes the log-mel [b, T, n_mels]
  that ``ClapModelTorch.features`` computes. ``bn0`` normalises per mel bin; six blocks
  (2x2 average pool after all but the last); mean over mel; max + mean over time; ``fc1``
  + ReLU -> [b, embed_dim].

  ``frames`` (int [b], real frames per clip; None = all real) has the Flax tower's
  meaning: before every conv of block k (0-based) the time steps at or past
  ``frames // 2**k`` are zeroed, and the time max / mean read the steps before
  ``frames // 2**(blocks - 1)`` only (always at least the first). So a zero-padded clip
  embeds as the clip alone.

  ``Cnn14Torch.from_pretrained(folder)`` reads ``config.json`` (``channels``,
  ``embed_dim``, ``mel_bins``, ``bn_eps``) and ``model.safetensors``; ``save_pretrained``
  writes them.
  """

  def __init__(self, channels: Sequence[int], embed_dim: int, mel_bins: int,
               bn_eps: float = 1e-5):
    super().__init__()
    self.config = dict(channels=[int(c) for c in channels], embed_dim=int(embed_dim),
                       mel_bins=int(mel_bins), bn_eps=float(bn_eps))
    self.bn0 = nn.BatchNorm2d(mel_bins, eps=bn_eps)
    self.blocks = len(channels)
    for i, (cin, cout) in enumerate(zip((1,) + tuple(channels[:-1]), channels)):
      setattr(self, f"conv_block{i + 1}", _Cnn14Block(cin, cout, bn_eps))
    self.fc1 = nn.Linear(channels[-1], embed_dim)
    self.eval()

  @classmethod
  def from_pretrained(cls, folder: str) -> "Cnn14Torch":
    from safetensors.torch import load_file
    with open(os.path.join(folder, "config.json")) as f:
      cfg = json.load(f)
    model = cls(cfg["channels"], cfg["embed_dim"], cfg["mel_bins"], cfg.get("bn_eps", 1e-5))
    model.load_state_dict(load_file(os.path.join(folder, "model.safetensors")), strict=True)
    return model.eval()

  def save_pretrained(self, folder: str) -> None:
    from safetensors.torch import save_file
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "config.json"), "w") as f:
      json.dump({"class": "Cnn14Torch", **self.config}, f, indent=2)
    save_file({k: v.contiguous() for k, v in self.state_dict().items()},
              os.path.join(folder, "model.safetensors"))

  def forward(self, spec: torch.Tensor, frames: torch.Tensor | None = None) -> torch.Tensor:
    """spec: [b, T, n_mels] log-mel; frames: int [b] real frames -> [b, embed_dim]."""
    mask = lambda length, level: None if frames is None else (
        torch.arange(length)[None, :] < (frames // 2 ** level)[:, None]).to(spec.dtype)
    x = self.bn0(spec.transpose(1, 2)[..., None])[..., 0].transpose(1, 2)   # per mel bin
    x = x[:, None]                                                          # [b, 1, T, F]
    for i in range(self.blocks):
      x = getattr(self, f"conv_block{i + 1}")(x, mask(x.shape[2], i),
                                              2 if i < self.blocks - 1 else 1)
    seq = x.mean(dim=3).transpose(1, 2)                                     # [b, t', c]
    valid = mask(seq.shape[1], self.blocks - 1)
    if valid is None:
      pooled = seq.max(dim=1).values + seq.mean(dim=1)
    else:
      valid = valid.clone()
      valid[:, 0] = 1.0
      valid = valid[..., None]
      peak = torch.where(valid > 0, seq, torch.finfo(seq.dtype).min).max(dim=1).values
      pooled = peak + (seq * valid).sum(1) / valid.sum(1)
    return nn.functional.relu(self.fc1(pooled))
