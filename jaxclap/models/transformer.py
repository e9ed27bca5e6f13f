"""The one transformer block every jaxclap tower is built from (ViT, BERT, decoder LLMs).

Towers differ by configuration, not by code: ``pre_norm`` picks ViT/LLM-style pre-LN or
BERT-style post-LN, ``activation`` the MLP nonlinearity. The decoder-LLM text towers
(Qwen3, Gemma3; ``jaxclap.models.decoder_lm``) switch on the options below, all off by
default so that BERT and ViT parameters and numerics stay what they were:

* ``norm``: ``"layer"`` (LayerNorm), ``"rms"`` (RMSNorm ``x * w``, Qwen/Llama) or
  ``"rms1p"`` (RMSNorm ``x * (1 + w)``, ``w`` initialised to 0, Gemma); ``post_norms``
  adds Gemma's norms on the attention and MLP outputs (four norms per block);
* ``num_kv_heads`` < ``num_heads``: grouped-query attention; ``head_dim`` may differ
  from ``width / num_heads`` (Gemma3-4B: 8 heads of 256 on a 2560-wide stream);
* ``qk_norm``: per-head RMSNorm of queries and keys (Qwen3, Gemma3);
* ``rope_theta`` / ``rope_scale``: rotary positions in HF's rotate-half layout; linear
  scaling divides the frequencies (Gemma3 4B+ global layers);
* ``query_scale`` (Gemma's ``query_pre_attn_scalar ** -0.5``), ``logit_softcap``
  (``cap * tanh(logits / cap)``, before the masks as HF applies it);
* ``causal`` and ``sliding_window``: query i sees key j iff ``0 <= i - j < window``
  (``|i - j| < window`` without ``causal``), on top of the key padding mask;
* ``attn_bias`` / ``mlp_bias`` off (LLMs have none); ``gated_mlp``:
  ``fc_out(act(gate(x)) * fc_in(x))``, SwiGLU with ``silu``, GeGLU with ``gelu_tanh``.

Every parameter carries logical axis names (``embed``, ``heads``, ``kv_heads``, ``kv``,
``mlp``) so FSDP / tensor sharding is a rules table in the config (``jaxclap.sharding``),
never model code. Key/value heads are named ``heads`` when there are as many as query
heads (BERT, ViT: unchanged) and ``kv_heads`` under grouped-query attention, where there
are fewer and a rules table may have to keep them whole.

Parameter names are chosen so PyTorch checkpoints map onto them one to one:
``attn/{query,key,value,out}``, ``attn/{query_norm,key_norm}``, ``attn_norm``,
``attn_post_norm``, ``mlp/{gate,fc_in,fc_out}``, ``mlp_norm``, ``mlp_post_norm``.
"""

from __future__ import annotations

import functools
import re
from typing import Any, Callable, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Dtype = Any

def gelu_erf(x):
  """Exact GELU (BERT's, timm ViT's). Written with ``erf`` as PyTorch does: XLA:CPU
  fuses it into one pass, where ``jax.nn.gelu``'s erfc form takes three (-3-7% step
  time in benchmarks/train_step.py)."""
  return x * (0.5 + 0.5 * jax.lax.erf(x * np.float32(1 / np.sqrt(2))).astype(x.dtype))


ACTIVATIONS: dict[str, Callable] = {
    "gelu": gelu_erf,
    "gelu_tanh": lambda x: nn.gelu(x, approximate=True),
    "relu": nn.relu,
    "silu": nn.silu,
}


def dense_init(std: float = 0.02):
  return nn.initializers.normal(stddev=std)


def logical(init, *names):
  return nn.with_logical_partitioning(init, names)


def layer_norm(name: str, eps: float, dtype: Dtype):
  return nn.LayerNorm(epsilon=eps, dtype=dtype, name=name,
                      scale_init=logical(nn.initializers.ones, "embed"),
                      bias_init=logical(nn.initializers.zeros, "embed"))


