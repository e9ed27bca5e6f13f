"""Zipformer (Yao et al., 2023, "Zipformer: A faster and better encoder for automatic speech
recognition"; icefall's ``zipformer.py``): the audio tower of CLSP (SPEAR-XLarge).

Layout [batch, time, channels] throughout (icefall uses [time, batch, channels]). Parameter
names follow icefall's state-dict names (``encoder_embed.conv.0.weight`` ->
``encoder_embed/conv_0/kernel``) so ``import_torch`` is a mechanical mapping, and
``export_torch`` its inverse.

Inference-time identities left out on purpose: Balancer, Whiten, ScaleGrad and
penalize_abs_values_gt change only gradients (their forward is the identity); dropout,
layer/sequence skipping, const-attention, pos-emb skipping and feature masks
(``encoder_unmasked_dim``) are training-only regularisers whose inference value is 1 (or no
skip). Training here therefore runs the plain architecture without those regularisers, and
``deterministic`` changes nothing.

Initialisation is icefall's, because ScaledAdam (CLSP's optimiser) scales each update by
its parameter's RMS: a plain ``torch.nn.Linear`` / ``Conv`` draws kernel and bias from
U(+-1/sqrt(fan_in)); icefall's ``ScaledLinear(initial_scale=s)`` scales that kernel by s and
draws its bias from U(+-0.1 s) (s = 0.05 on the attention, non-linear-attention and
convolution outputs, 0.1 on the feed-forward outputs, query_head_dim**-0.25 on the
attention-weight projection, 0.01 on the subsampling ConvNeXt's last pointwise conv).

As a jaxclap audio tower (``Zipformer.__call__(spec, frames)``): the input is the Kaldi
fbank SPEAR and icefall compute (``features_config``), the output is the last stack's
frames mean-pooled over the clip's real output frames, as CLSP pools SPEAR ("frame-level
representations ... aggregated via mean pooling over time", CLSP section 3.2), plus the
frame sequence [b, T', max(encoder_dim)]. ``remat`` (``model.remat``) recomputes each
encoder layer under ``transformer.remat_block``'s policy. The stacks are not scanned: they
hold 1-4 layers of differing widths each, so a scan would save little compile time.

Sharding: parameters carry logical names (``embed`` on the residual stream's channels,
``mlp`` on the modules' inner widths and fused projections), each layer's output is
constrained to (batch, length, embed); the subsampling convolutions are small and stay
replicated.
"""

from __future__ import annotations

import math
import re
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from jaxclap.models import convert, towers
from jaxclap.models.convert import CheckpointMismatch
from jaxclap.models.transformer import logical, remat_block

Dtype = Any


def swoosh_l(x):
  return jnp.logaddexp(0.0, x - 4.0) - 0.08 * x - 0.035


def swoosh_r(x):
  return jnp.logaddexp(0.0, x - 1.0) - 0.08 * x - 0.313261687


def _uniform(bound: float):
  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)
  return init


def _inits(fan_in: int, scale: float | None, axes: tuple):
  """(kernel_init, bias_init): torch's default (scale None) or icefall's ScaledLinear /
  ScaledConv2d with ``initial_scale=scale`` (module docstring), with logical names."""
  s = 1.0 if scale is None else scale
  bound = 1.0 / math.sqrt(fan_in) if scale is None else 0.1 * scale
  # U(+-s/sqrt(fan_in)) has variance s^2 / (3 fan_in).
  kernel = nn.initializers.variance_scaling(s * s / 3.0, "fan_in", "uniform")
  return logical(kernel, *axes), logical(_uniform(bound), axes[-1])


def _dense(x, features: int, name: str, axes: tuple, dtype: Dtype, scale: float | None = None,
           use_bias: bool = True):
  k, b = _inits(x.shape[-1], scale, axes)
  return nn.Dense(features, use_bias=use_bias, dtype=dtype, name=name, kernel_init=k,
                  bias_init=b)(x)


