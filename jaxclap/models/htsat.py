"""HTS-AT, the Swin-transformer audio tower of LAION-CLAP (transformers' ``ClapAudioModel``).

HTS-AT (Chen et al., 2022) reads a log-mel spectrogram as an image:

1. ``bn0``: batch norm per mel bin over the raw dB values (the only input normalisation
   LAION-CLAP uses, so the front end must give plain ``power_to_db`` log-mels: mean 0,
   std 1 in ``config.features``).
2. The time-frequency fold (LAION's ``reshape_wav2img``, transformers'
   ``reshape_mel2img``): [T = 1024, F = 64] is cut into ``freq_ratio = spec_size // F = 4``
   chunks of 256 frames stacked along frequency, a 256 x 256 image whose rows are
   (chunk, mel bin) and columns time within a chunk. Shorter clips (10 s at 48 kHz / hop
   480 = 1001 frames) are first stretched to 1024 frames with PyTorch's bicubic
   interpolation (align_corners=True), as both reference implementations do.
3. Patch embedding: a 4 x 4 convolution with stride ``patch_stride`` and a LayerNorm.
4. Swin stages: windowed self-attention (``window_size`` x ``window_size`` tokens) with a
   learned relative position bias, every second block on windows shifted by half a window
   (with the -100 logit mask between tokens the cyclic shift brought together), then patch
   merging (2 x 2 neighbours -> LayerNorm -> linear 4C -> 2C) between stages. Attention is
   ``jaxclap.models.transformer.MultiHeadAttention``; the relative position bias and the
   shift mask go in as its additive ``bias``.
5. Final LayerNorm; the tokens are unfolded back to [frequency, time] (the "frequency
   group" step) and averaged: that mean is ``ClapAudioModel(...).pooler_output``, the
   vector ``ClapModel`` feeds to its audio projection (Linear-ReLU-Linear). LAION's
   token-semantic CAM head (the AudioSet classifier) is not part of the CLAP tower.

Feature fusion (LAION-CLAP's ``enable_fusion=True``, ``fusion_type="aff_2d"``) handles
clips longer than the window: the input has 4 channels, the whole clip shrunk to the
window plus three crops from its front, middle and back thirds (``fusion_input`` builds it
as transformers' ``ClapFeatureExtractor(truncation="fusion")`` does). The global channel
goes through the patch convolution; for clips flagged ``is_longer``, the crops go through
a wider convolution (``mel_conv``, stride 3x in time, their embeddings laid side by side)
and are merged with the global embedding by attentional feature fusion (Dai et al., AFF:
``2 x w + 2 r (1 - w)`` with ``w`` a sigmoid of local + global channel attention).

Padding: HTS-AT sees a fixed-size image and has no attention mask; LAION-CLAP repeat-pads
short clips on the waveform. ``frames`` is therefore ignored, except that a fusion tower
called without ``is_longer`` flags the clips whose ``frames`` exceed the window.

Batch norm (``bn0`` and the four in the AFF block) keeps its running mean / variance in
the ``batch_stats`` collection, so a module call stays a pure function of its variables.
With ``deterministic=True`` (evaluation, and pretrained checkpoints) the running
statistics normalise. With ``deterministic=False`` the batch statistics normalise, as in
LAION-CLAP's training, unless ``batch_norm_train_stats=False`` (fine-tuning with small
batches keeps the pretrained statistics); the running statistics are updated (PyTorch's
rule: momentum 0.1, unbiased variance) only when the caller makes ``batch_stats`` mutable,
``apply(..., mutable=["batch_stats"])``. Stochastic depth (``drop_path_rate``) follows
LAION on both residual branches (transformers drops only the attention branch; the two
agree at inference). LAION's SpecAugment and mixup are input-pipeline matters, not here.

Sizes (LAION-CLAP ``create_htsat_model``): tiny = width 96, depths (2, 2, 6, 2); base =
128, (2, 2, 12, 2); large = 256, (2, 2, 12, 2); heads (4, 8, 16, 32) and window 8 for all.
The output width is ``embed_dim * 2 ** (stages - 1)`` (768 for tiny, 1024 for base).

``import_torch`` / ``export_torch`` map transformers' ``ClapAudioModel`` state dicts (also
nested as ``audio_encoder.`` or ``audio_model.audio_encoder.`` in ``ClapModel``) onto the
``{"params", "batch_stats"}`` variables and back, buffers included.
"""

from __future__ import annotations

import functools
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from jaxclap.models import convert, towers, transformer
from jaxclap.models.batch_norm import BatchNorm
from jaxclap.models.convert import (CheckpointMismatch, Rules, ident, linear_t,
                                    merge_heads_out, split_heads_bias, split_heads_in)
from jaxclap.models.transformer import (MultiHeadAttention, Mlp, dense_init, layer_norm,
                                        layer_stack, logical)

SIZES = {
    "tiny": dict(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(4, 8, 16, 32)),
    "base": dict(embed_dim=128, depths=(2, 2, 12, 2), num_heads=(4, 8, 16, 32)),
    "large": dict(embed_dim=256, depths=(2, 2, 12, 2), num_heads=(4, 8, 16, 32)),
}

