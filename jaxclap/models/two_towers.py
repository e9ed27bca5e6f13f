"""Any audio tower x any text tower, projected into one L2-normalised space (big_vision's
two_towers, CLAP's recipe), plus the on-device spectrogram front end that feeds it.

Parameters: ``audio`` and ``text`` (the towers), ``audio_head`` / ``text_head`` (linear or
MLP projections to ``embed_dim``) and the learnable ``logit_scale`` (log of the logit
multiplier, clamped to [0, ln 100] in the loss as LAION-CLAP does).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxclap import audio as audio_features
from jaxclap.models import bert, vit
from jaxclap.models.transformer import dense_init, gelu_erf, logical

AUDIO_TOWERS = {"vit": vit.SpectrogramViT}
TEXT_TOWERS = {"bert": bert.BertTower}


def spectrogram(cfg: Any, wave, lengths):
  """Raw waveforms [b, samples] -> normalised log-mel [b, frames, n_mels] and the number
  of frames holding real audio per clip.

  ``cfg`` is ``config.features``: sample_rate (the waveform's), optionally target_rate
  (resampled on the device with ``res_type``), n_fft, win_length, hop_length, n_mels, fmin, fmax, and the
  normalisation ``(dB - norm_mean) / norm_std``; ``frames_multiple`` crops the frame axis
  to a multiple of the ViT patch.
  """
  sr = int(cfg.sample_rate)
  target = int(cfg.get("target_rate", sr) or sr)
  if target != sr:
    wave = audio_features.resample(wave, sr, target, res_type=cfg.get("res_type", "polyphase"))
    lengths = (lengths.astype(jnp.int64) * target + sr - 1) // sr
  mel = audio_features.melspectrogram(
      wave, sr=target, n_fft=int(cfg.n_fft), hop_length=int(cfg.hop_length),
      win_length=int(cfg.win_length), window="hann", center=True, pad_mode="constant",
      power=2.0, n_mels=int(cfg.n_mels), fmin=float(cfg.fmin), fmax=cfg.get("fmax"),
      htk=False, norm="slaney")
  db = audio_features.power_to_db(mel, ref=1.0, amin=1e-10, top_db=None)
  spec = (jnp.swapaxes(db, -1, -2) - cfg.norm_mean) / cfg.norm_std
  multiple = int(cfg.get("frames_multiple", 1))
  usable = spec.shape[1] // multiple * multiple
  spec = spec[:, :usable]
  frames = jnp.minimum(lengths // int(cfg.hop_length) + 1, usable).astype(jnp.int32)
  return spec, frames


class ProjectionHead(nn.Module):
  """``linear`` (CLAP) or ``mlp`` (Linear-GELU-Linear; CLSP, AcuLa) into the shared space."""
  embed_dim: int
  kind: str = "linear"
  hidden_dim: int | None = None
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, deterministic: bool = True):
    dense = lambda n, name: nn.Dense(n, dtype=self.dtype, name=name,
                                     kernel_init=logical(dense_init(), "embed", "mlp"),
                                     bias_init=logical(nn.initializers.zeros, "mlp"))
    if self.kind == "linear":
      return dense(self.embed_dim, "proj")(x)
    if self.kind == "mlp":
      h = gelu_erf(dense(self.hidden_dim or self.embed_dim, "fc_in")(x))
      h = nn.Dropout(self.dropout_rate)(h, deterministic=deterministic)
      return dense(self.embed_dim, "fc_out")(h)
    raise ValueError(f"model.head must be 'linear' or 'mlp', got {self.kind!r}")


def _l2norm(x):
  x = x.astype(jnp.float32)
  return x / jnp.sqrt(jnp.sum(x * x, axis=-1, keepdims=True) + 1e-12)


class TwoTowers(nn.Module):
  audio_name: str
  audio_kwargs: dict
  text_name: str
  text_kwargs: dict
  embed_dim: int = 512
  head: str = "mlp"
  head_hidden: int | None = None
  logit_scale_init: float = float(np.log(1 / 0.07))
  dtype: Any = jnp.float32

  def setup(self):
    if self.audio_name not in AUDIO_TOWERS:
      raise ValueError(f"model.audio.name={self.audio_name!r}; known: {sorted(AUDIO_TOWERS)}")
    if self.text_name not in TEXT_TOWERS:
      raise ValueError(f"model.text.name={self.text_name!r}; known: {sorted(TEXT_TOWERS)}")
    self.audio = AUDIO_TOWERS[self.audio_name](**self.audio_kwargs, dtype=self.dtype)
    self.text = TEXT_TOWERS[self.text_name](**self.text_kwargs, dtype=self.dtype)
    self.audio_head = ProjectionHead(self.embed_dim, self.head, self.head_hidden, dtype=self.dtype)
    self.text_head = ProjectionHead(self.embed_dim, self.head, self.head_hidden, dtype=self.dtype)
    self.logit_scale = self.param(
        "logit_scale", logical(nn.initializers.constant(self.logit_scale_init)), ())

  def embed_audio(self, spec, frames):
    pooled, _ = self.audio(spec, frames)
    return _l2norm(self.audio_head(pooled))

  def embed_text(self, ids, mask):
    pooled, _ = self.text(ids, mask)
    return _l2norm(self.text_head(pooled))

  def reconstruct(self, spec, frames, rng):
    return self.audio.reconstruct(spec, frames, rng)

  def __call__(self, spec, frames, ids, mask, rng=None):
    """Both embeddings and the logit scale; with ``rng`` also runs the MAE pass (so that
    ``init`` creates the decoder's parameters)."""
    out = (self.embed_audio(spec, frames), self.embed_text(ids, mask), self.logit_scale)
    if rng is not None:
      out = out + (self.reconstruct(spec, frames, rng),)
    return out


def from_config(cfg: Any, dtype=jnp.float32) -> TwoTowers:
  """``config.model`` -> module. ``audio``/``text`` hold ``name`` plus the tower's fields."""
  a = dict(cfg.audio)
  t = dict(cfg.text)
  for d in (a, t):
    d.pop("init", None)
  return TwoTowers(audio_name=a.pop("name"), audio_kwargs=a, text_name=t.pop("name"),
                   text_kwargs=t, embed_dim=int(cfg.embed_dim), head=str(cfg.head),
                   head_hidden=cfg.get("head_hidden"),
                   logit_scale_init=float(cfg.get("logit_scale_init", np.log(1 / 0.07))),
                   dtype=dtype)