def _conv(x, features: int, kernel: tuple, name: str, axes: tuple, dtype: Dtype, strides=1,
          padding: Any = "VALID", groups: int = 1, scale: float | None = None):
  k, b = _inits(int(np.prod(kernel)) * x.shape[-1] // groups, scale, axes)
  return nn.Conv(features, kernel, strides, padding, feature_group_count=groups, dtype=dtype,
                 name=name, kernel_init=k, bias_init=b)(x)


class BiasNorm(nn.Module):
  """x * rms(x - bias)^-1 * exp(log_scale): LayerNorm without mean removal or per-channel
  scale, so the module cannot zero a channel out. In float32 whatever the compute dtype."""
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    bias = self.param("bias", logical(nn.initializers.normal(1e-4), "embed"), (x.shape[-1],))
    log_scale = self.param("log_scale", logical(nn.initializers.constant(1.0)), ())
    x32 = x.astype(jnp.float32)
    scale = jax.lax.rsqrt(jnp.mean(jnp.square(x32 - bias), -1, keepdims=True))
    return (x32 * scale * jnp.exp(log_scale)).astype(self.dtype)


class Bypass(nn.Module):
  """src_orig + (src - src_orig) * bypass_scale (learnt per channel)."""

  @nn.compact
  def __call__(self, orig, x):
    scale = self.param("bypass_scale", logical(nn.initializers.constant(0.5), "embed"),
                       (x.shape[-1],))
    return orig + (x - orig) * scale.astype(x.dtype)


class DepthwiseConv2d(nn.Module):
  """A k x k per-channel convolution, "same" zero padding: ``nn.Conv(c, (k, k),
  feature_group_count=c)``'s parameters (kernel [k, k, 1, c], bias [c]) and result,
  computed as k*k shifted multiply-adds. XLA:CPU runs the grouped convolution naively:
  at [8, 146, 31, 128] (the runlocal subsampling) its forward took 1.07 s and its
  gradient 15.3 s against 0.08 s and 2.5 s for the shifted sums (2 AVX-512 cores, load
  13); on an accelerator either is a rounding error beside the encoder."""
  kernel_size: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    k, c = self.kernel_size, x.shape[-1]
    kernel_init, bias_init = _inits(k * k, None, (None, None, None, None))
    w = self.param("kernel", kernel_init, (k, k, 1, c)).astype(self.dtype)
    b = self.param("bias", bias_init, (c,)).astype(self.dtype)
    h, wd, p = x.shape[1], x.shape[2], k // 2
    xp = jnp.pad(x.astype(self.dtype), ((0, 0), (p, p), (p, p), (0, 0)))
    out = b
    for i in range(k):
      for j in range(k):
        out = out + xp[:, i:i + h, j:j + wd] * w[i, j, 0]
    return out


class Conv2dSubsampling(nn.Module):
  """fbank [b, T, F] -> [b, (T-7)//2, out_channels]: three convolutions (time stride 2),
  a ConvNeXt block and a linear projection, BiasNorm'ed."""
  out_channels: int
  layer1_channels: int = 8
  layer2_channels: int = 32
  layer3_channels: int = 128
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    d = self.dtype
    rep = (None, None, None, None)   # small convolutions: replicated
    x = x[..., None]
    x = swoosh_r(_conv(x, self.layer1_channels, (3, 3), "conv_0", rep, d, padding=((0, 0), (1, 1))))
    x = swoosh_r(_conv(x, self.layer2_channels, (3, 3), "conv_4", rep, d, strides=(2, 2)))
    x = swoosh_r(_conv(x, self.layer3_channels, (3, 3), "conv_7", rep, d, strides=(1, 2)))
    c = self.layer3_channels
    y = DepthwiseConv2d(7, d, name="convnext/depthwise_conv")(x)
    y = swoosh_l(_conv(y, 3 * c, (1, 1), "convnext/pointwise_conv1", rep, d))
    x = x + _conv(y, c, (1, 1), "convnext/pointwise_conv2", rep, d, scale=0.01)
    b, t, f, c = x.shape
    x = jnp.transpose(x, (0, 1, 3, 2)).reshape(b, t, c * f)  # icefall flattens (c, f)
    return BiasNorm(d, name="out_norm")(_dense(x, self.out_channels, "out", (None, "embed"), d))


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
  """Attention weights [h, b, t, t] (float32) from queries, keys and a per-head projection
  of the relative positional encoding; padded keys get -1000 before the softmax."""
  num_heads: int
  query_head_dim: int
  pos_head_dim: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, pos_emb, pad):
    b, t, _ = x.shape
    h, dq, dp = self.num_heads, self.query_head_dim, self.pos_head_dim
    proj = _dense(x, (2 * dq + dp) * h, "in_proj", ("embed", "mlp"), self.dtype, scale=dq ** -0.25)
    q = proj[..., :h * dq].reshape(b, t, h, dq)
    k = proj[..., h * dq:2 * h * dq].reshape(b, t, h, dq)
    p = proj[..., 2 * h * dq:].reshape(b, t, h, dp)
    f32 = jnp.float32
    scores = jnp.einsum("bihd,bjhd->hbij", q, k, preferred_element_type=f32)
    pe = _dense(pos_emb, h * dp, "linear_pos", (None, "mlp"), self.dtype, scale=0.05,
                use_bias=False).reshape(2 * t - 1, h, dp)
    full = jnp.einsum("bihd,khd->hbik", p, pe, preferred_element_type=f32)
    # icefall's as_strided: score[i, j] reads offset column (t - 1) - i + j. Transformer-XL's
    # pad-and-reshape does it with reshapes only (a gather's gradient, a scatter, compiles
    # and runs slowly on XLA:CPU).
    shifted = jnp.pad(full, ((0, 0), (0, 0), (0, 0), (1, 0))).reshape(h, b, 2 * t, t)
    scores = scores + shifted[:, :, 1:].reshape(h, b, t, 2 * t - 1)[..., :t]
    scores = jnp.where(pad[None, :, None, :], -1000.0, scores)
    return jax.nn.softmax(scores, -1)


