"""BERT-style text tower (BERT, MiniLM; RoBERTa differs only in its position offset).

Word + position + token-type embeddings, a LayerNorm, then post-LN transformer blocks
(``jaxclap.models.transformer``) and a pooling: ``cls`` (the [CLS] state, CLAP/CLSP),
``mean`` (masked mean, sentence-transformers such as all-MiniLM-L6-v2) or ``pooler`` (the
tanh dense over [CLS] that HF's ClapTextModel projects).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jaxclap.models.transformer import Encoder, dense_init, layer_norm, logical


class BertTower(nn.Module):
  vocab_size: int = 30522
  hidden_size: int = 384
  depth: int = 6
  num_heads: int = 12
  mlp_dim: int = 1536
  max_len: int = 512
  type_vocab_size: int = 2
  layer_norm_eps: float = 1e-12
  pooling: str = "mean"
  position_offset: int = 0        # RoBERTa numbers positions from padding_idx + 1 = 2
  dropout_rate: float = 0.0
  remat: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, ids, mask, deterministic: bool = True):
    """ids, mask: int [b, t]. Returns (pooled [b, d], hidden states [b, t, d])."""
    if ids.shape[1] + self.position_offset > self.max_len:
      raise ValueError(f"text length {ids.shape[1]} exceeds the tower's max_len={self.max_len}")
    embed = lambda n, name: nn.Embed(n, self.hidden_size, name=name,
                                     embedding_init=logical(dense_init(), "vocab", "embed"))
    pos = jnp.arange(ids.shape[1])[None] + self.position_offset
    x = (embed(self.vocab_size, "word_embeddings")(ids)
         + embed(self.max_len, "position_embeddings")(pos)
         + embed(self.type_vocab_size, "token_type_embeddings")(jnp.zeros_like(ids)))
    x = layer_norm("embeddings_norm", self.layer_norm_eps, self.dtype)(x.astype(self.dtype))
    x = nn.Dropout(self.dropout_rate)(x, deterministic=deterministic)
    x = Encoder(self.depth, self.num_heads, self.mlp_dim, pre_norm=False, activation="gelu",
                layer_norm_eps=self.layer_norm_eps, dropout_rate=self.dropout_rate,
                remat=self.remat, dtype=self.dtype, name="encoder")(x, mask, deterministic)
    if self.pooling == "cls":
      pooled = x[:, 0]
    elif self.pooling == "mean":
      m = mask[..., None].astype(x.dtype)
      pooled = (x * m).sum(1) / jnp.maximum(m.sum(1), 1.0)
    elif self.pooling == "pooler":
      pooled = jnp.tanh(nn.Dense(self.hidden_size, dtype=self.dtype, name="pooler",
                                 kernel_init=logical(dense_init(), "embed", "mlp"),
                                 bias_init=logical(nn.initializers.zeros, "mlp"))(x[:, 0]))
    else:
      raise ValueError(f"pooling must be 'cls', 'mean' or 'pooler', got {self.pooling!r}")
    return pooled, x
