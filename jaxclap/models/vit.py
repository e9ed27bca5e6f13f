"""Spectrogram ViT in the AudioMAE shape, with its masked-autoencoder decoder.

The log-mel spectrogram [time, mel] is cut into non-overlapping ``patch x patch`` tiles
(AudioMAE: 16 x 16 over 1024 frames x 128 bins), numbered time-major (tile ``t * F + f``,
as the Conv2d patch embedding over a [1, T, F] image flattens them). A [CLS] token and
fixed 2-D sin-cos positions (MAE's layout: the first half of the channels encodes the mel
index, the second half the time index) precede pre-LN transformer blocks.

Padding: a clip shorter than the window leaves whole time-columns of padding; their
tiles are masked out of attention and pooling, so zero-padding never changes the
embedding of the real audio.

MAE (He et al.; AudioMAE): ``mask_ratio`` of the tiles are dropped at random per example,
the encoder sees the rest, a narrower decoder fills mask tokens back in and predicts each
tile's pixels; the loss (``jaxclap.losses.mae_loss``) counts masked tiles only.

FLIP (Li et al., "Scaling Language-Image Pre-training via Masking", arXiv 2212.00794):
with ``flip_mask_ratio`` > 0, the training forward (``deterministic=False``) encodes a
random ``1 - flip_mask_ratio`` of the tiles only, drawn per example from the "dropout"
rng stream; evaluation and inference see every tile. At 0.5 the contrastive pass costs
half the encoder FLOPs, and FLIP found equal or better accuracy per sample seen.
``shared_mae_pass`` goes one step further when the MAE term is on: the training forward
is the MAE pass alone, its encoder's visible tiles pooled for the contrastive terms.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxclap.models.transformer import Encoder, dense_init, layer_norm, logical


@functools.lru_cache(maxsize=None)
def sincos_2d(dim: int, grid_t: int, grid_f: int) -> np.ndarray:
  """[grid_t * grid_f, dim] fixed positions, MAE's ``get_2d_sincos_pos_embed`` layout."""
  if dim % 4:
    raise ValueError(f"ViT width {dim} must be divisible by 4 for 2-D sin-cos positions")

  def one_axis(d, pos):
    omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float64) / (d / 2.0))
    out = np.einsum("m,d->md", pos.reshape(-1).astype(np.float64), omega)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)

  # meshgrid(w, h) as in MAE: grid[0] runs along the last (mel) axis, grid[1] along time.
  grid = np.meshgrid(np.arange(grid_f), np.arange(grid_t))
  emb = np.concatenate([one_axis(dim // 2, grid[0]), one_axis(dim // 2, grid[1])], axis=1)
  return emb.astype(np.float32)


def patchify(spec, patch: int):
  """[b, T, F] -> [b, (T/p)*(F/p), p*p] tiles, time-major; pixels row-major in a tile."""
  b, t, f = spec.shape
  if t % patch or f % patch:
    raise ValueError(f"spectrogram {t} frames x {f} mel bins is not a multiple of patch={patch}")
  x = spec.reshape(b, t // patch, patch, f // patch, patch)
  return x.transpose(0, 1, 3, 2, 4).reshape(b, (t // patch) * (f // patch), patch * patch)


def patch_mask(num_frames, total_frames: int, n_mels: int, patch: int):
  """[b] real frames -> [b, tiles] 1 where a tile holds any real audio."""
  t_idx = jnp.arange(total_frames // patch) * patch
  valid_t = t_idx[None, :] < num_frames[:, None]
  return jnp.repeat(valid_t, n_mels // patch, axis=1).astype(jnp.int32)


def _kept(n: int, ratio: float) -> int:
  """Tiles left of ``n`` after dropping ``ratio`` of them (at least one)."""
  return max(1, int(round(n * (1 - ratio))))


def random_masking(rng, n: int, keep: int, valid):
  """Per-example random subset of ``keep`` of the ``n`` tiles, preferring real ones.

  Returns (keep_idx [b, keep], restore_idx [b, n] to undo the shuffle, mask [b, n]
  with 1 = removed). Padding tiles get noise above every real tile so they are the
  first to be removed.
  """
  noise = jax.random.uniform(rng, valid.shape) + (1 - valid) * 2.0
  shuffle = jnp.argsort(noise, axis=1)
  restore = jnp.argsort(shuffle, axis=1)
  keep_idx = shuffle[:, :keep]
  mask = jnp.ones(valid.shape, jnp.int32).at[:, :keep].set(0)
  mask = jnp.take_along_axis(mask, restore, axis=1)
  return keep_idx, restore, mask


class SpectrogramViT(nn.Module):
  """AudioMAE-shaped encoder; ``mae_*`` fields size the decoder used by ``reconstruct``."""
  width: int = 768
  depth: int = 12
  num_heads: int = 12
  mlp_dim: int = 3072
  patch: int = 16
  pooling: str = "cls"            # "cls" or "mean" over real tiles
  layer_norm_eps: float = 1e-6
  mask_ratio: float = 0.8         # AudioMAE pretraining ratio
  flip_mask_ratio: float = 0.0    # FLIP: tiles dropped from the training forward (0: none)
  # With the MAE term on, the training forward's contrastive embedding pools the MAE
  # pass's visible tiles: one encoder pass serves both terms (masked at mask_ratio, as
  # FLIP masks) instead of a full pass plus the MAE's own (``pooled_and_reconstruct``).
  # Without the MAE term there is no MAE pass to share: the forward is the usual one.
  shared_mae_pass: bool = False
  mae_width: int = 512
  mae_depth: int = 8
  mae_heads: int = 16
  # Positions: "mae" = sincos_2d over the (time, mel) tile grid; "audiomae" = the table
  # released AudioMAE checkpoints carry (their patch_hw swap: sincos_2d over (mel, time)
  # for inputs padded to pos_max_frames, first rows for shorter ones), to import them
  # exactly (jaxclap.models.audiomae).
  pos_layout: str = "mae"
  pos_max_frames: int = 1024
  remat: bool | str = False
  scan_layers: bool = False       # encoder and decoder as scanned layers (layer_stack)
  dtype: Any = jnp.float32

  def setup(self):
    self.patch_embed = nn.Dense(self.width, dtype=self.dtype,
                                kernel_init=logical(dense_init(), "patch", "embed"),
                                bias_init=logical(nn.initializers.zeros, "embed"))
    self.cls = self.param("cls", logical(nn.initializers.normal(0.02), None, None, "embed"),
                          (1, 1, self.width))
    self.encoder = Encoder(self.depth, self.num_heads, self.mlp_dim, pre_norm=True,
                           layer_norm_eps=self.layer_norm_eps, remat=self.remat,
                           dtype=self.dtype, scan_layers=self.scan_layers)
    self.norm = layer_norm("norm", self.layer_norm_eps, self.dtype)
    if self.mae_depth > 0:
      self.dec_embed = nn.Dense(self.mae_width, dtype=self.dtype,
                                kernel_init=logical(dense_init(), "embed", "mlp"),
                                bias_init=logical(nn.initializers.zeros, "mlp"))
      self.mask_token = self.param("mask_token",
                                   logical(nn.initializers.normal(0.02), None, None, "mlp"),
                                   (1, 1, self.mae_width))
      self.decoder = Encoder(self.mae_depth, self.mae_heads, 4 * self.mae_width,
                             pre_norm=True, layer_norm_eps=self.layer_norm_eps,
                             remat=self.remat, dtype=self.dtype,
                             scan_layers=self.scan_layers)
      self.dec_norm = layer_norm("dec_norm", self.layer_norm_eps, self.dtype)
      self.dec_pred = nn.Dense(self.patch * self.patch, dtype=self.dtype,
                               kernel_init=logical(dense_init(), "mlp", "patch"),
                               bias_init=logical(nn.initializers.zeros, "patch"))

  def _tokens(self, spec):
    tiles = patchify(spec, self.patch)
    pos = self._positions(self.width, spec.shape[1] // self.patch, spec.shape[2] // self.patch)
    return self.patch_embed(tiles.astype(self.dtype)) + pos, tiles

  def _positions(self, dim: int, t_tiles: int, f_tiles: int) -> np.ndarray:
    if self.pos_layout == "mae":
      return sincos_2d(dim, t_tiles, f_tiles)
    if self.pos_layout == "audiomae":
      full = self.pos_max_frames // self.patch
      if t_tiles > full:
        raise ValueError(f"{t_tiles * self.patch} frames exceed pos_max_frames="
                         f"{self.pos_max_frames} of the 'audiomae' position table")
      return sincos_2d(dim, f_tiles, full)[:t_tiles * f_tiles]
    raise ValueError(f"pos_layout must be 'mae' or 'audiomae', got {self.pos_layout!r}")

  def _encode(self, x, valid):
    b = x.shape[0]
    cls = jnp.broadcast_to(self.cls.astype(x.dtype), (b, 1, self.width))
    x = jnp.concatenate([cls, x], axis=1)
    mask = jnp.concatenate([jnp.ones((b, 1), valid.dtype), valid], axis=1)
    return self.norm(self.encoder(x, mask)), mask

  def __call__(self, spec, num_frames=None, deterministic: bool = True):
    """spec: [b, T, F] log-mel; num_frames: [b] real frames (None = all real).
    Returns (pooled [b, width], tokens [b, 1 + tiles, width]). ``deterministic`` is the
    audio towers' shared train/eval switch; this tower has no dropout or batch norm, and
    with ``flip_mask_ratio`` > 0 its training forward keeps only the tiles FLIP draws
    (tokens then [b, 1 + kept, width])."""
    x, _ = self._tokens(spec)
    valid = (jnp.ones(x.shape[:2], jnp.int32) if num_frames is None else
             patch_mask(num_frames, spec.shape[1], spec.shape[2], self.patch))
    if not deterministic and self.flip_mask_ratio > 0:
      keep_idx = self.flip_keep(valid)
      x = jnp.take_along_axis(x, keep_idx[..., None], axis=1)
      valid = jnp.take_along_axis(valid, keep_idx, axis=1)
    h, mask = self._encode(x, valid)
    return self._pool(h, valid), h

  def _pool(self, h, valid):
    if self.pooling == "cls":
      return h[:, 0]
    if self.pooling == "mean":
      m = valid[..., None].astype(h.dtype)
      return (h[:, 1:] * m).sum(1) / jnp.maximum(m.sum(1), 1.0)
    raise ValueError(f"pooling must be 'cls' or 'mean', got {self.pooling!r}")

  def flip_keep(self, valid):
    """FLIP's tiles for the training forward: [b, kept] indices into the tiles (real
    ones first), drawn from the "dropout" rng stream."""
    if not 0 < self.flip_mask_ratio < 1:
      raise ValueError(f"flip_mask_ratio must be in (0, 1), got {self.flip_mask_ratio}")
    n = valid.shape[1]
    keep_idx, _, _ = random_masking(self.make_rng("dropout"), n,
                                    _kept(n, self.flip_mask_ratio), valid)
    return keep_idx

  def reconstruct(self, spec, num_frames, rng):
    """The MAE pass. Returns (predicted tiles [b, n, p*p], target tiles, loss mask
    [b, n]: 1 = a masked tile of real audio)."""
    return self._mae(spec, num_frames, rng)[1]

  def pooled_and_reconstruct(self, spec, num_frames, rng):
    """The MAE pass, its encoder's visible tiles also pooled (``shared_mae_pass``):
    (pooled [b, width], the ``reconstruct`` triple)."""
    if self.flip_mask_ratio > 0:
      raise ValueError("shared_mae_pass encodes the tiles the MAE keeps (mask_ratio); "
                       f"flip_mask_ratio={self.flip_mask_ratio} would mask twice: set it to 0")
    return self._mae(spec, num_frames, rng)

  def _mae(self, spec, num_frames, rng):
    if self.mae_depth <= 0:
      raise ValueError("reconstruct needs mae_depth > 0 (the tower was built without "
                       "an MAE decoder)")
    x, tiles = self._tokens(spec)
    b, n, _ = x.shape
    valid = (jnp.ones((b, n), jnp.int32) if num_frames is None else
             patch_mask(num_frames, spec.shape[1], spec.shape[2], self.patch))
    keep = _kept(n, self.mask_ratio)
    keep_idx, restore, removed = random_masking(rng, n, keep, valid)
    visible = jnp.take_along_axis(x, keep_idx[..., None], axis=1)
    kept_valid = jnp.take_along_axis(valid, keep_idx, axis=1)
    h, _ = self._encode(visible, kept_valid)
    d = self.dec_embed(h)
    filler = jnp.broadcast_to(self.mask_token.astype(d.dtype), (b, n - keep, self.mae_width))
    full = jnp.concatenate([d[:, 1:], filler], axis=1)
    full = jnp.take_along_axis(full, restore[..., None], axis=1)
    pos = self._positions(self.mae_width, spec.shape[1] // self.patch, spec.shape[2] // self.patch)
    full = jnp.concatenate([d[:, :1], full + pos], axis=1)
    dmask = jnp.concatenate([jnp.ones((b, 1), valid.dtype), valid], axis=1)
    pred = self.dec_pred(self.dec_norm(self.decoder(full, dmask)))[:, 1:]
    return self._pool(h, kept_valid), (pred, tiles, removed * valid)