class SelfAttention(nn.Module):
  num_heads: int
  value_head_dim: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, w):
    b, t, c = x.shape
    v = _dense(x, self.num_heads * self.value_head_dim, "in_proj", ("embed", "mlp"), self.dtype)
    v = v.reshape(b, t, self.num_heads, -1)
    o = jnp.einsum("hbij,bjhd->bihd", w.astype(v.dtype), v).reshape(b, t, -1)
    return _dense(o, c, "out_proj", ("mlp", "embed"), self.dtype, scale=0.05)


class FeedforwardModule(nn.Module):
  hidden: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    h = swoosh_l(_dense(x, self.hidden, "in_proj", ("embed", "mlp"), self.dtype))
    h = nn.with_logical_constraint(h, ("batch", "length", "mlp"))
    return _dense(h, x.shape[-1], "out_proj", ("mlp", "embed"), self.dtype, scale=0.1)


class NonlinAttention(nn.Module):
  """tanh-gated values mixed by the first head's attention weights, then gated again."""
  hidden: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, w):
    s, v, y = jnp.split(_dense(x, 3 * self.hidden, "in_proj", ("embed", "mlp"), self.dtype), 3, -1)
    v = v * jnp.tanh(s)
    v = jnp.einsum("bij,bjd->bid", w[0].astype(v.dtype), v) * y
    return _dense(v, x.shape[-1], "out_proj", ("mlp", "embed"), self.dtype, scale=0.05)