# PyTorch's LayerNorm default; transformers uses it for the patch, merge and final norms
# whatever ``layer_norm_eps`` says (that one is for the blocks).
TORCH_LN_EPS = 1e-5
# The logit Swin adds between tokens the cyclic shift made neighbours: finite, as in
# both references, so fully masked rows cannot appear and the parity is exact.
SHIFT_MASK_LOGIT = -100.0


def _pair(v) -> tuple[int, int]:
  return (int(v), int(v)) if np.isscalar(v) else (int(v[0]), int(v[1]))


# -- static geometry (numpy, cached: shapes are static under jit)

@functools.lru_cache(maxsize=None)
def bicubic_matrix(n_in: int, n_out: int) -> np.ndarray:
  """[n_out, n_in] weights of PyTorch's bicubic resize, align_corners=True (Keys' cubic
  convolution with a = -0.75, source indices clamped to the edge).

  The source coordinates and weights are computed in float32 as PyTorch does: in float64
  they drift by up to 8e-4 dB from PyTorch's at 1001 -> 1024 frames, 100x the parity
  tolerance."""
  f = np.float32
  a = f(-0.75)
  cc1 = lambda x: ((a + f(2)) * x - (a + f(3))) * x * x + f(1)          # |x| <= 1
  cc2 = lambda x: ((a * x - f(5) * a) * x + f(8) * a) * x - f(4) * a    # 1 < |x| < 2
  scale = f(n_in - 1) / f(n_out - 1) if n_out > 1 else f(0)
  m = np.zeros((n_out, n_in), np.float32)
  for o in range(n_out):
    real = f(scale * f(o))
    i = int(np.floor(real))
    t = f(real - f(i))
    for k, w in zip(range(i - 1, i + 3), (cc2(t + f(1)), cc1(t), cc1(f(1) - t), cc2(f(2) - t))):
      m[o, min(max(k, 0), n_in - 1)] += w
  return m


@functools.lru_cache(maxsize=None)
def relative_position_index(window: int) -> np.ndarray:
  """[w*w, w*w] index into the (2w-1)^2 bias table for each (query, key) pair of a
  window (Swin's layout, the ``relative_position_index`` buffer of checkpoints)."""
  coords = np.stack(np.meshgrid(np.arange(window), np.arange(window), indexing="ij"))
  coords = coords.reshape(2, -1)
  rel = (coords[:, :, None] - coords[:, None, :]).transpose(1, 2, 0) + (window - 1)
  return (rel[..., 0] * (2 * window - 1) + rel[..., 1]).astype(np.int64)


