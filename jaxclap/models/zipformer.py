"""Zipformer (Yao et al., 2023, "Zipformer: A faster and better encoder for automatic speech
recognition"; icefall's ``zipformer.py``): the audio tower of CLSP (SPEAR-XLarge).

Layout [batch, time, channels] throughout (icefall uses [time, batch, channels]). Parameter
names follow icefall's state-dict names (``encoder_embed.conv.0.weight`` ->
``encoder_embed/conv_0/kernel``) so ``import_torch`` is a mechanical mapping.

Inference-time identities left out on purpose: Balancer, Whiten, ScaleGrad and
penalize_abs_values_gt change only gradients (their forward is the identity); dropout,
layer/sequence skipping, const-attention, pos-emb skipping and feature masks are training-only
regularisers whose inference value is 1 (or no skip). Training here therefore runs the
plain architecture without those regularisers.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util


def swoosh_l(x):
  return jnp.logaddexp(0.0, x - 4.0) - 0.08 * x - 0.035


def swoosh_r(x):
  return jnp.logaddexp(0.0, x - 1.0) - 0.08 * x - 0.313261687


class BiasNorm(nn.Module):
  """x * rms(x - bias)^-1 * exp(log_scale): LayerNorm without mean removal or per-channel
  scale, so the module cannot zero a channel out."""

  @nn.compact
  def __call__(self, x):
    bias = self.param("bias", nn.initializers.normal(1e-4), (x.shape[-1],))
    log_scale = self.param("log_scale", nn.initializers.constant(1.0), ())
    scale = jax.lax.rsqrt(jnp.mean(jnp.square(x - bias), -1, keepdims=True))
    return x * scale * jnp.exp(log_scale)


class Bypass(nn.Module):
  """src_orig + (src - src_orig) * bypass_scale (learnt per channel)."""

  @nn.compact
  def __call__(self, orig, x):
    scale = self.param("bypass_scale", nn.initializers.constant(0.5), (x.shape[-1],))
    return orig + (x - orig) * scale


class Conv2dSubsampling(nn.Module):
  """fbank [b, T, F] -> [b, (T-7)//2, out_channels]: three convolutions (time stride 2),
  a ConvNeXt block and a linear projection, BiasNorm'ed."""
  out_channels: int
  layer1_channels: int = 8
  layer2_channels: int = 32
  layer3_channels: int = 128

  @nn.compact
  def __call__(self, x):
    x = x[..., None]
    x = swoosh_r(nn.Conv(self.layer1_channels, (3, 3), padding=((0, 0), (1, 1)), name="conv_0")(x))
    x = swoosh_r(nn.Conv(self.layer2_channels, (3, 3), (2, 2), "VALID", name="conv_4")(x))
    x = swoosh_r(nn.Conv(self.layer3_channels, (3, 3), (1, 2), "VALID", name="conv_7")(x))
    c = self.layer3_channels
    y = nn.Conv(c, (7, 7), padding=((3, 3), (3, 3)), feature_group_count=c,
                name="convnext/depthwise_conv")(x)
    y = swoosh_l(nn.Conv(3 * c, (1, 1), name="convnext/pointwise_conv1")(y))
    x = x + nn.Conv(c, (1, 1), name="convnext/pointwise_conv2")(y)
    b, t, f, c = x.shape
    x = jnp.transpose(x, (0, 1, 3, 2)).reshape(b, t, c * f)  # icefall flattens (c, f)
    return BiasNorm(name="out_norm")(nn.Dense(self.out_channels, name="out")(x))


def rel_pos_emb(t: int, dim: int) -> jnp.ndarray:
  """CompactRelPositionalEncoding for relative offsets -(t-1)..(t-1): [2t-1, dim]."""
  x = np.arange(-(t - 1), t, dtype=np.float32)[:, None]
  freqs = 1 + np.arange(dim // 2, dtype=np.float32)
  c = dim ** 0.5
  xc = c * np.sign(x) * (np.log(np.abs(x) + c) - math.log(c))
  atan = np.arctan(xc / (dim / (2.0 * math.pi)))
  pe = np.zeros((2 * t - 1, dim), np.float32)
  pe[:, 0::2] = np.cos(atan * freqs)
  pe[:, 1::2] = np.sin(atan * freqs)
  pe[:, -1] = 1.0
  return jnp.asarray(pe)


class RelPositionMultiheadAttentionWeights(nn.Module):
  """Attention weights [h, b, t, t] from queries, keys and a per-head projection of
  the relative positional encoding; padded keys get -1000 before the softmax."""
  num_heads: int
  query_head_dim: int
  pos_head_dim: int

  @nn.compact
  def __call__(self, x, pos_emb, pad):
    b, t, _ = x.shape
    h, dq, dp = self.num_heads, self.query_head_dim, self.pos_head_dim
    proj = nn.Dense((2 * dq + dp) * h, name="in_proj")(x)
    q = proj[..., :h * dq].reshape(b, t, h, dq)
    k = proj[..., h * dq:2 * h * dq].reshape(b, t, h, dq)
    p = proj[..., 2 * h * dq:].reshape(b, t, h, dp)
    scores = jnp.einsum("bihd,bjhd->hbij", q, k)
    pe = nn.Dense(h * dp, use_bias=False, name="linear_pos")(pos_emb).reshape(2 * t - 1, h, dp)
    full = jnp.einsum("bihd,khd->hbik", p, pe)
    # icefall's as_strided: score[i, j] reads offset column (t - 1) - i + j.
    idx = (t - 1) - jnp.arange(t)[:, None] + jnp.arange(t)[None, :]
    scores = scores + jnp.take_along_axis(full, jnp.broadcast_to(idx, full.shape[:2] + (t, t)), -1)
    scores = jnp.where(pad[None, :, None, :], -1000.0, scores)
    return jax.nn.softmax(scores, -1)


class SelfAttention(nn.Module):
  num_heads: int
  value_head_dim: int

  @nn.compact
  def __call__(self, x, w):
    b, t, c = x.shape
    v = nn.Dense(self.num_heads * self.value_head_dim, name="in_proj")(x).reshape(b, t, self.num_heads, -1)
    o = jnp.einsum("hbij,bjhd->bihd", w, v).reshape(b, t, -1)
    return nn.Dense(c, name="out_proj")(o)


class FeedforwardModule(nn.Module):
  hidden: int

  @nn.compact
  def __call__(self, x):
    return nn.Dense(x.shape[-1], name="out_proj")(swoosh_l(nn.Dense(self.hidden, name="in_proj")(x)))


class NonlinAttention(nn.Module):
  """tanh-gated values mixed by the first head's attention weights, then gated again."""
  hidden: int

  @nn.compact
  def __call__(self, x, w):
    s, v, y = jnp.split(nn.Dense(3 * self.hidden, name="in_proj")(x), 3, -1)
    v = v * jnp.tanh(s)
    v = jnp.einsum("bij,bjd->bid", w[0], v) * y
    return nn.Dense(x.shape[-1], name="out_proj")(v)


class ConvolutionModule(nn.Module):
  kernel_size: int

  @nn.compact
  def __call__(self, x, pad):
    c = x.shape[-1]
    v, s = jnp.split(nn.Dense(2 * c, name="in_proj")(x), 2, -1)
    v = jnp.where(pad[..., None], 0.0, v * jax.nn.sigmoid(s))
    k = self.kernel_size
    v = nn.Conv(c, (k,), padding=((k // 2, k // 2),), feature_group_count=c, name="depthwise_conv")(v)
    return nn.Dense(c, name="out_proj")(swoosh_r(v))


class ZipformerEncoderLayer(nn.Module):
  num_heads: int
  query_head_dim: int
  pos_head_dim: int
  value_head_dim: int
  feedforward_dim: int
  cnn_module_kernel: int

  @nn.compact
  def __call__(self, src, pos_emb, pad):
    c = src.shape[-1]
    # Declared by icefall's layer but never read in its forward; kept so checkpoints map 1:1.
    self.param("bypass_scale", nn.initializers.constant(0.5), (c,))
    orig = src
    w = RelPositionMultiheadAttentionWeights(self.num_heads, self.query_head_dim,
                                             self.pos_head_dim, name="self_attn_weights")(src, pos_emb, pad)
    src = src + FeedforwardModule(self.feedforward_dim * 3 // 4, name="feed_forward1")(src)
    src = src + NonlinAttention(3 * c // 4, name="nonlin_attention")(src, w)
    src = src + SelfAttention(self.num_heads, self.value_head_dim, name="self_attn1")(src, w)
    src = src + ConvolutionModule(self.cnn_module_kernel, name="conv_module1")(src, pad)
    src = src + FeedforwardModule(self.feedforward_dim, name="feed_forward2")(src)
    src = Bypass(name="bypass_mid")(orig, src)
    src = src + SelfAttention(self.num_heads, self.value_head_dim, name="self_attn2")(src, w)
    src = src + ConvolutionModule(self.cnn_module_kernel, name="conv_module2")(src, pad)
    src = src + FeedforwardModule(self.feedforward_dim * 5 // 4, name="feed_forward3")(src)
    src = BiasNorm(name="norm")(src)
    return Bypass(name="bypass")(orig, src)


class ZipformerEncoder(nn.Module):
  num_layers: int
  pos_dim: int
  layer: dict

  @nn.compact
  def __call__(self, x, pad):
    pos_emb = rel_pos_emb(x.shape[1], self.pos_dim)
    for i in range(self.num_layers):
      x = ZipformerEncoderLayer(**self.layer, name=f"layers_{i}")(x, pos_emb, pad)
    return x


def simple_downsample(x, bias, ds):
  """Weighted sum (softmax(bias)) of each ds frames; the last frame repeats to pad."""
  b, t, c = x.shape
  n = -(-t // ds)
  x = jnp.concatenate([x, jnp.repeat(x[:, -1:], n * ds - t, 1)], 1).reshape(b, n, ds, c)
  return jnp.einsum("bnkc,k->bnc", x, jax.nn.softmax(bias))


class DownsampledZipformerEncoder(nn.Module):
  downsample: int
  encoder: dict

  @nn.compact
  def __call__(self, x, pad):
    ds = self.downsample
    bias = self.param("downsample/bias", nn.initializers.zeros, (ds,))
    y = simple_downsample(x, bias, ds)
    y = ZipformerEncoder(**self.encoder, name="encoder")(y, pad)
    y = jnp.repeat(y, ds, 1)[:, :x.shape[1]]
    return Bypass(name="out_combiner")(x, y)


def _tuple(v, n):
  v = (v,) if isinstance(v, int) else tuple(v)
  return v * n if len(v) == 1 else v


class Zipformer(nn.Module):
  """encoder_embed (Conv2dSubsampling) + icefall's Zipformer2 encoder.

  __call__(fbank [b, T, feature_dim], lengths [b]) -> ([b, T', max(encoder_dim)], lengths'),
  T' = ((T - 7) // 2 + 1) // 2: 4x downsampling (50 Hz after the embed, 25 Hz out)."""
  feature_dim: int = 80
  downsampling_factor: Sequence[int] = (1, 2, 4, 8, 4, 2)
  encoder_dim: Sequence[int] | int = (192, 256, 384, 512, 384, 256)
  num_encoder_layers: Sequence[int] | int = (2, 2, 3, 4, 3, 2)
  query_head_dim: Sequence[int] | int = 32
  pos_head_dim: Sequence[int] | int = 4
  value_head_dim: Sequence[int] | int = 12
  num_heads: Sequence[int] | int = (4, 4, 4, 8, 4, 4)
  feedforward_dim: Sequence[int] | int = (512, 768, 1024, 1536, 1024, 768)
  cnn_module_kernel: Sequence[int] | int = (31, 31, 15, 15, 15, 31)
  pos_dim: int = 48
  output_downsampling_factor: int = 2

  @nn.compact
  def __call__(self, fbank, lengths):
    n = len(self.downsampling_factor)
    dims = _tuple(self.encoder_dim, n)
    x = Conv2dSubsampling(dims[0], name="encoder_embed")(fbank)
    lengths = (lengths - 7) // 2
    pad = jnp.arange(x.shape[1])[None, :] >= lengths[:, None]
    outputs = []
    for i, ds in enumerate(self.downsampling_factor):
      d = dims[i]
      x = x[..., :d] if d <= x.shape[-1] else jnp.pad(x, ((0, 0), (0, 0), (0, d - x.shape[-1])))
      layer = dict(num_heads=_tuple(self.num_heads, n)[i],
                   query_head_dim=_tuple(self.query_head_dim, n)[i],
                   pos_head_dim=_tuple(self.pos_head_dim, n)[i],
                   value_head_dim=_tuple(self.value_head_dim, n)[i],
                   feedforward_dim=_tuple(self.feedforward_dim, n)[i],
                   cnn_module_kernel=_tuple(self.cnn_module_kernel, n)[i])
      enc = dict(num_layers=_tuple(self.num_encoder_layers, n)[i], pos_dim=self.pos_dim, layer=layer)
      name = f"encoder/encoders_{i}"
      if ds == 1:
        x = ZipformerEncoder(**enc, name=name)(x, pad[:, ::ds])
      else:
        x = DownsampledZipformerEncoder(ds, enc, name=name)(x, pad[:, ::ds])
      outputs.append(x)
    # Each channel from the most recent stack wide enough to have it.
    pieces, cur = [outputs[-1]], dims[-1]
    for i in range(n - 2, -1, -1):
      if dims[i] > cur:
        pieces.append(outputs[i][..., cur:dims[i]])
        cur = dims[i]
    x = jnp.concatenate(pieces, -1)
    ods = self.output_downsampling_factor
    bias = self.param("encoder/downsample_output/bias", nn.initializers.zeros, (ods,))
    return simple_downsample(x, bias, ods), (lengths + 1) // 2


class CheckpointMismatch(ValueError):
  """A PyTorch state dict that does not fit the Flax tree (key and both shapes named)."""


def _flax_key(name: str) -> tuple[tuple[str, ...], str]:
  """icefall state-dict name -> (Flax path, leaf kind)."""
  parts = name.split(".")
  out = []
  for p in parts[:-1]:
    if p.isdigit():
      out[-1] = f"{out[-1]}_{p}"
    else:
      out.append(p)
  leaf = parts[-1]
  if leaf == "weight":
    leaf = "kernel"
  # Flax names a few modules 'a/b' (one key holding a slash); joining with '/' matches both.
  return tuple(out + [leaf]), leaf


def import_torch(state_dict: Mapping[str, np.ndarray], params: Mapping) -> dict:
  """Map an icefall / SPEAR state dict (``encoder_embed.*`` and ``encoder.*``) onto ``params``
  (a Flax tree for ``Zipformer``); returns the filled tree. Linear weights are transposed,
  convolution weights go OIHW -> HWIO (OIK -> KIO for the depthwise 1-D ones)."""
  tuples = {"/".join(k): k for k in traverse_util.flatten_dict(params)}
  flat = {"/".join(k): v for k, v in traverse_util.flatten_dict(params).items()}
  out = {}
  for name, value in state_dict.items():
    value = np.asarray(value)
    path, leaf = _flax_key(name)
    key = "/".join(path)
    if key not in flat:
      raise CheckpointMismatch(f"checkpoint key {name!r} has no Zipformer parameter "
                               f"(looked for {key!r})")
    if leaf == "kernel":
      value = value.T if value.ndim == 2 else np.transpose(value, tuple(range(2, value.ndim)) + (1, 0))
    want = tuple(flat[key].shape)
    if tuple(value.shape) != want:
      raise CheckpointMismatch(f"checkpoint key {name!r}: shape {tuple(np.asarray(state_dict[name]).shape)} "
                               f"(as {tuple(value.shape)} here), model parameter {key!r} wants {want}")
    out[key] = jnp.asarray(value, flat[key].dtype)
  missing = sorted(set(flat) - set(out))
  if missing:
    raise CheckpointMismatch(f"checkpoint lacks {len(missing)} Zipformer parameters, e.g. {missing[:3]}")
  return traverse_util.unflatten_dict({tuples[k]: v for k, v in out.items()})


# icefall egs/librispeech/ASR/zipformer (README and train.py defaults): the small / medium /
# large recipes' encoder fields; the shared defaults are the class defaults above.
# icefall's published counts (23.2M / 65.5M / 148.4M) are for the whole transducer
# (encoder + decoder + joiner); ``param_count`` gives the encoder's alone: 22.0M / 64.0M /
# 146.6M (equal to the reference modules' own count, tests/test_zipformer.py).
PRESETS = {
    "small": dict(num_encoder_layers=(2, 2, 2, 2, 2, 2), feedforward_dim=(512, 768, 768, 768, 768, 768),
                  encoder_dim=(192, 256, 256, 256, 256, 256)),
    "medium": dict(),
    "large": dict(num_encoder_layers=(2, 2, 4, 5, 4, 2), feedforward_dim=(512, 768, 1536, 2048, 1536, 768),
                  encoder_dim=(192, 256, 512, 768, 512, 256)),
}


def param_count(**fields) -> int:
  """Parameters of ``Zipformer(**fields)``, from shapes only (jax.eval_shape)."""
  m = Zipformer(**fields)
  shapes = jax.eval_shape(m.init, jax.random.PRNGKey(0), jnp.zeros((1, 100, m.feature_dim)), jnp.array([100]))
  return sum(int(np.prod(a.shape)) for a in jax.tree_util.tree_leaves(shapes))