class ConvolutionModule(nn.Module):
  kernel_size: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, pad):
    c = x.shape[-1]
    v, s = jnp.split(_dense(x, 2 * c, "in_proj", ("embed", "mlp"), self.dtype), 2, -1)
    v = jnp.where(pad[..., None], 0.0, v * jax.nn.sigmoid(s)).astype(v.dtype)
    k = self.kernel_size
    v = _conv(v, c, (k,), "depthwise_conv", (None, None, "embed"), self.dtype,
              padding=((k // 2, k // 2),), groups=c)
    return _dense(swoosh_r(v), c, "out_proj", ("mlp", "embed"), self.dtype, scale=0.05)


class ZipformerEncoderLayer(nn.Module):
  num_heads: int
  query_head_dim: int
  pos_head_dim: int
  value_head_dim: int
  feedforward_dim: int
  cnn_module_kernel: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, src, pos_emb, pad):
    c, d = src.shape[-1], self.dtype
    # Declared by icefall's layer but never read in its forward; kept so checkpoints map 1:1.
    self.param("bypass_scale", logical(nn.initializers.constant(0.5), "embed"), (c,))
    orig = src
    w = RelPositionMultiheadAttentionWeights(self.num_heads, self.query_head_dim,
                                             self.pos_head_dim, d, name="self_attn_weights")(src, pos_emb, pad)
    src = src + FeedforwardModule(self.feedforward_dim * 3 // 4, d, name="feed_forward1")(src)
    src = src + NonlinAttention(3 * c // 4, d, name="nonlin_attention")(src, w)
    src = src + SelfAttention(self.num_heads, self.value_head_dim, d, name="self_attn1")(src, w)
    src = src + ConvolutionModule(self.cnn_module_kernel, d, name="conv_module1")(src, pad)
    src = src + FeedforwardModule(self.feedforward_dim, d, name="feed_forward2")(src)
    src = Bypass(name="bypass_mid")(orig, src)
    src = src + SelfAttention(self.num_heads, self.value_head_dim, d, name="self_attn2")(src, w)
    src = src + ConvolutionModule(self.cnn_module_kernel, d, name="conv_module2")(src, pad)
    src = src + FeedforwardModule(self.feedforward_dim * 5 // 4, d, name="feed_forward3")(src)
    src = BiasNorm(d, name="norm")(src)
    out = Bypass(name="bypass")(orig, src)
    return nn.with_logical_constraint(out, ("batch", "length", "embed"))


class ZipformerEncoder(nn.Module):
  num_layers: int
  pos_dim: int
  layer: dict
  remat: bool | str = False
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, pad):
    pos_emb = rel_pos_emb(x.shape[1], self.pos_dim)
    block = remat_block(ZipformerEncoderLayer, self.remat, static_argnums=())
    for i in range(self.num_layers):
      x = block(**self.layer, dtype=self.dtype, name=f"layers_{i}")(x, pos_emb, pad)
    return x


def simple_downsample(x, bias, ds):
  """Weighted sum (softmax(bias)) of each ds frames; the last frame repeats to pad."""
  b, t, c = x.shape
  n = -(-t // ds)
  x = jnp.concatenate([x, jnp.repeat(x[:, -1:], n * ds - t, 1)], 1).reshape(b, n, ds, c)
  return jnp.einsum("bnkc,k->bnc", x, jax.nn.softmax(bias).astype(x.dtype))


class DownsampledZipformerEncoder(nn.Module):
  downsample: int
  encoder: dict
  remat: bool | str = False
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, pad):
    ds = self.downsample
    bias = self.param("downsample/bias", logical(nn.initializers.zeros, None), (ds,))
    y = simple_downsample(x, bias, ds)
    y = ZipformerEncoder(**self.encoder, remat=self.remat, dtype=self.dtype, name="encoder")(y, pad)
    y = jnp.repeat(y, ds, 1)[:, :x.shape[1]]
    return Bypass(name="out_combiner")(x, y)


def _tuple(v, n):
  v = (v,) if isinstance(v, int) else tuple(v)
  return v * n if len(v) == 1 else v


MIN_FRAMES = 9   # Conv2dSubsampling's (T - 7) // 2 must leave one frame


def output_frames(frames, output_downsampling_factor: int):
  """Real output frames of a clip with ``frames`` real input frames (int or array)."""
  ods = int(output_downsampling_factor)
  return ((frames - 7) // 2 + ods - 1) // ods


class Zipformer(nn.Module):
  """encoder_embed (Conv2dSubsampling) + icefall's Zipformer2 encoder, as an audio tower.

  __call__(spec [b, T, F] fbank, frames [b] real frames or None, deterministic) ->
  (mean over the real output frames [b, max(encoder_dim)], frames [b, T', max(encoder_dim)]),
  T' = ceil(((T - 7) // 2) / output_downsampling_factor): 50 Hz after the embed at a 10 ms
  fbank shift, 25 Hz out with icefall's factor 2, 50 Hz with SPEAR's 1. Positions past a
  clip's real frames are padding: masked in attention and convolution and left out of the
  pooling. The number of fbank bins F is read off the input (``features.n_mels``)."""
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
  embed_channels: Sequence[int] = (8, 32, 128)   # Conv2dSubsampling's layer1/2/3_channels
  remat: bool | str = False
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, spec, frames=None, deterministic: bool = True):
    b, t, _ = spec.shape
    if t < MIN_FRAMES:
      raise ValueError(f"Zipformer needs at least {MIN_FRAMES} input frames, got {t}")
    frames = jnp.full((b,), t, jnp.int32) if frames is None else jnp.minimum(frames, t)
    n = len(self.downsampling_factor)
    dims = _tuple(self.encoder_dim, n)
    x = Conv2dSubsampling(dims[0], *self.embed_channels, dtype=self.dtype,
                          name="encoder_embed")(spec.astype(self.dtype))
    lengths = (frames - 7) // 2
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
        x = ZipformerEncoder(**enc, remat=self.remat, dtype=self.dtype, name=name)(x, pad[:, ::ds])
      else:
        x = DownsampledZipformerEncoder(ds, enc, self.remat, self.dtype, name=name)(x, pad[:, ::ds])
      outputs.append(x)
    # Each channel from the most recent stack wide enough to have it.
    pieces, cur = [outputs[-1]], dims[-1]
    for i in range(n - 2, -1, -1):
      if dims[i] > cur:
        pieces.append(outputs[i][..., cur:dims[i]])
        cur = dims[i]
    x = jnp.concatenate(pieces, -1)
    ods = self.output_downsampling_factor
    bias = self.param("encoder/downsample_output/bias", logical(nn.initializers.zeros, None), (ods,))
    seq = nn.with_logical_constraint(simple_downsample(x, bias, ods), ("batch", "length", "embed"))
    real = jnp.maximum(output_frames(frames, ods), 1)   # a clip shorter than one output frame keeps its first
    valid = (jnp.arange(seq.shape[1])[None, :] < real[:, None]).astype(jnp.float32)[..., None]
    pooled = jnp.sum(seq.astype(jnp.float32) * valid, 1) / jnp.sum(valid, 1)
    return pooled, seq


# --------------------------------------------------------------------------- import / export


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


def _torch_key(path: str) -> str:
  """Flax path 'encoder/encoders_0/.../kernel' -> icefall's 'encoder.encoders.0....weight'
  (``_flax_key`` backwards: a '_<digits>' suffix is a ModuleList / Sequential index)."""
  parts = [re.sub(r"_(\d+)$", r".\1", p) for p in path.split("/")]
  if parts[-1] == "kernel":
    parts[-1] = "weight"
  return ".".join(parts)


def _kernel_to_flax(a: np.ndarray) -> np.ndarray:
  """Linear [out, in] -> [in, out]; conv [O, I, *k] -> [*k, I, O]."""
  return a.T if a.ndim == 2 else np.transpose(a, tuple(range(2, a.ndim)) + (1, 0))


def _kernel_to_torch(a: np.ndarray) -> np.ndarray:
  if a.ndim == 2:
    return a.T
  return np.transpose(a, np.argsort(tuple(range(2, a.ndim)) + (1, 0)))


MARKER = "encoder_embed.conv.0.weight"


def _params(target: Any) -> Mapping:
  target = nn.meta.unbox(target)
  if "params" in target and "encoder_embed" not in target:
    target = target["params"]
  return target


def import_torch(state_dict: Mapping[str, np.ndarray], target: Any, *, where: str = "checkpoint",
                 prefix: str | None = None) -> dict:
  """An icefall / SPEAR state dict -> ``Zipformer`` params shaped like ``target`` (the
  tower's params or ``{"params": ...}``, arrays or ShapeDtypeStructs); numpy float32.

  Keys may carry a prefix before ``encoder_embed.conv.0.weight`` (``prefix=`` picks one);
  under it, ``encoder_embed.*`` and ``encoder.*`` are the tower and every one of them must
  map, while the rest of a whole model (an ASR decoder and joiner, SPEAR's pre-training
  heads) is left alone. Linear weights are transposed, convolution weights go OIHW -> HWIO
  (OIK -> KIO for the depthwise 1-D ones). Raises ``CheckpointMismatch`` naming the key
  and both shapes."""
  params = _params(target)
  prefix = convert._find_prefix(state_dict, MARKER, prefix, where)
  tuples = {"/".join(k): k for k in traverse_util.flatten_dict(params)}
  flat = {"/".join(k): v for k, v in traverse_util.flatten_dict(params).items()}
  out = {}
  for name, value in state_dict.items():
    rel = name[len(prefix):]
    if not name.startswith(prefix) or not rel.startswith(("encoder_embed.", "encoder.")):
      continue
    value = np.asarray(value)
    path, leaf = _flax_key(rel)
    key = "/".join(path)
    if key not in flat:
      raise CheckpointMismatch(f"{where}: checkpoint key {name!r} has no Zipformer parameter "
                               f"(looked for {key!r})")
    if leaf == "kernel":
      value = _kernel_to_flax(value)
    want = tuple(flat[key].shape)
    if tuple(value.shape) != want:
      raise CheckpointMismatch(f"{where}: checkpoint key {name!r}: shape "
                               f"{tuple(np.asarray(state_dict[name]).shape)} (as "
                               f"{tuple(value.shape)} here), model parameter {key!r} wants {want}")
    out[key] = np.asarray(value, np.float32)
  missing = sorted(set(flat) - set(out))
  if missing:
    raise CheckpointMismatch(f"{where}: checkpoint lacks {len(missing)} Zipformer parameters, "
                             f"e.g. {missing[:3]}")
  return traverse_util.unflatten_dict({tuples[k]: v for k, v in out.items()})


def export_torch(params: Any, *, prefix: str = "") -> dict[str, np.ndarray]:
  """``Zipformer`` params -> icefall's state dict (``encoder_embed.*``, ``encoder.*``;
  float32 numpy), the inverse of ``import_torch``."""
  flat = traverse_util.flatten_dict(_params(params))
  out = {}
  for path, value in flat.items():
    key = "/".join(path)
    value = np.asarray(value, np.float32)
    if path[-1] == "kernel":
      value = _kernel_to_torch(value)
    out[prefix + _torch_key(key)] = np.ascontiguousarray(value)
  return out


# ------------------------------------------------------------------------------ front end

# SPEAR's input (and icefall's): lhotse's Kaldi-compatible Fbank computed on the fly
# (``--on-the-fly-feats 1`` in the SPEAR / CLSP recipes), FbankConfig's defaults but for the
# bin count: 25 ms povey window every 10 ms, pre-emphasis 0.97, per-frame DC removal, FFT
# padded to a power of two, dither 0, snip_edges False (frames centred on multiples of the
# shift), bins from 20 Hz to Nyquist - 400 Hz; 128 bins as SPEAR's released config
# (``SpearConfig.num_mel_bins=128``; icefall's LibriSpeech ASR recipes use 80). No
# normalisation: Zipformer reads the raw log energies of [-1, 1] waveforms.
SPEAR_MEL_BINS = 128


def features_config(n_mels: int = SPEAR_MEL_BINS) -> dict:
  """``config.features`` for SPEAR's fbank (``two_towers.spectrogram``'s ``kind="fbank"``).

  One difference remains: lhotse pads a batch's fbank with log(1e-10) past a clip's end,
  ``two_towers.spectrogram`` with zeros; those frames are padding (masked) either way,
  but the subsampling convolution reads up to 7 of them at a clip's last real frames."""
  return dict(kind="fbank", sample_rate=16000, target_rate=16000, frame_length_ms=25.0,
              frame_shift_ms=10.0, n_mels=int(n_mels), window_type="povey", low_freq=20.0,
              high_freq=-400.0, preemph_coeff=0.97, remove_dc_offset=True,
              round_to_power_of_two=True, snip_edges=False, subtract_mean=False, max_frames=None,
              norm_mean=0.0, norm_std=1.0, frames_multiple=1)


# ---------------------------------------------------------------------------------- presets

# icefall egs/librispeech/ASR/zipformer (README and train.py defaults): the small / medium /
# large recipes' encoder fields; the shared defaults are the class defaults above.
# icefall's published counts (23.2M / 65.5M / 148.4M) are for the whole transducer
# (encoder + decoder + joiner); ``param_count`` gives the encoder's alone: 22.0M / 64.0M /
# 146.6M (equal to the reference modules' own count, tests/test_zipformer.py).
#
# spear-xlarge: SPEAR-XLarge (Yang et al. 2025, "SPEAR: A unified SSL framework for learning
# speech and audio representations"; 600M in its abstract, 599M in CLSP's section 4.1), the
# release's Zipformer flags as its authors' icefall scripts pass them (SPEAR inference and
# the CLSP fine-tuning recipe): seven stacks at 1280 channels, 1,2,3,4,1,1,1 layers
# (13 in all), feed-forward 3840, 8 heads, output_downsampling_factor 1 (50 Hz), with
# 128 fbank bins. param_count(feature_dim=128) gives 597.0M (tests/test_zipformer.py).
PRESETS = {
    "small": dict(num_encoder_layers=(2, 2, 2, 2, 2, 2), feedforward_dim=(512, 768, 768, 768, 768, 768),
                  encoder_dim=(192, 256, 256, 256, 256, 256)),
    "medium": dict(),
    "large": dict(num_encoder_layers=(2, 2, 4, 5, 4, 2), feedforward_dim=(512, 768, 1536, 2048, 1536, 768),
                  encoder_dim=(192, 256, 512, 768, 512, 256)),
    "spear-xlarge": dict(downsampling_factor=(1, 2, 4, 8, 4, 2, 1), num_encoder_layers=(1, 2, 3, 4, 1, 1, 1),
                         encoder_dim=1280, feedforward_dim=3840, num_heads=8,
                         cnn_module_kernel=(31, 31, 15, 15, 15, 31, 31), output_downsampling_factor=1),
}


def param_count(feature_dim: int = 80, **fields) -> int:
  """Parameters of ``Zipformer(**fields)`` over ``feature_dim`` fbank bins, from shapes
  only (jax.eval_shape)."""
  m = Zipformer(**fields)
  shapes = jax.eval_shape(m.init, jax.random.PRNGKey(0), jnp.zeros((1, 100, feature_dim)), jnp.array([100]))
  return sum(int(np.prod(a.shape)) for a in jax.tree_util.tree_leaves(nn.meta.unbox(shapes)))


# ------------------------------------------------- the towers export (jaxclap.export)

TORCH_MODULE = "jaxclap.models.zipformer_torch"
TORCH_FIELDS = ("downsampling_factor", "encoder_dim", "num_encoder_layers", "query_head_dim",
                "pos_head_dim", "value_head_dim", "num_heads", "feedforward_dim",
                "cnn_module_kernel", "pos_dim", "output_downsampling_factor", "embed_channels")


def _export(config: Any, variables: Mapping, out: str) -> dict:
  """OUT/audio as ``jaxclap.models.zipformer_torch.ZipformerTorch`` (the k2-fsa reference
  modules, icefall's key names), called with the real frames and mean-pooled as here."""
  import os
  from jaxclap.models.zipformer_torch import ZipformerTorch
  tower = towers.module(config.model.audio)
  fields = {k: getattr(tower, k) for k in TORCH_FIELDS}
  convert.save_strict(ZipformerTorch(int(config.features.n_mels), **fields),
                      export_torch(variables), os.path.join(out, "audio"))
  return {"class": "ZipformerTorch", "module": TORCH_MODULE, "path": "audio",
          "inputs": "spec_frames", "pooling": "mean over real output frames"}


def _import_export(config: Any, folder: str, target: Mapping) -> dict:
  import os
  where = os.path.join(folder, "audio")
  return {"params": import_torch(convert.load_state_dict(where), target, prefix="", where=where)}


# -------------------------------------------------------------------------- registration

towers.register(towers.Tower(
    name="zipformer", side="audio", module=Zipformer, import_torch=import_torch,
    torch_class="ZipformerTorch",   # jaxclap.models.zipformer_torch's, over k2-fsa's modules
    export_torch=_export, import_export=_import_export,
    # "zipformer" is the demo-sized preset the config tables offer (icefall's small);
    # the published sizes are picked with model.audio.preset.
    presets={"zipformer": dict(name="zipformer", **PRESETS["small"]),
             **{k: dict(name="zipformer", **v) for k, v in PRESETS.items()}},
    # Four stacks (1, 2, 4, 2) of one 32-wide layer: the U-Net, bypasses and combine on a
    # CPU budget. The subsampling's 128-channel ConvNeXt alone would cost ~30 GFLOP per
    # step of 8 clips x 3 s (12 s on 2 loaded cores): 16 channels there.
    runlocal={"zipformer": dict(downsampling_factor=(1, 2, 4, 2), encoder_dim=32,
                                num_encoder_layers=1, num_heads=2, query_head_dim=8,
                                pos_head_dim=2, value_head_dim=8, feedforward_dim=64,
                                cnn_module_kernel=(15, 7, 7, 15), pos_dim=16,
                                embed_channels=(4, 8, 16))}))
