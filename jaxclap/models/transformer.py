"""The one transformer block every jaxclap tower is built from (ViT, BERT, and later LLMs).

Towers differ by configuration, not by code: ``pre_norm`` picks ViT/LLM-style pre-LN or
BERT-style post-LN, ``activation`` the MLP nonlinearity. Every parameter carries logical
axis names (``embed``, ``heads``, ``kv``, ``mlp``) so FSDP / tensor sharding is a rules
table in the config (``jaxclap.sharding``), never model code.

Parameter names are chosen so PyTorch checkpoints map onto them one to one:
``attn/{query,key,value,out}``, ``attn_norm``, ``mlp/{fc_in,fc_out}``, ``mlp_norm``.
"""

from __future__ import annotations

from typing import Any, Callable

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


class MultiHeadAttention(nn.Module):
  num_heads: int
  head_dim: int
  dtype: Dtype = jnp.float32
  dropout_rate: float = 0.0

  @nn.compact
  def __call__(self, x, mask=None, deterministic: bool = True, bias=None):
    """x: [b, t, d]; mask: [b, t] (1 = attend to this key) or None; bias: additive
    attention logits broadcastable to [b, heads, t, t] (relative positions, Swin's shift
    mask, a causal mask) or None."""
    d = x.shape[-1]
    proj = lambda name: nn.DenseGeneral(
        (self.num_heads, self.head_dim), dtype=self.dtype, name=name,
        kernel_init=logical(dense_init(), "embed", "heads", "kv"),
        bias_init=logical(nn.initializers.zeros, "heads", "kv"))
    q, k, v = proj("query")(x), proj("key")(x), proj("value")(x)
    q = nn.with_logical_constraint(q, ("batch", "length", "heads", "kv"))
    key_mask = None if mask is None else mask[:, None, None, :].astype(bool)
    # Softmax in float32 whatever the compute dtype: logits overflow bf16's mantissa.
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32)
    logits = logits / jnp.sqrt(self.head_dim).astype(jnp.float32)
    if bias is not None:
      logits = logits + bias.astype(jnp.float32)
    if key_mask is not None:
      logits = jnp.where(key_mask, logits, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(logits, axis=-1)
    probs = nn.Dropout(self.dropout_rate)(probs, deterministic=deterministic)
    out = jnp.einsum("bhqk,bkhd->bqhd", probs.astype(self.dtype), v)
    return nn.DenseGeneral(
        d, axis=(-2, -1), dtype=self.dtype, name="out",
        kernel_init=logical(dense_init(), "heads", "kv", "embed"),
        bias_init=logical(nn.initializers.zeros, "embed"))(out)


class Mlp(nn.Module):
  hidden_dim: int
  activation: str = "gelu"
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    d = x.shape[-1]
    h = nn.Dense(self.hidden_dim, dtype=self.dtype, name="fc_in",
                 kernel_init=logical(dense_init(), "embed", "mlp"),
                 bias_init=logical(nn.initializers.zeros, "mlp"))(x)
    h = ACTIVATIONS[self.activation](h)
    h = nn.with_logical_constraint(h, ("batch", "length", "mlp"))
    return nn.Dense(d, dtype=self.dtype, name="fc_out",
                    kernel_init=logical(dense_init(), "mlp", "embed"),
                    bias_init=logical(nn.initializers.zeros, "embed"))(h)


def layer_norm(name: str, eps: float, dtype: Dtype):
  return nn.LayerNorm(epsilon=eps, dtype=dtype, name=name,
                      scale_init=logical(nn.initializers.ones, "embed"),
                      bias_init=logical(nn.initializers.zeros, "embed"))


class TransformerBlock(nn.Module):
  """Self-attention + MLP with residuals; pre-LN (ViT) or post-LN (BERT)."""
  num_heads: int
  mlp_dim: int
  pre_norm: bool = True
  activation: str = "gelu"
  layer_norm_eps: float = 1e-6
  dropout_rate: float = 0.0
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, mask=None, deterministic: bool = True):
    d = x.shape[-1]
    if d % self.num_heads:
      raise ValueError(f"width {d} is not divisible by num_heads={self.num_heads}")
    attn = MultiHeadAttention(self.num_heads, d // self.num_heads, self.dtype,
                              self.dropout_rate, name="attn")
    mlp = Mlp(self.mlp_dim, self.activation, self.dtype, name="mlp")
    norm1 = layer_norm("attn_norm", self.layer_norm_eps, self.dtype)
    norm2 = layer_norm("mlp_norm", self.layer_norm_eps, self.dtype)
    drop = lambda y: nn.Dropout(self.dropout_rate)(y, deterministic=deterministic)
    if self.pre_norm:
      x = x + drop(attn(norm1(x), mask, deterministic))
      x = x + drop(mlp(norm2(x)))
    else:
      x = norm1(x + drop(attn(x, mask, deterministic)))
      x = norm2(x + drop(mlp(x)))
    return nn.with_logical_constraint(x, ("batch", "length", "embed"))


class Encoder(nn.Module):
  """``depth`` blocks; ``remat`` trades compute for activation memory at scale."""
  depth: int
  num_heads: int
  mlp_dim: int
  pre_norm: bool = True
  activation: str = "gelu"
  layer_norm_eps: float = 1e-6
  dropout_rate: float = 0.0
  remat: bool = False
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, mask=None, deterministic: bool = True):
    block = nn.remat(TransformerBlock, static_argnums=(3,)) if self.remat else TransformerBlock
    for i in range(self.depth):
      x = block(self.num_heads, self.mlp_dim, self.pre_norm, self.activation,
                self.layer_norm_eps, self.dropout_rate, self.dtype,
                name=f"layer_{i}")(x, mask, deterministic)
    return x
