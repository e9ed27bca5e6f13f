"""Inference on a trained run: ``model = jaxclap.load(workdir)``.

  model.embed_audio(clips, sample_rate=None)   -> [n, d] L2-normalised embeddings
  model.embed_text(["a fast, high-pitched female voice"]) -> [m, d]
  model.zero_shot(clips, prompts, sample_rate=None)      -> [n, m] probabilities

``clips``: a list of file paths and/or waveforms, or one [n, samples] array
(``windows.clip_list``). A waveform is 1-D [samples]; a 2-D one is a clip with channels,
[samples, channels] (soundfile's ``sf.read``) or, as an element of a list,
[channels, samples] (librosa's, torchaudio's): the axis of at most 8 is the channels,
mixed down to mono (their mean, as for files) with a logged warning.

Sample rates: a file is read at the rate its header gives (``sample_rate`` does not
apply to it); waveforms are taken to be at ``sample_rate``, or at the model's own
``input.sample_rate`` (``model.sample_rate``) when it is None, so a 44.1 kHz waveform
needs ``sample_rate=44100`` (nothing in the samples says their rate). Either is
resampled to ``model.sample_rate`` on the device.

Lengths: a clip longer than the training window is cut into windows of that length with
a half-window hop (SLAP: 10 s windows, 5 s hop, for its 10 s training window); the
windows' embeddings are averaged and re-normalised, so a 10-minute clip is ~400 windows
of a 3 s model. Shorter clips, down to one sample, are zero-padded (or repeated,
``input.pad``) with their true length masked.

Text: each prompt is cut to ``input.max_text_len`` tokens (special tokens included), as
the text tower was trained; a cut prompt is logged as a warning with its token count.

Refused, with an error naming the input: an empty clip or prompt list, a missing or
unreadable file, an empty waveform or one with NaN/Inf samples, an array of more than two
dimensions. A model whose embeddings come out non-finite raises
``windows.NonFiniteError``; ``load`` refuses a checkpoint with non-finite parameters.
"""

from __future__ import annotations

