"""Any audio tower x any text tower, projected into one L2-normalised space (big_vision's
two_towers, CLAP's recipe), plus the on-device spectrogram front end that feeds it.

Parameters: ``audio`` and ``text`` (the towers), ``audio_head`` / ``text_head`` (linear or
MLP projections to ``embed_dim``, shared settings with per-head overrides: AcuLa's audio
head is an MLP with dropout, its text head a single map), the learnable ``logit_scale``
(log of the logit multiplier; the trainer clamps it to [0, ln 100] after each update,
as LAION-CLAP does) and, for the sigmoid loss only, SigLIP's learnable ``logit_bias``.

A tower's ``dtype`` field (e.g. ``model.text.dtype="bfloat16"``) sets its own compute
dtype: a frozen teacher (AcuLa's MedGemma) can run in bfloat16 while the trained tower
and the heads stay in the model's dtype; its parameters stay float32 either way.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from jaxclap import audio as audio_features
from jaxclap.models import towers
from jaxclap.models.transformer import ACTIVATIONS, dense_init, logical

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def _tower(side: str, name: str, kwargs: dict, dtype, remat="none", scan_layers=False):
  """``model.<side>`` (``name`` and fields) -> the registered tower's module. ``remat``
  (``model.remat``) and ``scan_layers`` (``model.scan_layers``) reach every tower with
  such a field that does not set its own; a tower without layers to recompute or scan
  (CNN14) has none and trains as it is."""
  tower = towers.get(name, side)
  kwargs = dict(kwargs)
  own = getattr(tower.module, "__dataclass_fields__", {})
  if "remat" in own:
    kwargs.setdefault("remat", remat)
  if "scan_layers" in own:
    kwargs.setdefault("scan_layers", bool(scan_layers))
  own_dtype = kwargs.pop("dtype", None)  # the tower's compute dtype, if not the model's
  if own_dtype is not None:
    if str(own_dtype) not in _DTYPES:
      raise ValueError(f"model.{side}.dtype={own_dtype!r}; use one of {sorted(_DTYPES)}")
    dtype = _DTYPES[str(own_dtype)]
  return towers.module({"name": name, **kwargs}, dtype=dtype)


def spectrogram(cfg: Any, wave, lengths):
  """Raw waveforms [b, samples] -> normalised features [b, frames, n_mels] and the number
  of frames holding real audio per clip.

  ``cfg`` is ``config.features``: sample_rate (the waveform's), optionally target_rate
  (resampled on the device with ``res_type``), then by ``kind``:
    "logmel" (default)  librosa-style log-mel: n_fft, win_length, hop_length, n_mels,
                        fmin, fmax, pad_mode ("constant", or "reflect" as LAION-CLAP and
                        transformers' ClapFeatureExtractor); power_to_db
    "fbank"             Kaldi fbank as AudioMAE feeds it (jaxclap.models.audiomae.
                        features_config()): frame_length_ms, frame_shift_ms, n_mels,
                        window_type, low_freq, high_freq, preemph_coeff,
                        remove_dc_offset, round_to_power_of_two, snip_edges;
                        subtract_mean (the clip's mean over its real samples first) and
                        max_frames (zero-pad / cut the fbank to a fixed length first)
  and the normalisation ``(x - norm_mean) / norm_std``; ``frames_multiple`` crops the
  frame axis to a multiple of the ViT patch.
  """
  sr = int(cfg.sample_rate)
  target = int(cfg.target_rate or sr)
  if target != sr:
    wave = audio_features.resample(wave, sr, target, res_type=str(cfg.res_type))
    lengths = (lengths.astype(jnp.int64) * target + sr - 1) // sr
  kind = cfg.kind
  if kind == "logmel":
    mel = audio_features.melspectrogram(
        wave, sr=target, n_fft=int(cfg.n_fft), hop_length=int(cfg.hop_length),
        win_length=int(cfg.win_length), window="hann", center=True,
        pad_mode=str(cfg.pad_mode),
        power=2.0, n_mels=int(cfg.n_mels), fmin=float(cfg.fmin), fmax=cfg.fmax,
        htk=False, norm="slaney")
    feats = jnp.swapaxes(audio_features.power_to_db(mel, ref=1.0, amin=1e-10, top_db=None),
                         -1, -2)
    frames = lengths // int(cfg.hop_length) + 1
  elif kind == "fbank":
    kw = dict(sample_frequency=float(target), frame_length_ms=float(cfg.frame_length_ms),
              frame_shift_ms=float(cfg.frame_shift_ms), snip_edges=bool(cfg.snip_edges))
    if cfg.subtract_mean:
      real = (jnp.arange(wave.shape[-1])[None] < lengths[:, None]).astype(wave.dtype)
      mean = (wave * real).sum(-1, keepdims=True) / jnp.maximum(lengths[:, None], 1)
      wave = (wave - mean) * real
    feats = audio_features.fbank(
        wave, num_mel_bins=int(cfg.n_mels), window_type=str(cfg.window_type),
        low_freq=float(cfg.low_freq), high_freq=float(cfg.high_freq),
        preemph_coeff=float(cfg.preemph_coeff), remove_dc_offset=bool(cfg.remove_dc_offset),
        round_to_power_of_two=bool(cfg.round_to_power_of_two), **kw)
    frames = audio_features.fbank_num_frames(lengths, **kw)
    # Padded frames are zeros in AudioMAE's fbank, not the log floor of silence.
    feats = feats * (jnp.arange(feats.shape[1])[None, :, None] < frames[:, None, None])
    max_frames = cfg.max_frames
    if max_frames:
      feats = feats[:, :int(max_frames)]
      feats = jnp.pad(feats, ((0, 0), (0, int(max_frames) - feats.shape[1]), (0, 0)))
  else:
    raise ValueError(f"config.features.kind must be 'logmel' or 'fbank', got {kind!r}")
  spec = (feats - cfg.norm_mean) / cfg.norm_std
  multiple = int(cfg.frames_multiple)
  usable = spec.shape[1] // multiple * multiple
  spec = spec[:, :usable]
  frames = jnp.minimum(frames, usable).astype(jnp.int32)
  return spec, frames


class ProjectionHead(nn.Module):
  """``linear`` or ``mlp`` (Linear-activation-Linear) into the shared space. LAION-CLAP
  and transformers' ClapProjectionLayer use ReLU; CLSP and AcuLa's MLP heads GELU."""
  embed_dim: int
  kind: str = "linear"
  hidden_dim: int | None = None
  activation: str = "gelu"
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
      h = ACTIVATIONS[self.activation](dense(self.hidden_dim or self.embed_dim, "fc_in")(x))
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
  head_activation: str = "gelu"
  logit_scale_init: float = float(np.log(1 / 0.07))
  logit_bias_init: float | None = None  # SigLIP's b (-10); None: no bias parameter
  audio_head_kwargs: dict | None = None  # per-head overrides of kind / hidden_dim /
  text_head_kwargs: dict | None = None   # activation / dropout_rate
  head_dropout: float = 0.0
  remat: bool | str = "none"  # every tower's, unless its own field says otherwise
  scan_layers: bool = False   # likewise (jaxclap.models.transformer.layer_stack)
  dtype: Any = jnp.float32

  def setup(self):
    self.audio = _tower("audio", self.audio_name, self.audio_kwargs, self.dtype, self.remat,
                        self.scan_layers)
    self.text = _tower("text", self.text_name, self.text_kwargs, self.dtype, self.remat,
                       self.scan_layers)

    def head(field, overrides):
      kw = dict(kind=self.head, hidden_dim=self.head_hidden,
                activation=self.head_activation, dropout_rate=self.head_dropout)
      unknown = set(overrides or {}) - set(kw)
      if unknown:
        raise ValueError(f"model.{field}: unknown field(s) {sorted(unknown)}; "
                         f"use {sorted(kw)}")
      return ProjectionHead(self.embed_dim, **{**kw, **(overrides or {})}, dtype=self.dtype)

    self.audio_head = head("audio_head", self.audio_head_kwargs)
    self.text_head = head("text_head", self.text_head_kwargs)
    self.logit_scale = self.param(
        "logit_scale", logical(nn.initializers.constant(self.logit_scale_init)), ())
    if self.logit_bias_init is not None:
      self.logit_bias = self.param(
          "logit_bias", logical(nn.initializers.constant(self.logit_bias_init)), ())

  def embed_audio(self, spec, frames, train: bool = False):
    pooled, _ = self.audio(spec, frames, deterministic=not train)
    return _l2norm(self.audio_head(pooled.astype(self.dtype), deterministic=not train))

  def embed_text(self, ids, mask, train: bool = False, pooled=None):
    """``pooled``: the text tower's output for these captions, computed before (a frozen
    tower's, jaxclap.frozen_cache): only the head runs."""
    if pooled is None:
      pooled, _ = self.text(ids, mask, deterministic=not train)
    return _l2norm(self.text_head(pooled.astype(self.dtype), deterministic=not train))

  def reconstruct(self, spec, frames, rng):
    if not hasattr(self.audio, "reconstruct"):
      raise ValueError(f"loss.terms.mae needs an audio tower with an MAE decoder "
                       f"(vit); model.audio.name={self.audio_name!r} has none")
    return self.audio.reconstruct(spec, frames, rng)

  def __call__(self, spec, frames, ids, mask, rng=None, train: bool = False,
               text_pooled=None):
    """Both embeddings and the logit scale; with ``rng`` also runs the MAE pass (so that
    ``init`` creates the decoder's parameters). ``train``: dropout on, batch-norm towers
    (HTS-AT, CNN14) normalise with batch statistics (apply with
    ``mutable=["batch_stats"]`` to update the running ones); with ``rng`` and ``train``, an
    audio tower with ``shared_mae_pass`` runs one pass for both. ``text_pooled``: the text
    tower's outputs, computed before (``embed_text``); ``ids`` / ``mask`` are then unused."""
    text = self.embed_text(ids, mask, train, pooled=text_pooled)
    if rng is not None and train and getattr(self.audio, "shared_mae_pass", False):
      # One encoder pass for both terms: the MAE's visible tiles, pooled (vit.py).
      pooled, recon = self.audio.pooled_and_reconstruct(spec, frames, rng)
      audio = _l2norm(self.audio_head(pooled.astype(self.dtype), deterministic=False))
      return audio, text, self.logit_scale, recon
    out = (self.embed_audio(spec, frames, train), text, self.logit_scale)
    if rng is not None:
      out = out + (self.reconstruct(spec, frames, rng),)
    return out


def from_config(cfg: Any, dtype=jnp.float32) -> TwoTowers:
  """``config.model`` -> module. ``audio``/``text`` hold ``name`` plus the tower's fields."""
  a = dict(cfg.audio)
  t = dict(cfg.text)
  for d in (a, t):
    d.pop("init", None)
    d.pop("init_kind", None)
  return TwoTowers(audio_name=a.pop("name"), audio_kwargs=a, text_name=t.pop("name"),
                   text_kwargs=t, embed_dim=int(cfg.embed_dim), head=str(cfg.head),
                   head_hidden=cfg.head_hidden,
                   head_activation=str(cfg.head_activation),
                   logit_scale_init=float(cfg.logit_scale_init),
                   logit_bias_init=cfg.logit_bias_init,
                   audio_head_kwargs=_plain(cfg.audio_head),
                   text_head_kwargs=_plain(cfg.text_head),
                   head_dropout=float(cfg.head_dropout), remat=cfg.remat,
                   scan_layers=bool(cfg.scan_layers), dtype=dtype)


def _plain(d):
  return None if d is None else dict(d)
