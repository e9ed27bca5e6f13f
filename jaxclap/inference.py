"""Inference on a trained run: ``model = jaxclap.load(workdir)``.

  model.embed_audio(clips, sample_rate=None)   -> [n, d] L2-normalised embeddings
  model.embed_text(["a fast, high-pitched female voice"]) -> [m, d]
  model.zero_shot(clips, prompts, sample_rate=None)      -> [n, m] probabilities

``clips``: a list of file paths and/or 1-D float waveforms, or one [n, samples] array.
Waveforms at another ``sample_rate`` are resampled on the device. A clip longer than the
training window is cut into windows of that length with a half-window hop (SLAP: 10 s
windows, 5 s hop, for its 10 s training window); the windows' embeddings are averaged
and re-normalised. Shorter clips are zero-padded with their true length masked.
"""

from __future__ import annotations

import copy
import os
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import scipy.special

from jaxclap import audio as audio_lib
from jaxclap import windows as windows_lib
from jaxclap.models import two_towers


class Model:
  def __init__(self, config, variables, tokenizer, model):
    """``variables``: {"params": ..., and "batch_stats" for batch-norm towers};
    ``model``: the ``two_towers.TwoTowers`` module they belong to."""
    self.config, self.tokenizer, self.model = config, tokenizer, model
    self._set_variables(variables)
    self.sample_rate = int(config.input.sample_rate)
    self.window = int(round(float(config.input.clip_seconds) * self.sample_rate))
    self.hop = windows_lib.hop(self.window)
    m = model
    self._audio_fn = jax.jit(lambda p, wave, n: m.apply(
        p, *two_towers.spectrogram(config.features, wave, n), method=m.embed_audio))
    self._text_fn = jax.jit(lambda p, ids, mask: m.apply(p, ids, mask,
                                                         method=m.embed_text))

  def _set_variables(self, variables) -> None:
    self.variables = dict(variables)
    self.params = self.variables["params"]
    # Clamped as in the loss (losses.clamp_logit_scale): exp of [0, ln 100].
    self.logit_scale = float(np.exp(np.clip(np.asarray(self.params["logit_scale"]), 0.0,
                                            np.log(100.0))))

  def with_variables(self, variables) -> "Model":
    """The same model with other weights of the same shapes (e.g. each evaluation round
    of a training run), reusing the compiled functions instead of recompiling them."""
    other = copy.copy(self)
    other._set_variables(variables)
    return other

  def embed_text_ids(self, ids, mask) -> jax.Array:
    """Embeddings of already-tokenised captions [b, L] (an input batch's)."""
    return self._text_fn(self.variables, ids, mask)

  # -- audio

  def _load(self, clip, sample_rate) -> np.ndarray:
    if isinstance(clip, (str, os.PathLike)):
      import soundfile as sf
      wave, sr = sf.read(str(clip), dtype="float32", always_2d=True)
      wave = wave.mean(axis=1)
    else:
      wave, sr = np.asarray(clip, np.float32), sample_rate or self.sample_rate
      if wave.ndim != 1:
        raise ValueError(f"a waveform must be 1-D [samples], got shape {wave.shape}")
    if wave.size == 0 or not np.all(np.isfinite(wave)):
      raise ValueError(f"clip {clip if isinstance(clip, str) else ''} is empty or has NaN/Inf")
    if sr != self.sample_rate:
      wave = np.asarray(audio_lib.resample(jnp.asarray(wave), int(sr), self.sample_rate))
    return wave

  def embed_audio(self, clips: Any, sample_rate: int | None = None,
                  batch_size: int = 32) -> np.ndarray:
    clips = windows_lib.clip_list(clips)
    pad_kind = self.config.input.pad
    waves, lens, owner = [], [], []
    for i, clip in enumerate(clips):
      w, l = windows_lib.windows(self._load(clip, sample_rate), self.window, self.hop, pad_kind)
      waves += w
      lens += l
      owner += [i] * len(w)
    embs = []
    for s in range(0, len(waves), batch_size):
      wb, lb = np.stack(waves[s:s + batch_size]), np.asarray(lens[s:s + batch_size], np.int32)
      pad = batch_size - len(wb)   # one compiled shape for every batch
      wb = np.concatenate([wb, np.zeros((pad,) + wb.shape[1:], np.float32)])
      lb = np.concatenate([lb, np.full(pad, self.window, np.int32)])
      embs.append(np.asarray(self.embed_windows(wb, lb))[:batch_size - pad])
    return windows_lib.pool(np.concatenate(embs), np.asarray(owner), len(clips))

  def embed_windows(self, wave, lengths) -> jax.Array:
    """[b, window] training-length windows with their real sample counts -> [b, d]
    embeddings (not pooled): ``embed_audio``'s tower call, and the evaluators' (which
    feed it sharded batches of ``input_pipeline.eval_dataset``'s windows)."""
    return self._audio_fn(self.variables, wave, lengths)

  # -- text

  def embed_text(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
    if isinstance(texts, str):
      texts = [texts]
    out = []
    max_len = int(self.config.input.max_text_len)
    for s in range(0, len(texts), batch_size):
      chunk = list(texts[s:s + batch_size])
      ids, mask = self.tokenizer.encode(chunk + [""] * (batch_size - len(chunk)), max_len)
      out.append(np.asarray(self._text_fn(self.variables, ids, mask))[:len(chunk)])
    return np.concatenate(out)

  def zero_shot(self, clips: Any, prompts: Sequence[str],
                sample_rate: int | None = None) -> np.ndarray:
    """Softmax over ``prompts`` of the scaled similarities, per clip: [n_clips, n_prompts]."""
    logits = self.logit_scale * self.embed_audio(clips, sample_rate) @ self.embed_text(prompts).T
    return scipy.special.softmax(logits, axis=1)


def load(workdir: str, step: int | None = None) -> Model:
  """The model of a run folder written by ``python -m jaxclap.main`` (latest checkpoint,
  or ``step``), on this process's first device. Builds no optimiser or trainer."""
  from jaxclap import checkpoints, tokenizers
  config, variables = checkpoints.open_run(workdir, step)
  model = two_towers.from_config(config.model, checkpoints.compute_dtype(config))
  return Model(config, variables, tokenizers.from_config(config.tokenizer), model)
