"""Batch norm with PyTorch's semantics, for the convolutional audio towers (HTS-AT, CNN14).

Scale and bias are ``params``; the running mean / variance live in the ``batch_stats``
collection, so every call stays a pure function of its variables and the trainer carries
the statistics in ``TrainState.model_state``. ``use_batch_stats=False`` (evaluation,
pretrained checkpoints) normalises with the running statistics; ``True`` with the batch's
(over every axis but the last; under jit on a mesh, global-batch statistics). The running
statistics are updated only when the caller makes ``batch_stats`` mutable, with PyTorch's
rule: momentum 0.1 and the unbiased variance.

``weights`` (broadcastable from the left to ``x.shape[:-1]``: [b] per clip, [b, t] per
time step) restricts the batch statistics to the positions marked 1: real audio, not
padding (CNN14), or only the clips a branch actually processes (HTS-AT's fusion). A batch
with no marked position leaves the running statistics as they are.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxclap.models.transformer import logical


class BatchNorm(nn.Module):
  axis_name: str | None = None    # logical axis of the channel dimension
  momentum: float = 0.1
  epsilon: float = 1e-5           # PyTorch's default, kept by PANNs and LAION-CLAP
  dtype: Any = None               # output dtype; None: the input's

  @nn.compact
  def __call__(self, x, use_batch_stats: bool = False, weights=None):
    c = x.shape[-1]
    scale = self.param("scale", logical(nn.initializers.ones, self.axis_name), (c,))
    bias = self.param("bias", logical(nn.initializers.zeros, self.axis_name), (c,))
    box = lambda v: nn.LogicallyPartitioned(v, (self.axis_name,))
    ra_mean = self.variable("batch_stats", "mean", lambda: box(jnp.zeros((c,), jnp.float32)))
    ra_var = self.variable("batch_stats", "var", lambda: box(jnp.ones((c,), jnp.float32)))
    x32 = x.astype(jnp.float32)
    if use_batch_stats:
      axes = tuple(range(x.ndim - 1))
      if weights is None:
        w = jnp.ones(x.shape[:-1] + (1,), jnp.float32)
      else:
        w = weights.astype(jnp.float32)
        w = jnp.broadcast_to(w.reshape(w.shape + (1,) * (x.ndim - w.ndim)), x.shape[:-1] + (1,))
      total = w.sum()
      count = jnp.maximum(total, 1.0)
      mean = (x32 * w).sum(axes) / count
      var = (jnp.square(x32 - mean) * w).sum(axes) / count
      if self.is_mutable_collection("batch_stats") and not self.is_initializing():
        m = self.momentum
        unbiased = var * count / jnp.maximum(count - 1.0, 1.0)
        some = total > 0
        ra_mean.value = jnp.where(some, (1 - m) * ra_mean.value + m * mean, ra_mean.value)
        ra_var.value = jnp.where(some, (1 - m) * ra_var.value + m * unbiased, ra_var.value)
    else:
      mean, var = ra_mean.value, ra_var.value
    y = (x32 - mean) * (jax.lax.rsqrt(var + self.epsilon) * scale) + bias
    return y.astype(self.dtype or x.dtype)