@functools.lru_cache(maxsize=None)
def shift_mask(height: int, width: int, window: int, shift: int) -> np.ndarray:
  """[windows, w*w, w*w] additive mask for shifted windows: after rolling the map by
  ``-shift`` the last windows hold tokens from opposite edges, which must not attend to
  each other. Regions per axis: [0, n - w), [n - w, n - shift), [n - shift, n)."""
  region = lambda n: (np.arange(n) >= n - window).astype(int) + (np.arange(n) >= n - shift)
  img = region(height)[:, None] * 3 + region(width)[None, :]
  win = img.reshape(height // window, window, width // window, window)
  win = win.transpose(0, 2, 1, 3).reshape(-1, window * window)
  diff = win[:, None, :] - win[:, :, None]
  return np.where(diff != 0, SHIFT_MASK_LOGIT, 0.0).astype(np.float32)


def window_partition(x, window: int):
  """[b, H, W, C] -> [b * windows, w*w, C], windows row-major, tokens row-major in each."""
  b, h, w, c = x.shape
  x = x.reshape(b, h // window, window, w // window, window, c)
  return x.transpose(0, 1, 3, 2, 4, 5).reshape(-1, window * window, c)


def window_reverse(windows, window: int, b: int, h: int, w: int):
  c = windows.shape[-1]
  x = windows.reshape(b, h // window, w // window, window, window, c)
  return x.transpose(0, 1, 3, 2, 4, 5).reshape(b, h, w, c)


def mel_to_image(x, spec_size: int, freq_ratio: int):
  """[b, c, T, F] normalised log-mel -> [b, spec_size, spec_size, c] image.

  T is stretched to ``spec_size * freq_ratio`` and F to ``spec_size // freq_ratio`` by
  bicubic interpolation where shorter (a separable matrix product: PyTorch's 2-D bicubic
  with one axis unchanged is exactly 1-D along the other). Then the time axis is cut into
  ``freq_ratio`` chunks stacked along frequency: image row ``j * F + f`` is mel bin f of
  chunk j, column t is frame ``j * T / freq_ratio + t``.
  """
  b, c, t, f = x.shape
  width, height = spec_size * freq_ratio, spec_size // freq_ratio
  if t > width or f > height:
    raise ValueError(f"spectrogram of {t} frames x {f} mel bins exceeds HTS-AT's input "
                     f"{width} x {height} (spec_size={spec_size}, freq_ratio={freq_ratio})")
  if t < width:
    x = jnp.einsum("ot,bctf->bcof", bicubic_matrix(t, width).astype(x.dtype), x)
  if f < height:
    x = jnp.einsum("of,bctf->bcto", bicubic_matrix(f, height).astype(x.dtype), x)
  x = x.reshape(b, c, freq_ratio, width // freq_ratio, height)
  x = x.transpose(0, 1, 2, 4, 3).reshape(b, c, freq_ratio * height, width // freq_ratio)
  return x.transpose(0, 2, 3, 1)


def fusion_input(mel, frames, chunk_frames: int, rng=None):
  """Long log-mels -> the 4-channel input of a fusion tower and its ``is_longer`` flags.

  mel: [b, T, F] (T >= chunk_frames), frames: int [b] real frames per clip, chunk_frames:
  the window in frames (LAION: 10 s / hop + 1 = 1001). A clip longer than the window gets
  [the real part bilinearly shrunk to the window (PyTorch, align_corners=False), a crop
  from the front, middle and back thirds of the possible start frames]; a clip that fits
  gets its first ``chunk_frames`` frames four times (LAION repeat-pads short clips on the
  waveform, before the mel). Crops start at random with ``rng`` (training, as
  ``ClapFeatureExtractor(truncation="fusion")``), at the centre of each third without.
  transformers' extractor also flags one random clip as longer when none is; that is a
  training-time quirk and not reproduced. Returns ([b, 4, chunk_frames, F], bool [b]).
  """
  b, t, f = mel.shape
  if t < chunk_frames:
    raise ValueError(f"fusion_input: {t} frames is shorter than chunk_frames={chunk_frames}")
  mel = mel.astype(jnp.float32)
  frames = jnp.clip(jnp.asarray(frames, jnp.int32), 1, t)
  longer = frames > chunk_frames

  # The global view: bilinear resize of frames[i] rows to chunk_frames rows.
  scale = frames.astype(jnp.float32)[:, None] / chunk_frames
  src = jnp.maximum((jnp.arange(chunk_frames, dtype=jnp.float32)[None] + 0.5) * scale - 0.5, 0.0)
  i0 = jnp.minimum(jnp.floor(src).astype(jnp.int32), frames[:, None] - 1)
  i1 = jnp.minimum(i0 + 1, frames[:, None] - 1)
  lam = (src - i0)[..., None]
  take = lambda idx: jnp.take_along_axis(mel, idx[..., None], axis=1)
  shrink = (1 - lam) * take(i0) + lam * take(i1)

  # np.array_split(range(frames - chunk + 1), 3): the first n % 3 thirds one longer.
  n = jnp.maximum(frames - chunk_frames + 1, 1)
  sizes = jnp.stack([n // 3 + (k < n % 3) for k in range(3)], axis=1)
  starts = jnp.cumsum(sizes, axis=1) - sizes
  if rng is None:
    offset = (sizes - 1) // 2
  else:
    offset = jnp.floor(jax.random.uniform(rng, (b, 3)) * sizes).astype(jnp.int32)
  idx = jnp.where(sizes > 0, starts + jnp.minimum(offset, sizes - 1), 0)
  crop = jax.vmap(jax.vmap(lambda m, i: jax.lax.dynamic_slice_in_dim(m, i, chunk_frames, 0),
                           in_axes=(None, 0)))
  crops = crop(mel, idx)                                       # [b, 3, chunk, F]
  fused = jnp.concatenate([shrink[:, None], crops], axis=1)
  head = jnp.broadcast_to(mel[:, None, :chunk_frames], fused.shape)
  return jnp.where(longer[:, None, None, None], fused, head), longer


# -- modules

class AttentionalFeatureFusion(nn.Module):
  """AFF-2D (LAION's ``AFF``, transformers' ``ClapAudioAFFBlock``), channels-last: 1x1
  convolutions are Dense layers. ``x`` the global embedding, ``residual`` the crops'."""
  ratio: int = 4
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, residual, use_batch_stats: bool, mask=None):
    c = x.shape[-1]
    inter = int(c // self.ratio)

    def attention(h, name):
      h = nn.Dense(inter, dtype=self.dtype, name=f"{name}_fc1",
                   kernel_init=logical(dense_init(), "embed", "mlp"),
                   bias_init=logical(nn.initializers.zeros, "mlp"))(h)
      h = nn.relu(BatchNorm("mlp", name=f"{name}_bn1")(h, use_batch_stats, mask))
      h = nn.Dense(c, dtype=self.dtype, name=f"{name}_fc2",
                   kernel_init=logical(dense_init(), "mlp", "embed"),
                   bias_init=logical(nn.initializers.zeros, "embed"))(h)
      return BatchNorm("embed", name=f"{name}_bn2")(h, use_batch_stats, mask)

    both = x + residual
    w = jax.nn.sigmoid(attention(both, "local")
                       + attention(both.mean(axis=(1, 2), keepdims=True), "global"))
    return 2 * x * w + 2 * residual * (1 - w)


class PatchEmbed(nn.Module):
  """Patch convolution + LayerNorm; with fusion, the crops' convolution and AFF."""
  embed_dim: int
  patch_size: Any = 4
  patch_stride: Any = 4
  patch_norm: bool = True
  enable_fusion: bool = False
  aff_ratio: int = 4
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, img, is_longer=None, use_batch_stats: bool = False):
    """img [b, H, W, c] -> [b, H / stride, W / stride, embed_dim]."""
    ph, pw = _pair(self.patch_size)
    sh, sw = _pair(self.patch_stride)
    pad = ((ph - sh) // 2, (pw - sw) // 2)
    conv = lambda kernel, stride, name: nn.Conv(
        self.embed_dim, kernel, stride, padding=((pad[0], pad[0]), (pad[1], pad[1])),
        dtype=self.dtype, name=name,
        kernel_init=logical(nn.initializers.lecun_normal(), None, None, None, "embed"),
        bias_init=logical(nn.initializers.zeros, "embed"))
    x = conv((ph, pw), (sh, sw), "proj")(img[..., :1].astype(self.dtype))
    if self.enable_fusion:
      b, h, w, _ = img.shape
      # Each crop on its own through a 3x wider kernel, their maps side by side in time.
      local = img[..., 1:].transpose(0, 3, 1, 2).reshape(b * 3, h, w, 1)
      local = conv((ph, 3 * pw), (sh, 3 * sw), "mel_conv")(local.astype(self.dtype))
      _, gh, lw, d = local.shape
      local = local.reshape(b, 3, gh, lw, d).transpose(0, 2, 1, 3, 4).reshape(b, gh, 3 * lw, d)
      gw = x.shape[2]
      local = (jnp.pad(local, ((0, 0), (0, 0), (0, gw - 3 * lw), (0, 0))) if 3 * lw < gw
               else local[:, :, :gw])
      fused = AttentionalFeatureFusion(self.aff_ratio, self.dtype, name="fusion")(
          x, local, use_batch_stats, is_longer)
      x = jnp.where(is_longer[:, None, None, None], fused, x)
    if self.patch_norm:
      x = layer_norm("norm", TORCH_LN_EPS, self.dtype)(x)
    return x


class SwinBlock(nn.Module):
  """(Shifted-)window attention with relative position bias, then the MLP; pre-LN.
  ``window_size``/``shift_size`` are the effective ones (the stage clips them)."""
  num_heads: int
  window_size: int
  shift_size: int = 0
  mlp_ratio: float = 4.0
  layer_norm_eps: float = 1e-5
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  drop_path: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, mask=None, deterministic: bool = True):
    """x [b, h, w, c]; ``mask`` is unused (HTS-AT has none: see the module docstring),
    taken so the blocks stack as every tower's do (transformer.layer_stack)."""
    del mask
    b, h, w, c = x.shape
    ws, shift, heads = self.window_size, self.shift_size, self.num_heads
    if c % heads:
      raise ValueError(f"width {c} is not divisible by num_heads={heads}")
    table = self.param("relative_position_bias_table",
                       logical(nn.initializers.truncated_normal(0.02), None, "heads"),
                       ((2 * ws - 1) ** 2, heads))
    # Stochastic depth: one keep/drop per example, scaled by 1 / keep.
    drop_path = lambda y: nn.Dropout(self.drop_path, broadcast_dims=(1, 2, 3))(
        y, deterministic=deterministic)

    y = layer_norm("attn_norm", self.layer_norm_eps, self.dtype)(x)
    # Zero tokens fill the map up to whole windows (after the norm, as the references).
    y = jnp.pad(y, ((0, 0), (0, -h % ws), (0, -w % ws), (0, 0)))
    hp, wp = y.shape[1:3]
    if shift:
      y = jnp.roll(y, (-shift, -shift), axis=(1, 2))
    n = ws * ws
    bias = table[relative_position_index(ws).reshape(-1)].reshape(n, n, heads)
    bias = bias.transpose(2, 0, 1)[None]                       # [1, heads, n, n]
    if shift:
      mask = shift_mask(hp, wp, ws, shift)                     # [windows, n, n]
      bias = bias + mask[:, None]
      # Windows are batch-major in window_partition: example i owns rows i*nw..(i+1)*nw.
      bias = jnp.broadcast_to(bias[None], (b,) + bias.shape).reshape((-1,) + bias.shape[1:])
    attn = MultiHeadAttention(num_heads=heads, head_dim=c // heads, dtype=self.dtype,
                              dropout_rate=self.attention_dropout_rate, name="attn")
    y = attn(window_partition(y, ws), deterministic=deterministic, bias=bias)
    y = nn.Dropout(self.attention_dropout_rate)(y, deterministic=deterministic)
    y = window_reverse(y, ws, b, hp, wp)
    if shift:
      y = jnp.roll(y, (shift, shift), axis=(1, 2))
    x = x + drop_path(y[:, :h, :w])

    mlp = Mlp(hidden_dim=int(self.mlp_ratio * c), activation="gelu", dtype=self.dtype,
              name="mlp")
    y = mlp(layer_norm("mlp_norm", self.layer_norm_eps, self.dtype)(x))
    y = nn.Dropout(self.dropout_rate)(y, deterministic=deterministic)
    x = x + drop_path(y)
    return nn.with_logical_constraint(x, ("batch", None, None, "embed"))


class PatchMerging(nn.Module):
  """2 x 2 neighbours -> LayerNorm(4C) -> linear to 2C: half the resolution, twice the width."""
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    b, h, w, c = x.shape
    x = jnp.pad(x, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)))
    # Swin's order: (even row, even col), (odd, even), (even, odd), (odd, odd).
    x = jnp.concatenate([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]],
                        axis=-1)
    x = layer_norm("norm", TORCH_LN_EPS, self.dtype)(x)
    return nn.Dense(2 * c, use_bias=False, dtype=self.dtype, name="reduction",
                    kernel_init=logical(dense_init(), "mlp", "embed"))(x)


class SwinStage(nn.Module):
  depth: int
  num_heads: int
  window_size: int
  downsample: bool
  mlp_ratio: float = 4.0
  layer_norm_eps: float = 1e-5
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  drop_path: Sequence[float] = ()
  remat: bool | str = False
  dtype: Any = jnp.float32
  scan_layers: bool = False   # the (unshifted, shifted) pairs as one scan (layer_stack)

  @nn.compact
  def __call__(self, x, deterministic: bool = True):
    h, w = x.shape[1:3]
    blocks = []
    for i in range(self.depth):
      window, shift = self.window_size, (0 if i % 2 == 0 else self.window_size // 2)
      if min(h, w) <= window:
        # A map no larger than one window: one window, nothing to shift.
        window, shift = min(h, w), 0
      blocks.append(dict(num_heads=self.num_heads, window_size=window, shift_size=shift,
                         mlp_ratio=self.mlp_ratio, layer_norm_eps=self.layer_norm_eps,
                         dropout_rate=self.dropout_rate,
                         attention_dropout_rate=self.attention_dropout_rate,
                         drop_path=self.drop_path[i] if self.drop_path else 0.0,
                         dtype=self.dtype))
    # Stochastic depth rising block by block leaves nothing to repeat: such a stage is one
    # group, scanned once (no faster to compile than unrolled, but the same layout).
    x = layer_stack(SwinBlock, blocks, remat=self.remat, scan=self.scan_layers,
                    deterministic=deterministic, prefix="block_")(x, None)
    if self.downsample:
      x = PatchMerging(self.dtype, name="merge")(x)
    return x


class HTSAT(nn.Module):
  """HTS-AT audio tower. ``size`` picks LAION's preset; ``embed_dim``/``depths``/``num_heads``
  override it when given."""
  size: str = "tiny"
  embed_dim: int | None = None
  depths: Sequence[int] | None = None
  num_heads: Sequence[int] | None = None
  spec_size: int = 256
  num_mel_bins: int = 64
  patch_size: Any = 4
  patch_stride: Any = 4
  window_size: int = 8
  mlp_ratio: float = 4.0
  layer_norm_eps: float = 1e-5
  patch_norm: bool = True
  enable_fusion: bool = False
  fusion_type: str = "aff_2d"
  aff_ratio: int = 4
  dropout_rate: float = 0.0            # after the MLP (transformers' hidden_dropout_prob)
  attention_dropout_rate: float = 0.0  # attention probabilities and output
  drop_path_rate: float = 0.0          # stochastic depth, rising linearly to this
  batch_norm_train_stats: bool = True
  remat: bool | str = False
  scan_layers: bool = False            # each stage's blocks as a scan (SwinStage)
  dtype: Any = jnp.float32

  def arch(self) -> tuple[int, tuple[int, ...], tuple[int, ...]]:
    if self.size not in SIZES:
      raise ValueError(f"HTSAT size must be one of {sorted(SIZES)}, got {self.size!r}")
    p = SIZES[self.size]
    width = int(self.embed_dim if self.embed_dim is not None else p["embed_dim"])
    depths = tuple(int(d) for d in (self.depths if self.depths is not None else p["depths"]))
    heads = tuple(int(h) for h in (self.num_heads if self.num_heads is not None
                                   else p["num_heads"]))
    if len(depths) != len(heads):
      raise ValueError(f"HTSAT depths {depths} and num_heads {heads} differ in length")
    return width, depths, heads

  def num_features(self) -> int:
    """Width of the pooled output (ClapAudioConfig.hidden_size)."""
    width, depths, _ = self.arch()
    return width * 2 ** (len(depths) - 1)

  @nn.compact
  def __call__(self, spec, frames=None, deterministic: bool = True, is_longer=None):
    """spec: [b, T, F] log-mel in dB ([b, 4, T, F] from ``fusion_input`` for a fusion
    tower); frames: int [b] real frames, unused by the Swin layers (see the module
    docstring); is_longer: bool [b], fusion only (default: ``frames > T``).

    Returns (pooled [b, num_features], hidden [b, freq, time, num_features]): the final
    normed tokens unfolded back to frequency x time (transformers' ``last_hidden_state``
    channels-last), and their mean (its ``pooler_output``)."""
    width, depths, heads = self.arch()
    if self.enable_fusion and self.fusion_type != "aff_2d":
      raise ValueError(f"HTSAT fusion_type must be 'aff_2d' (the one LAION-CLAP ships and "
                       f"transformers implements), got {self.fusion_type!r}")
    channels = 4 if self.enable_fusion else 1
    if spec.ndim == 3 and not self.enable_fusion:
      spec = spec[:, None]
    if spec.ndim != 4 or spec.shape[1] != channels:
      want = ("[b, 4, T, F] spectrograms (build them with htsat.fusion_input)"
              if self.enable_fusion else "[b, T, F] spectrograms")
      raise ValueError(f"HTSAT{' with fusion' if self.enable_fusion else ''} takes {want}, "
                       f"got shape {spec.shape}")
    if self.enable_fusion and is_longer is None:
      if frames is None:
        raise ValueError("a fusion HTSAT needs is_longer or frames")
      is_longer = frames > spec.shape[2]
    freq_ratio = self.spec_size // self.num_mel_bins
    if freq_ratio < 1 or spec.shape[-1] > self.num_mel_bins:
      raise ValueError(f"spectrogram has {spec.shape[-1]} mel bins; HTSAT expects "
                       f"num_mel_bins={self.num_mel_bins} <= spec_size={self.spec_size}")
    use_batch_stats = not deterministic and self.batch_norm_train_stats

    x = BatchNorm(None, name="bn0")(spec, use_batch_stats)
    img = mel_to_image(x, self.spec_size, freq_ratio)
    x = PatchEmbed(width, self.patch_size, self.patch_stride, self.patch_norm,
                   self.enable_fusion, self.aff_ratio, self.dtype, name="patch_embed")(
                       img, None if is_longer is None else jnp.asarray(is_longer).reshape(-1),
                       use_batch_stats)
    rates = np.linspace(0.0, self.drop_path_rate, sum(depths)).tolist()
    for i, (depth, nh) in enumerate(zip(depths, heads)):
      x = SwinStage(depth, nh, self.window_size, i < len(depths) - 1, self.mlp_ratio,
                    self.layer_norm_eps, self.dropout_rate, self.attention_dropout_rate,
                    tuple(rates[sum(depths[:i]):sum(depths[:i + 1])]), self.remat,
                    self.dtype, self.scan_layers, name=f"stage_{i}")(x, deterministic)
    x = layer_norm("norm", TORCH_LN_EPS, self.dtype)(x)

    # Undo the fold on the token map: rows are (chunk, frequency), chunks go back in time.
    b, h, w, c = x.shape
    if h % freq_ratio:
      raise ValueError(f"final token map has {h} rows, not a multiple of freq_ratio={freq_ratio}")
    hidden = x.reshape(b, freq_ratio, h // freq_ratio, w, c).transpose(0, 2, 1, 3, 4)
    hidden = hidden.reshape(b, h // freq_ratio, freq_ratio * w, c)
    pooled = hidden.astype(jnp.float32).mean(axis=(1, 2)).astype(x.dtype)
    return pooled, hidden


# -- transformers' ClapAudioModel <-> ours

conv_t = lambda a, shape: a.transpose(2, 3, 1, 0)          # [o, i, kh, kw] -> [kh, kw, i, o]
conv1x1_t = lambda a, shape: a.reshape(a.shape[0], -1).T   # [o, i, 1, 1] -> [i, o]

_INVERSE = {**convert.INVERSE,
            id(conv_t): lambda a: a.transpose(3, 2, 0, 1),
            id(conv1x1_t): lambda a: a.T[:, :, None, None]}


def _layout(variables: Mapping) -> tuple[list[int], bool, bool]:
  """(blocks per stage, fusion?, patch norm?) read off a variables tree."""
  p = transformer.unstack_layers(nn.meta.unbox(variables))["params"]
  depths = []
  while f"stage_{len(depths)}" in p:
    depths.append(sum(1 for k in p[f"stage_{len(depths)}"] if k.startswith("block_")))
  pe = p["patch_embed"]
  return depths, "fusion" in pe, "norm" in pe


def htsat_rules(depths: Sequence[int], *, fusion: bool, patch_norm: bool = True) -> Rules:
  """Our ``{"params", "batch_stats"}`` paths -> ClapAudioEncoder keys (no prefix)."""
  P, S = ("params",), ("batch_stats",)
  r: Rules = {}

  def norm(ours, theirs):
    r[P + ours + ("scale",)] = (f"{theirs}.weight", ident)
    r[P + ours + ("bias",)] = (f"{theirs}.bias", ident)

  def bn(ours, theirs):
    norm(ours, theirs)
    r[S + ours + ("mean",)] = (f"{theirs}.running_mean", ident)
    r[S + ours + ("var",)] = (f"{theirs}.running_var", ident)

  def dense(ours, theirs, fn=linear_t, bias=True):
    r[P + ours + ("kernel",)] = (f"{theirs}.weight", fn)
    if bias:
      r[P + ours + ("bias",)] = (f"{theirs}.bias", ident)

  bn(("bn0",), "batch_norm")
  dense(("patch_embed", "proj"), "patch_embed.proj", conv_t)
  if patch_norm:
    norm(("patch_embed", "norm"), "patch_embed.norm")
  if fusion:
    dense(("patch_embed", "mel_conv"), "patch_embed.mel_conv2d", conv_t)
    aff = "patch_embed.fusion_model"
    # nn.Sequential indices: local (conv, bn, relu, conv, bn); global has a pool first.
    for name, first in (("local", 0), ("global", 1)):
      ours = ("patch_embed", "fusion")
      dense(ours + (f"{name}_fc1",), f"{aff}.{name}_att.{first}", conv1x1_t)
      bn(ours + (f"{name}_bn1",), f"{aff}.{name}_att.{first + 1}")
      dense(ours + (f"{name}_fc2",), f"{aff}.{name}_att.{first + 3}", conv1x1_t)
      bn(ours + (f"{name}_bn2",), f"{aff}.{name}_att.{first + 4}")
  for i, depth in enumerate(depths):
    for j in range(depth):
      ours, theirs = (f"stage_{i}", f"block_{j}"), f"layers.{i}.blocks.{j}"
      a = f"{theirs}.attention"
      norm(ours + ("attn_norm",), f"{theirs}.layernorm_before")
      r[P + ours + ("relative_position_bias_table",)] = (
          f"{a}.self.relative_position_bias_table", ident)
      for q in ("query", "key", "value"):
        r[P + ours + ("attn", q, "kernel")] = (f"{a}.self.{q}.weight", split_heads_in)
        r[P + ours + ("attn", q, "bias")] = (f"{a}.self.{q}.bias", split_heads_bias)
      r[P + ours + ("attn", "out", "kernel")] = (f"{a}.output.dense.weight", merge_heads_out)
      r[P + ours + ("attn", "out", "bias")] = (f"{a}.output.dense.bias", ident)
      norm(ours + ("mlp_norm",), f"{theirs}.layernorm_after")
      dense(ours + ("mlp", "fc_in"), f"{theirs}.intermediate.dense")
      dense(ours + ("mlp", "fc_out"), f"{theirs}.output.dense")
    if i < len(depths) - 1:
      norm((f"stage_{i}", "merge", "norm"), f"layers.{i}.downsample.norm")
      dense((f"stage_{i}", "merge", "reduction"), f"layers.{i}.downsample.reduction", bias=False)
  norm(("norm",), "norm")
  return r


def _buffers(variables: Mapping, depths: Sequence[int], fusion: bool) -> dict[str, np.ndarray]:
  """The checkpoint buffers our variables imply: relative_position_index per block (its
  window read off the bias table) and BatchNorm's num_batches_tracked."""
  p = transformer.unstack_layers(nn.meta.unbox(variables))["params"]
  out = {}
  for i, depth in enumerate(depths):
    for j in range(depth):
      n = p[f"stage_{i}"][f"block_{j}"]["relative_position_bias_table"].shape[0]
      window = (int(round(np.sqrt(n))) + 1) // 2
      out[f"layers.{i}.blocks.{j}.attention.self.relative_position_index"] = (
          relative_position_index(window))
  bns = ["batch_norm"]
  if fusion:
    bns += [f"patch_embed.fusion_model.{name}_att.{k}"
            for name, first in (("local", 0), ("global", 1)) for k in (first + 1, first + 4)]
  for name in bns:
    out[f"{name}.num_batches_tracked"] = np.array(0, np.int64)
  return out


def import_torch(state_dict: Mapping[str, np.ndarray], target: Mapping, *,
                 where: str = "checkpoint", prefix: str | None = None, **cfg) -> dict:
  """transformers ``ClapAudioModel`` / ``ClapModel`` weights -> our variables.

  ``target``: the tower's ``{"params": ..., "batch_stats": ...}`` (arrays or
  ShapeDtypeStructs, e.g. from ``jax.eval_shape(tower.init, ...)``); the layout (stages,
  blocks, fusion) is read off it, so ``cfg`` (the tower's config fields, accepted so every
  tower imports alike) is only checked against it (``depths``, ``enable_fusion``). Keys may
  carry any prefix before ``patch_embed.proj.weight`` (``audio_encoder.``,
  ``audio_model.audio_encoder.``; ``prefix=`` picks one explicitly); keys outside it
  (ClapModel's text tower, projections) are left alone. ``relative_position_index``
  buffers must equal ours; ``num_batches_tracked`` is dropped. Raises
  ``CheckpointMismatch`` naming the key and both shapes on any missing, unexpected or
  mis-shaped entry.
  """
  if not isinstance(target, Mapping) or "params" not in target or "batch_stats" not in target:
    raise TypeError("htsat.import_torch needs the tower's variables {'params', 'batch_stats'} "
                    "(batch norm running statistics live in 'batch_stats')")
  depths, fusion, patch_norm = _layout(target)
  if cfg.get("depths") is not None and tuple(cfg["depths"]) != tuple(depths):
    raise CheckpointMismatch(f"{where}: config depths {tuple(cfg['depths'])} but the target "
                             f"tower has {tuple(depths)}")
  if "enable_fusion" in cfg and bool(cfg["enable_fusion"]) != fusion:
    raise CheckpointMismatch(f"{where}: config enable_fusion={cfg['enable_fusion']} but the "
                             f"target tower {'has' if fusion else 'lacks'} fusion parameters")
  prefix = convert._find_prefix(state_dict, "patch_embed.proj.weight", prefix, where)
  checked = set()
  for key, want in _buffers(target, depths, fusion).items():
    if not key.endswith("relative_position_index") or prefix + key not in state_dict:
      continue
    got = np.asarray(state_dict[prefix + key])
    if got.shape != want.shape or not np.array_equal(got, want):
      raise CheckpointMismatch(
          f"{where}: buffer {prefix + key!r} (shape {got.shape}) differs from the relative "
          f"position index of a {want.shape} window that the tower computes")
    checked.add(key)
  ignore = lambda k: k.endswith("num_batches_tracked") or k in checked
  target = {"params": target["params"], "batch_stats": target["batch_stats"]}
  return convert.apply_rules(htsat_rules(depths, fusion=fusion, patch_norm=patch_norm),
                             state_dict, target, prefix=prefix, ignore=ignore, where=where)


def export_torch(variables: Mapping, *, prefix: str = "audio_encoder.") -> dict[str, np.ndarray]:
  """Our variables -> a transformers ``ClapAudioModel`` state dict, buffers included
  (``relative_position_index``, ``num_batches_tracked`` = 0), so that ``load_state_dict(...,
  strict=True)`` accepts it. ``prefix="audio_model.audio_encoder."`` for ``ClapModel``.
  Scanned stages (``scan_layers``) export block by block, as the unrolled tower's."""
  depths, fusion, patch_norm = _layout(variables)
  flat = traverse_util.flatten_dict(transformer.unstack_layers(nn.meta.unbox(
      {"params": variables["params"], "batch_stats": variables["batch_stats"]})))
  out = {}
  for path, (key, fn) in htsat_rules(depths, fusion=fusion, patch_norm=patch_norm).items():
    out[prefix + key] = np.asarray(_INVERSE[id(fn)](np.asarray(flat[path], np.float32)))
  out.update({prefix + k: v for k, v in _buffers(variables, depths, fusion).items()})
  return out


# ------------------------------------- the exports (jaxclap.export: towers and ClapModel)

TORCH_PREFIX = "audio_encoder."      # ClapAudioModel's state-dict prefix


def check_export(config: Any) -> None:
  """``NotExportable`` unless ``ClapAudioModel`` (alone or in ``ClapModel``) holds the
  run's HTS-AT exactly."""
  a = config.model.audio
  tower = towers.module(a)   # the module's fields: its defaults, the preset, the config
  if tower.enable_fusion:
    raise towers.NotExportable("config.model.audio.enable_fusion=True: the fusion front end "
                               "is not exported (jaxclap trains single-window towers)")
  if int(config.features.n_mels) != int(tower.num_mel_bins):
    raise towers.NotExportable(f"config.features.n_mels={config.features.n_mels} != "
                               f"config.model.audio.num_mel_bins={tower.num_mel_bins}: "
                               "ClapAudioModel's bn0 normalises num_mel_bins channels")


def config_to_hf(tower: HTSAT) -> dict:
  """``transformers.ClapAudioConfig`` fields of ``tower`` (no fusion)."""
  width, depths, heads = tower.arch()
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


def _export(config: Any, variables: Mapping, out: str) -> dict:
  """OUT/audio as ``ClapAudioModel`` (dropout off: inference); the metadata entry: fed
  ``input_features`` [b, 1, T, F], its ``pooler_output`` (no frame mask)."""
  import os
  import transformers
  kw = config_to_hf(towers.module(config.model.audio))
  kw.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, drop_path_rate=0.0)
  convert.save_strict(transformers.ClapAudioModel(transformers.ClapAudioConfig(**kw)),
                      export_torch(variables, prefix=TORCH_PREFIX), os.path.join(out, "audio"))
  return {"class": "ClapAudioModel", "path": "audio", "inputs": "input_features",
          "pooling": "pooler_output"}


def _import_export(config: Any, folder: str, target: Mapping) -> dict:
  import os
  where = os.path.join(folder, "audio")
  return import_torch(convert.load_state_dict(where), target, prefix=TORCH_PREFIX,
                      where=where)


# -------------------------------------------------------------------------- registration

towers.register(towers.Tower(
    name="htsat", side="audio", module=HTSAT, import_torch=import_torch,
    torch_class="ClapAudioModel", export_torch=_export, import_export=_import_export,
    check_export=check_export,
    # The mel image is spec_size x spec_size: 64 bins x 1024 frames folded 4 ways (clips
    # are stretched to 1024 frames, as LAION-CLAP's 10 s input).
    presets={"htsat": dict(name="htsat", size="tiny", spec_size=256, num_mel_bins=64)},
    # 32 bins folded 4 ways: 512 frames >= a 3 s clip's 288
    runlocal={"htsat": dict(spec_size=128, num_mel_bins=32, embed_dim=16, depths=(2, 2),
                            num_heads=(2, 2))}))