class RMSNorm(nn.Module):
  """RMSNorm over the last axis, in float32 whatever the compute dtype (as HF computes
  it). ``unit_offset`` scales by ``1 + w`` with ``w`` initialised to 0 (Gemma), else by
  ``w`` initialised to 1 (Qwen, Llama)."""
  epsilon: float = 1e-6
  unit_offset: bool = False
  dtype: Dtype = jnp.float32
  axis_name: str = "embed"

  @nn.compact
  def __call__(self, x):
    init = nn.initializers.zeros if self.unit_offset else nn.initializers.ones
    w = self.param("scale", logical(init, self.axis_name), (x.shape[-1],), jnp.float32)
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.epsilon)
    w = w.astype(jnp.float32)
    return (y * (1.0 + w if self.unit_offset else w)).astype(self.dtype)


NORMS = ("layer", "rms", "rms1p")


def make_norm(kind: str, name: str, eps: float, dtype: Dtype, axis_name: str = "embed"):
  """A ``NORMS`` kind of norm; ``axis_name`` is its scale's logical axis."""
  if kind == "layer":
    return layer_norm(name, eps, dtype)
  if kind in ("rms", "rms1p"):
    return RMSNorm(eps, kind == "rms1p", dtype, axis_name, name=name)
  raise ValueError(f"norm must be one of {NORMS}, got {kind!r}")


@functools.lru_cache(maxsize=None)
def rope_frequencies(head_dim: int, theta: float, scale: float = 1.0) -> np.ndarray:
  """[head_dim / 2] inverse frequencies; ``scale`` is HF's linear rope-scaling factor."""
  if head_dim % 2:
    raise ValueError(f"rotary positions need an even head_dim, got {head_dim}")
  inv = 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
  return (inv / scale).astype(np.float32)


def apply_rope(x, positions, inv_freq):
  """x: [b, t, h, d] rotated by ``positions`` [t] in HF's rotate-half layout (channel i
  pairs with i + d/2, not RoFormer's interleaved pairs). In float32 whatever the compute
  dtype: the angles of late positions need the mantissa."""
  ang = positions.astype(jnp.float32)[:, None] * inv_freq[None, :]      # [t, d/2]
  cos, sin = jnp.cos(ang)[None, :, None, :], jnp.sin(ang)[None, :, None, :]
  x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
  return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).astype(x.dtype)


def position_mask(t: int, causal: bool, window: int | None) -> np.ndarray | None:
  """[t, t] bool, True where query i may see key j; None when every pair may. A
  trace-time constant: it depends on shapes only."""
  if not causal and window is None:
    return None
  i, j = np.arange(t)[:, None], np.arange(t)[None, :]
  ok = np.ones((t, t), bool)
  if causal:
    ok &= j <= i
  if window is not None:
    ok &= (i - j < window) if causal else (np.abs(i - j) < window)
  return ok