import copy
import logging
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

  def _load(self, clip, sample_rate, i: int) -> np.ndarray:
    """Clip ``i`` of a call (a path or a mono waveform) -> a waveform at the model's rate
    (resampled on the device)."""
    wave, sr = windows_lib.read_clip(clip, i, sample_rate or self.sample_rate)
    if sr != self.sample_rate:
      wave = np.asarray(audio_lib.resample(jnp.asarray(wave), int(sr), self.sample_rate))
    return wave

  def embed_audio(self, clips: Any, sample_rate: int | None = None,
                  batch_size: int = 32) -> np.ndarray:
    """[n, d] L2-normalised embeddings of ``clips`` (see the module docstring for what a
    clip may be, its sample rate and length)."""
    clips = windows_lib.clip_list(clips)
    pad_kind = self.config.input.pad
    waves, lens, owner = [], [], []
    for i, clip in enumerate(clips):
      w, l = windows_lib.windows(self._load(clip, sample_rate, i), self.window, self.hop,
                                 pad_kind)
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
    return windows_lib.pool(np.concatenate(embs), np.asarray(owner), len(clips), "embed_audio")

  def embed_windows(self, wave, lengths) -> jax.Array:
    """[b, window] training-length windows with their real sample counts -> [b, d]
    embeddings (not pooled): ``embed_audio``'s tower call, and the evaluators' (which
    feed it sharded batches of ``input_pipeline.eval_dataset``'s windows)."""
    return self._audio_fn(self.variables, wave, lengths)

  # -- text

  def embed_text(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
    """[m, d] L2-normalised embeddings of ``texts`` (one string or a non-empty list), each
    cut to ``input.max_text_len`` tokens; a cut text is logged with its token count."""
    if isinstance(texts, str):
      texts = [texts]
    texts = list(texts)
    if not texts:
      raise ValueError("embed_text: texts is empty; pass at least one text")
    out, cut = [], []
    max_len = int(self.config.input.max_text_len)
    for s in range(0, len(texts), batch_size):
      chunk = texts[s:s + batch_size]
      ids, mask = self.tokenizer.encode(chunk + [""] * (batch_size - len(chunk)), max_len)
      cut += [(s + r, self._num_tokens(chunk[r]))
              for r in np.flatnonzero(mask[:len(chunk)].sum(1) >= max_len)]
      out.append(np.asarray(self._text_fn(self.variables, ids, mask))[:len(chunk)])
    cut = [(r, n) for r, n in cut if n > max_len]   # full rows that fit exactly were not cut
    if cut:
      logging.warning(
          "embed_text: %d of %d texts are longer than the text tower's %d tokens "
          "(input.max_text_len, special tokens included) and were cut to their first %d: "
          "%s", len(cut), len(texts), max_len, max_len,
          ", ".join(f"text {r} ({len(texts[r]):,} characters, {n:,} tokens)"
                    for r, n in cut[:5]) + (", ..." if len(cut) > 5 else ""))
    out = np.concatenate(out)
    windows_lib.check_finite(out, "embed_text: text embeddings", "texts")
    return out

  def _num_tokens(self, text: str) -> int:
    """Tokens of ``text`` uncut, special tokens included: one encode with room to spare
    (a character is at most 4 UTF-8 bytes, hence 4 byte-level tokens)."""
    _, mask = self.tokenizer.encode([text], 4 * len(text) + 16)
    return int(mask.sum())

  def zero_shot(self, clips: Any, prompts: Sequence[str],
                sample_rate: int | None = None) -> np.ndarray:
    """Softmax over ``prompts`` of the scaled similarities, per clip: [n_clips, n_prompts]."""
    if isinstance(prompts, str):
      raise TypeError("zero_shot: prompts is one string; pass a list of at least two "
                      "(a softmax over one prompt is always 1)")
    prompts = list(prompts)
    if not prompts:
      raise ValueError("zero_shot: prompts is empty; pass a list of candidate descriptions")
    clips = windows_lib.clip_list(clips)   # an empty list refused before any embedding
    logits = self.logit_scale * self.embed_audio(clips, sample_rate) @ self.embed_text(prompts).T
    windows_lib.check_finite(logits, "zero_shot: similarities", "clips")
    return scipy.special.softmax(logits, axis=1)


def load(workdir: str, step: int | None = None) -> Model:
  """The model of a run folder written by ``python -m jaxclap.main`` (latest checkpoint,
  or ``step``), on this process's first device. Builds no optimiser or trainer. A
  checkpoint with NaN/Inf parameters (a diverged run) raises ``windows.NonFiniteError``
  naming them: every embedding it gave would be NaN."""
  from jaxclap import checkpoints, tokenizers
  config, variables = checkpoints.open_run(workdir, step)
  try:
    check_variables(variables, f"{workdir} ("
                    + (f"step {step}" if step is not None else "its latest checkpoint") + ")")
  except windows_lib.NonFiniteError as e:
    steps = checkpoints.manager(workdir).all_steps()
    raise windows_lib.NonFiniteError(f"{e}; its checkpoints are of steps {sorted(steps)}"
                                     ) from None
  model = two_towers.from_config(config.model, checkpoints.compute_dtype(config))
  return Model(config, variables, tokenizers.from_config(config.tokenizer), model)


def check_variables(variables: dict, where: str) -> None:
  """Raises ``windows.NonFiniteError`` naming the parameters of ``variables`` that hold
  NaN/Inf (how many arrays, the first few by path)."""
  leaves = jax.tree_util.tree_leaves_with_path(variables)
  bad = [jax.tree_util.keystr(p, simple=True, separator="/") for p, x in leaves
         if not np.all(np.isfinite(np.asarray(x, np.float32)))]
  if bad:
    raise windows_lib.NonFiniteError(
        f"{where}: {len(bad)} of {len(leaves)} parameter arrays hold NaN/Inf ("
        + ", ".join(bad[:3]) + (", ..." if len(bad) > 3 else "") + "): the run diverged "
        "before this checkpoint; load an earlier step (jaxclap.load(workdir, step=N)) or "
        "retrain with a lower optim.lr")