class MultiHeadAttention(nn.Module):
  """Self-attention; the fields after ``dropout_rate`` are the decoder-LLM options of the
  module docstring."""
  num_heads: int
  head_dim: int
  dtype: Dtype = jnp.float32
  dropout_rate: float = 0.0
  num_kv_heads: int | None = None       # None: as many as num_heads
  use_bias: bool = True
  qk_norm: str | None = None            # a NORMS kind for per-head q/k norms, or None
  norm_eps: float = 1e-6
  rope_theta: float | None = None       # None: no rotary positions
  rope_scale: float = 1.0
  query_scale: float | None = None      # None: 1 / sqrt(head_dim)
  logit_softcap: float | None = None
  causal: bool = False
  sliding_window: int | None = None

  @nn.compact
  def __call__(self, x, mask=None, deterministic: bool = True, bias=None):
    """x: [b, t, d]; mask: [b, t] (1 = attend to this key) or None; bias: additive
    attention logits broadcastable to [b, heads, t, t] (relative positions, Swin's shift
    mask, a causal mask) or None."""
    b, t, d = x.shape
    kv_heads = self.num_kv_heads or self.num_heads
    if self.num_heads % kv_heads:
      raise ValueError(f"num_heads={self.num_heads} is not a multiple of num_kv_heads={kv_heads}")
    groups = self.num_heads // kv_heads
    kv_axis = "heads" if groups == 1 else "kv_heads"
    proj = lambda name, heads, axis: nn.DenseGeneral(
        (heads, self.head_dim), dtype=self.dtype, name=name, use_bias=self.use_bias,
        kernel_init=logical(dense_init(), "embed", axis, "kv"),
        bias_init=logical(nn.initializers.zeros, axis, "kv"))
    q = proj("query", self.num_heads, "heads")(x)
    k = proj("key", kv_heads, kv_axis)(x)
    v = proj("value", kv_heads, kv_axis)(x)
    if self.qk_norm:
      q = make_norm(self.qk_norm, "query_norm", self.norm_eps, self.dtype, "kv")(q)
      k = make_norm(self.qk_norm, "key_norm", self.norm_eps, self.dtype, "kv")(k)
    if self.rope_theta is not None:
      inv_freq = rope_frequencies(self.head_dim, float(self.rope_theta), float(self.rope_scale))
      q = apply_rope(q, jnp.arange(t), inv_freq)
      k = apply_rope(k, jnp.arange(t), inv_freq)
    # The 1 / sqrt(head_dim) scale on q [t, d] rather than the logits [t, t]: the same
    # product, one pass over the smaller array (HTS-AT's windows: d = 32, t = 64).
    scale = (1.0 / np.sqrt(self.head_dim) if self.query_scale is None
             else float(self.query_scale))
    q = q * jnp.asarray(scale, q.dtype)
    q = nn.with_logical_constraint(q, ("batch", "length", "heads", "kv"))
    allowed = None if mask is None else mask[:, None, None, :].astype(bool)
    pos = position_mask(t, self.causal, self.sliding_window)
    if pos is not None:
      allowed = pos[None, None] if allowed is None else allowed & pos[None, None]
    # Softmax in float32 whatever the compute dtype: logits overflow bf16's mantissa.
    if groups == 1:
      logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32)
    else:
      # Grouped-query: query head h reads key/value head h // groups (HF's repeat_kv),
      # without materialising the repeated keys and values.
      k = nn.with_logical_constraint(k, ("batch", "length", "kv_heads", "kv"))
      qg = q.reshape(b, t, kv_heads, groups, self.head_dim)
      logits = jnp.einsum("bqngd,bknd->bngqk", qg, k, preferred_element_type=jnp.float32)
      logits = logits.reshape(b, self.num_heads, t, t)
    if self.logit_softcap is not None:
      cap = np.float32(self.logit_softcap)
      logits = jnp.tanh(logits / cap) * cap
    if bias is not None:
      logits = logits + bias.astype(jnp.float32)
    if allowed is not None:
      logits = jnp.where(allowed, logits, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(logits, axis=-1)
    probs = nn.Dropout(self.dropout_rate)(probs, deterministic=deterministic)
    if groups == 1:
      out = jnp.einsum("bhqk,bkhd->bqhd", probs.astype(self.dtype), v)
    else:
      pg = probs.astype(self.dtype).reshape(b, kv_heads, groups, t, t)
      out = jnp.einsum("bngqk,bknd->bqngd", pg, v).reshape(b, t, self.num_heads, self.head_dim)
    return nn.DenseGeneral(
        d, axis=(-2, -1), dtype=self.dtype, name="out", use_bias=self.use_bias,
        kernel_init=logical(dense_init(), "heads", "kv", "embed"),
        bias_init=logical(nn.initializers.zeros, "embed"))(out)


class Mlp(nn.Module):
  """``fc_out(act(fc_in(x)))``, or gated ``fc_out(act(gate(x)) * fc_in(x))`` (SwiGLU,
  GeGLU; HF's gate_proj / up_proj / down_proj)."""
  hidden_dim: int
  activation: str = "gelu"
  dtype: Dtype = jnp.float32
  gated: bool = False
  use_bias: bool = True

  @nn.compact
  def __call__(self, x):
    d = x.shape[-1]
    dense_in = lambda name: nn.Dense(
        self.hidden_dim, dtype=self.dtype, name=name, use_bias=self.use_bias,
        kernel_init=logical(dense_init(), "embed", "mlp"),
        bias_init=logical(nn.initializers.zeros, "mlp"))
    if self.gated:
      h = ACTIVATIONS[self.activation](dense_in("gate")(x)) * dense_in("fc_in")(x)
    else:
      h = ACTIVATIONS[self.activation](dense_in("fc_in")(x))
    h = nn.with_logical_constraint(h, ("batch", "length", "mlp"))
    return nn.Dense(d, dtype=self.dtype, name="fc_out", use_bias=self.use_bias,
                    kernel_init=logical(dense_init(), "mlp", "embed"),
                    bias_init=logical(nn.initializers.zeros, "embed"))(h)


class TransformerBlock(nn.Module):
  """Self-attention + MLP with residuals; pre-LN (ViT, LLMs) or post-LN (BERT). The
  fields after ``dtype`` are the decoder-LLM options of the module docstring; positional
  construction (``Encoder``) only reaches the first seven."""
  num_heads: int
  mlp_dim: int
  pre_norm: bool = True
  activation: str = "gelu"
  layer_norm_eps: float = 1e-6
  dropout_rate: float = 0.0
  dtype: Dtype = jnp.float32
  head_dim: int | None = None           # None: width / num_heads
  num_kv_heads: int | None = None
  norm: str = "layer"
  post_norms: bool = False
  qk_norm: bool = False
  gated_mlp: bool = False
  attn_bias: bool = True
  mlp_bias: bool = True
  rope_theta: float | None = None
  rope_scale: float = 1.0
  query_scale: float | None = None
  logit_softcap: float | None = None
  causal: bool = False
  sliding_window: int | None = None

  @nn.compact
  def __call__(self, x, mask=None, deterministic: bool = True):
    d = x.shape[-1]
    head_dim = self.head_dim
    if head_dim is None:
      if d % self.num_heads:
        raise ValueError(f"width {d} is not divisible by num_heads={self.num_heads}")
      head_dim = d // self.num_heads
    if self.post_norms and not self.pre_norm:
      raise ValueError("post_norms (Gemma's sandwich norms) need pre_norm=True")
    attn = MultiHeadAttention(
        self.num_heads, head_dim, self.dtype, self.dropout_rate,
        num_kv_heads=self.num_kv_heads, use_bias=self.attn_bias,
        qk_norm=self.norm if self.qk_norm else None, norm_eps=self.layer_norm_eps,
        rope_theta=self.rope_theta, rope_scale=self.rope_scale,
        query_scale=self.query_scale, logit_softcap=self.logit_softcap,
        causal=self.causal, sliding_window=self.sliding_window, name="attn")
    mlp = Mlp(self.mlp_dim, self.activation, self.dtype, gated=self.gated_mlp,
              use_bias=self.mlp_bias, name="mlp")
    norm = lambda name: make_norm(self.norm, name, self.layer_norm_eps, self.dtype)
    norm1, norm2 = norm("attn_norm"), norm("mlp_norm")
    post1 = norm("attn_post_norm") if self.post_norms else (lambda y: y)
    post2 = norm("mlp_post_norm") if self.post_norms else (lambda y: y)
    drop = lambda y: nn.Dropout(self.dropout_rate)(y, deterministic=deterministic)
    if self.pre_norm:
      x = x + drop(post1(attn(norm1(x), mask, deterministic)))
      x = x + drop(post2(mlp(norm2(x))))
    else:
      x = norm1(x + drop(attn(x, mask, deterministic)))
      x = norm2(x + drop(mlp(x)))
    return nn.with_logical_constraint(x, ("batch", "length", "embed"))


# Named rematerialisation policies: what a block keeps from its forward pass for the
# backward one; everything else is recomputed. Names are jax.checkpoint_policies' (as
# MaxText's ``remat_policy`` uses them). Deep towers at the papers' batch sizes fit HBM
# only with some of these; which one is the memory/compute trade the AOT report shows.
REMAT_POLICIES = {
    # Keep only each block's input: the least memory, a second forward pass of compute.
    "nothing_saveable": jax.checkpoint_policies.nothing_saveable,
    # Keep every matmul output, recompute only the cheap elementwise work between them.
    "dots_saveable": jax.checkpoint_policies.dots_saveable,
    # Keep the weight matmuls (no batch dimension), recompute the attention score and
    # weighted-sum einsums, whose [heads, t, t] outputs dominate activation memory.
    "dots_with_no_batch_dims_saveable":
        jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def remat_block(block: type[nn.Module], remat: bool | str | None,
                static_argnums: tuple[int, ...]) -> type[nn.Module]:
  """``block`` under the remat setting a tower's ``remat`` field names: ``False``/``None``/
  ``"none"`` leaves it as it is, ``True`` means ``"nothing_saveable"`` (full remat, the
  meaning the boolean always had), a name from ``REMAT_POLICIES`` picks that policy.
  ``static_argnums`` counts ``self`` as 0 (``nn.remat``'s convention): the Python-valued
  arguments (``deterministic``) that must not be traced."""
  if remat is None or remat is False or remat == "none":
    return block
  name = "nothing_saveable" if remat is True else remat
  if name not in REMAT_POLICIES:
    raise ValueError(f"remat must be False, True, 'none' or one of {sorted(REMAT_POLICIES)}, "
                     f"got {remat!r}")
  return nn.remat(block, static_argnums=static_argnums, policy=REMAT_POLICIES[name])


# -- scan over layers (``scan_layers``)
#
# A stack of repeating blocks as one ``nn.scan``: XLA compiles one group's program and
# loops over it (MaxText's ``scan_layers``), so the compile time and code size of a
# 36-layer tower are a 1-layer tower's. Layers that repeat with a period p (Swin's
# unshifted/shifted pairs: 2; Gemma3's five sliding-window layers and one global: 6) scan
# as groups of p, and the n % p layers left over follow unrolled (MaxText's Gemma3 does the
# same). The scanned parameters live under ``SCANNED`` (logical axis ``layers``, never
# sharded), one child per position in the group, named after the group's first layers
# (``layers/layer_0``, ``layers/layer_1``, ... stacked along a leading axis of n // p).
# Checkpoints of other frameworks name layers one by one, so importers and exporters see
# the unrolled tree (``unstack_layers`` / ``stack_layers`` at the boundary,
# jaxclap.models.convert and jaxclap.export), and a run keeps one layout for its life.

SCANNED = "layers"


def layer_period(layers: Sequence[dict]) -> int:
  """The smallest p with ``layers[i] == layers[i + p]`` throughout (``len(layers)`` when
  nothing repeats)."""
  n = len(layers)
  return next(p for p in range(1, n + 1) if all(layers[i] == layers[i + p]
                                                for i in range(n - p)))


class _ScanGroup(nn.Module):
  """One period of layers as ``nn.scan`` calls it: ``(x, mask) -> (x, None)``."""
  block: Any
  fields: tuple                          # per layer of the group, its constructor items
  names: tuple
  deterministic: bool = True

  @nn.compact
  def __call__(self, x, mask):
    for f, name in zip(self.fields, self.names):
      x = self.block(**dict(f), name=name)(x, mask, self.deterministic)
    return x, None


def layer_stack(block: type[nn.Module], layers: list[dict], *, remat, scan: bool,
                deterministic: bool, prefix: str = "layer_"):
  """``x -> x`` through ``block(**layers[i])`` for each i (called ``(x, mask,
  deterministic)``): unrolled (children ``f"{prefix}{i}"``), or with ``scan`` one
  ``nn.scan`` over the groups of ``layer_period(layers)`` layers (child ``SCANNED``) and
  the remainder unrolled. ``remat`` as ``remat_block``'s (per layer unrolled, per group
  scanned)."""
  n = len(layers)
  p = layer_period(layers) if scan else n
  groups = n // p if scan else 0
  cls = remat_block(block, remat, static_argnums=(3,))
  rest = [cls(**layers[i], name=f"{prefix}{i}") for i in range(groups * p, n)]
  if not groups:
    mod = None
  else:
    group = _ScanGroup
    if remat not in (None, False, "none"):
      name = "nothing_saveable" if remat is True else remat
      if name not in REMAT_POLICIES:
        raise ValueError(f"remat must be False, True, 'none' or one of "
                         f"{sorted(REMAT_POLICIES)}, got {remat!r}")
      # prevent_cse=False: inside a scan the loop already keeps XLA from merging the
      # recomputation into the forward pass (jax.checkpoint's advice).
      group = nn.remat(group, prevent_cse=False, policy=REMAT_POLICIES[name])
    stack = nn.scan(group, variable_axes={"params": 0},
                    split_rngs={"params": True, "dropout": True}, in_axes=(nn.broadcast,),
                    length=groups, metadata_params={nn.PARTITION_NAME: "layers"})
    mod = stack(block, tuple(tuple(sorted(kw.items())) for kw in layers[:p]),
                tuple(f"{prefix}{k}" for k in range(p)), deterministic, name=SCANNED)

  def run(x, mask):
    if mod is not None:
      x = mod(x, mask)[0]
    for m in rest:
      x = m(x, mask, deterministic)
    return x
  return run


def _split_name(name: str) -> tuple[str, int]:
  m = re.fullmatch(r"(.*?)(\d+)", name)
  if not m:
    raise ValueError(f"a scanned stack's child {name!r} is not a layer name (prefix + index)")
  return m.group(1), int(m.group(2))


def unstack_layers(tree: Any) -> Any:
  """A params tree with scanned stacks (``SCANNED``, leading group axis) -> the same
  tree with every layer under its own name (``layer_0`` ... ``layer_{n-1}``, what
  checkpoints name); ``jax.ShapeDtypeStruct`` leaves lose the axis from their shape.
  Other trees pass."""
  if not isinstance(tree, Mapping):
    return tree
  out = {}
  for k, v in tree.items():
    if k == SCANNED and isinstance(v, Mapping):
      period = len(v)
      for child, sub in v.items():
        prefix, pos = _split_name(child)
        for g in range(jax.tree_util.tree_leaves(sub)[0].shape[0]):
          out[f"{prefix}{pos + g * period}"] = jax.tree_util.tree_map(
              lambda x: _index(x, g), sub)
    else:
      out[k] = unstack_layers(v)
  return out


def stack_layers(tree: Any, like: Any) -> Any:
  """The inverse of ``unstack_layers`` where ``like`` (the scanned tree or its shapes)
  has a scanned stack: each group position's layers stacked along a new leading axis."""
  if not isinstance(like, Mapping):
    return tree
  out = {}
  for k, v in like.items():
    if k == SCANNED and isinstance(v, Mapping):
      period, stacked = len(v), {}
      for child, sub in v.items():
        prefix, pos = _split_name(child)
        n = jax.tree_util.tree_leaves(sub)[0].shape[0]
        stacked[child] = jax.tree_util.tree_map(
            lambda *xs: np.stack([np.asarray(x) for x in xs]),
            *[tree[f"{prefix}{pos + g * period}"] for g in range(n)])
      out[k] = stacked
    else:
      out[k] = stack_layers(tree[k], v)
  return out


def has_scanned(tree: Any) -> bool:
  """Whether a params tree holds a scanned stack anywhere."""
  return isinstance(tree, Mapping) and any(
      k == SCANNED or has_scanned(v) for k, v in tree.items())


def _index(x, i):
  if isinstance(x, jax.ShapeDtypeStruct):
    return jax.ShapeDtypeStruct(x.shape[1:], x.dtype)
  return x[i]


class Encoder(nn.Module):
  """``depth`` blocks; ``remat`` (a bool or a ``REMAT_POLICIES`` name, see
  ``remat_block``) trades compute for activation memory at scale; ``scan_layers``
  compiles them as one scanned layer (``layer_stack``)."""
  depth: int
  num_heads: int
  mlp_dim: int
  pre_norm: bool = True
  activation: str = "gelu"
  layer_norm_eps: float = 1e-6
  dropout_rate: float = 0.0
  remat: bool | str = False
  dtype: Dtype = jnp.float32
  scan_layers: bool = False

  @nn.compact
  def __call__(self, x, mask=None, deterministic: bool = True):
    kw = dict(num_heads=self.num_heads, mlp_dim=self.mlp_dim, pre_norm=self.pre_norm,
              activation=self.activation, layer_norm_eps=self.layer_norm_eps,
              dropout_rate=self.dropout_rate, dtype=self.dtype)
    run = layer_stack(TransformerBlock, [kw] * self.depth, remat=self.remat,
                      scan=self.scan_layers, deterministic=deterministic)
    return run(x, mask)
