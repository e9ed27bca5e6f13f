r"""A jaxclap towers export in PyTorch: ``ClapModelTorch.from_pretrained(OUT)``.

``python -m jaxclap.export --workdir=RUN --out=OUT`` writes a spectrogram-ViT, CNN14 or
HTS-AT run (one ClapModel cannot hold) tower by tower (``jaxclap.export.export_towers``):
``OUT/audio`` a transformers ``ViTMAEModel``, a transformers ``ClapAudioModel`` (HTS-AT)
or ``jaxclap.models.cnn14_torch.Cnn14Torch`` (PANNs' key names),
``OUT/text`` a ``BertModel`` / ``RobertaModel`` (or ``Qwen3Model`` /
``Gemma3TextModel`` for decoder text towers) with its tokenizer, ``heads.safetensors``,
``frontend.safetensors`` (STFT window, Slaney mel matrix) and ``jaxclap_export.json``.
This module serves that folder with PyTorch and transformers only (no JAX import):

  model = ClapModelTorch.from_pretrained(OUT)
  model.embed_audio(clips, sample_rate=None)   -> [n, d] L2-normalised (numpy)
  model.embed_text(["a fast, high-pitched female voice"])   -> [m, d]
  model.zero_shot(clips, prompts)              -> [n, m] probabilities

with ``jaxclap.load(RUN)``'s semantics (``jaxclap.inference``): ``clips`` are file paths
and/or 1-D float waveforms (or one [n, samples] array) at ``input.sample_rate``; a clip
longer than the window is cut into windows with a half-window hop, the windows'
embeddings averaged and re-normalised; a shorter one is zero-padded or repeated then
zero-padded (``input.pad``), its real frames masking the padding tiles out of the ViT's
attention and pooling; texts are tokenized to ``input.max_text_len`` tokens; the heads
are ``linear`` or Linear-activation-Linear; the logit scale is ``exp`` of the stored
parameter clamped to [0, ln 100].

The front end is jaxclap's log-mel in torch: ``torch.stft`` (centre padding "constant" or
"reflect", the periodic Hann window of ``win_length`` centred in ``n_fft`` as librosa),
power spectrum times librosa's Slaney mel matrix (both stored at export), ``10 log10(
max(mel, 1e-10))``, ``(dB - norm_mean) / norm_std``, the frame axis cropped to a multiple
of ``frames_multiple``; real frames = ``samples // hop_length + 1``.

The ViT runs through ``ViTMAEModel`` itself: ``noise=arange(tiles)`` keeps the tiles in
order (argsort of an increasing noise is the identity; ``mask_ratio=0`` keeps them all)
and ``attention_mask`` [b, 1 + tiles] masks the padding tiles, so padded clips match.
HTS-AT runs through ``ClapAudioModel`` on ``input_features`` = our normalised log-mel
[b, 1, T, F] (no mask: HTS-AT sees the padded image, in jaxclap too); its
``pooler_output`` is the pooled output. CNN14 runs through ``Cnn14Torch`` with the real
frames, which zero the padding before every conv and keep it out of the time pooling.
Resampling is not done here: pass audio at ``input.sample_rate``.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Sequence

import numpy as np
import scipy.special
import torch
from torch import nn

from jaxclap import windows as windows_lib

# How a class of an export is called. The towers' ``export_torch`` (in each tower's model
# file) write the convention beside the class in ``jaxclap_export.json``, so this module
# serves any tower without naming one.


def _tiles(model, entry: dict, spec, frames):
  """A ViT over patch tiles (transformers' ``ViTMAEModel``): ``noise=arange(tiles)`` keeps
  the tiles in order (argsort of an increasing noise is the identity; ``mask_ratio=0``
  keeps them all) and ``attention_mask`` [b, 1 + tiles] masks the padding tiles, so a
  padded clip embeds as in jaxclap. Pooling ``cls`` or the mean over real tiles."""
  b, t, m = spec.shape
  p = int(entry["patch"])
  valid = (torch.arange(t // p) * p)[None, :] < frames[:, None]          # [b, t/p]
  valid = valid.repeat_interleave(m // p, dim=1)                        # time-major tiles
  mask = torch.cat([torch.ones(b, 1, dtype=torch.long), valid.long()], dim=1)
  noise = torch.arange(valid.shape[1], dtype=torch.float32)[None].expand(b, -1)
  h = model(pixel_values=spec[:, None], noise=noise, attention_mask=mask).last_hidden_state
  if entry["pooling"] == "cls":
    return h[:, 0]
  w = valid[..., None].to(h.dtype)
  return (h[:, 1:] * w).sum(1) / torch.clamp(w.sum(1), min=1.0)


def _input_features(model, entry: dict, spec, frames):
  """``input_features`` [b, 1, T, F] -> ``pooler_output`` (transformers'
  ``ClapAudioModel``); no mask: the tower sees the padded image, in jaxclap too."""
  return model(input_features=spec[:, None]).pooler_output


def _spec_frames(model, entry: dict, spec, frames):
  """``model(spec, frames)``: a module that masks the padding frames itself."""
  return model(spec, frames)


AUDIO_INPUTS = {"tiles": _tiles, "input_features": _input_features,
                "spec_frames": _spec_frames}
# Text: an encoder takes token type ids (all 0); a decoder builds its causal + padding
# mask from the attention mask and positions 0..t-1, as jaxclap's DecoderTower.
TEXT_INPUTS = {
    "encoder": lambda model, ids, mask: model(input_ids=ids, attention_mask=mask,
                                              token_type_ids=torch.zeros_like(ids)),
    "decoder": lambda model, ids, mask: model(input_ids=ids, attention_mask=mask)}


def _pool_text(o, mask, pooling: str):
  h = o.last_hidden_state
  if pooling == "last":   # the last real token (right or left padding)
    last = torch.where(mask.bool(), torch.arange(mask.shape[1])[None], 0).max(1).values
    return h[torch.arange(h.shape[0]), last]
  if pooling == "pooler":
    return o.pooler_output
  if pooling == "cls":
    return h[:, 0]
  m = mask[..., None].to(h.dtype)
  return (h * m).sum(1) / torch.clamp(m.sum(1), min=1.0)


def _tower_class(entry: dict):
  """The class an export entry names: ``module`` (default transformers) . ``class``."""
  import importlib
  return getattr(importlib.import_module(entry.get("module", "transformers")), entry["class"])

_ACTS = {"relu": nn.functional.relu, "gelu": nn.functional.gelu,
         "gelu_tanh": lambda x: nn.functional.gelu(x, approximate="tanh"),
         "silu": nn.functional.silu}


class Head(nn.Module):
  """A projection head as exported: ``proj`` (linear) or ``fc_in`` -> act -> ``fc_out``."""

  def __init__(self, sd: dict, name: str, kind: str, activation: str):
    super().__init__()
    self.kind, self.act = kind, _ACTS[activation]
    layers = ("proj",) if kind == "linear" else ("fc_in", "fc_out")
    for layer in layers:
      w, b = sd[f"{name}.{layer}.weight"], sd[f"{name}.{layer}.bias"]
      lin = nn.Linear(w.shape[1], w.shape[0])
      lin.weight.data.copy_(w)
      lin.bias.data.copy_(b)
      setattr(self, layer, lin)

  def forward(self, x):
    if self.kind == "linear":
      return self.proj(x)
    return self.fc_out(self.act(self.fc_in(x)))


def _l2norm(x):
  return x / torch.sqrt((x * x).sum(-1, keepdim=True) + 1e-12)


class ClapModelTorch(nn.Module):
  """A jaxclap towers export (ViT / HTS-AT / CNN14 audio tower, BERT-family or decoder
  text tower) in PyTorch."""

  def __init__(self, folder: str):
    super().__init__()
    import transformers
    from safetensors.torch import load_file
    with open(os.path.join(folder, "jaxclap_export.json")) as f:
      self.meta = meta = json.load(f)
    if meta.get("format") != "jaxclap-towers":
      raise ValueError(f"{folder}: not a jaxclap towers export (a ClapModel export loads "
                       "with transformers.ClapModel.from_pretrained)")
    self.sample_rate = int(meta["input"]["sample_rate"])
    self.window = int(meta["input"]["window"])
    self.hop = int(meta["input"]["hop"])
    self.pad = meta["input"]["pad"]
    self.max_text_len = int(meta["input"]["max_text_len"])
    self.feat = meta["features"]
    fe = load_file(os.path.join(folder, self.feat["file"]))
    self.register_buffer("stft_window", fe["window"])
    self.register_buffer("mel_filters", fe["mel_filters"])

    a, t, h = meta["audio"], meta["text"], meta["heads"]
    for side, entry, known in (("audio", a, AUDIO_INPUTS), ("text", t, TEXT_INPUTS)):
      if entry.get("inputs") not in known:
        raise ValueError(f"{folder}/jaxclap_export.json: {side}.inputs="
                         f"{entry.get('inputs')!r}, known: {sorted(known)} (an export "
                         "written by an older jaxclap: export the run again)")
    self.audio_entry, self.text_entry = a, t
    self.audio = _tower_class(a).from_pretrained(os.path.join(folder, a["path"])).eval()
    extra = ({"add_pooling_layer": bool(t["add_pooling_layer"])}
             if "add_pooling_layer" in t else {})
    self.text = _tower_class(t).from_pretrained(os.path.join(folder, t["path"]),
                                                **extra).eval()
    self.tokenizer = transformers.AutoTokenizer.from_pretrained(os.path.join(folder, t["path"]))
    hsd = load_file(os.path.join(folder, h["file"]))
    self.audio_head = Head(hsd, "audio_head", h["kind"], h["activation"])
    self.text_head = Head(hsd, "text_head", h["kind"], h["activation"])
    self.register_buffer("logit_scale_param", hsd["logit_scale"])
    self.logit_scale = float(np.exp(np.clip(hsd["logit_scale"].numpy(), 0.0,
                                            np.float32(math.log(100.0)))))
    self.eval()

  @classmethod
  def from_pretrained(cls, folder: str) -> "ClapModelTorch":
    return cls(os.fspath(folder))

  # -- front end

  def features(self, wave: torch.Tensor, lengths: torch.Tensor):
    """[b, samples] waveforms, [b] real samples -> (normalised log-mel [b, frames, n_mels],
    real frames [b]), as ``jaxclap.models.two_towers.spectrogram``."""
    f = self.feat
    spec = torch.stft(wave, n_fft=f["n_fft"], hop_length=f["hop_length"],
                      win_length=f["win_length"], window=self.stft_window, center=True,
                      pad_mode=f["pad_mode"], return_complex=True)
    power = spec.real.square() + spec.imag.square()           # [b, bins, frames]
    mel = torch.einsum("mf,bft->btm", self.mel_filters, power)
    db = 10.0 * torch.log10(torch.clamp(mel, min=f["amin"]))
    x = (db - f["norm_mean"]) / f["norm_std"]
    usable = x.shape[1] // f["frames_multiple"] * f["frames_multiple"]
    x = x[:, :usable]
    frames = torch.clamp(lengths // f["hop_length"] + 1, max=usable)
    return x, frames

  def audio_tower(self, spec: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
    """The audio tower's pooled output for [b, frames, n_mels] features, fed as the
    export's ``audio.inputs`` convention says (``AUDIO_INPUTS``)."""
    return AUDIO_INPUTS[self.audio_entry["inputs"]](self.audio, self.audio_entry, spec, frames)

  # -- audio

  def _load(self, clip, sample_rate, i: int) -> np.ndarray:
    wave, sr = windows_lib.read_clip(clip, i, sample_rate or self.sample_rate)
    if sr != self.sample_rate:
      raise ValueError(f"clip {i}: audio at {sr} Hz: resample to {self.sample_rate} Hz first "
                       "(jaxclap's on-device resampler is not part of the export)")
    return wave

  @torch.no_grad()
  def embed_audio(self, clips: Any, sample_rate: int | None = None,
                  batch_size: int = 32) -> np.ndarray:
    clips = windows_lib.clip_list(clips)
    waves, lens, owner = [], [], []
    for i, clip in enumerate(clips):
      w, l = windows_lib.windows(self._load(clip, sample_rate, i), self.window, self.hop,
                                 self.pad)
      waves += w
      lens += l
      owner += [i] * len(w)
    embs = []
    for s in range(0, len(waves), batch_size):
      wb = torch.from_numpy(np.stack(waves[s:s + batch_size]))
      lb = torch.tensor(lens[s:s + batch_size], dtype=torch.long)
      spec, frames = self.features(wb, lb)
      embs.append(_l2norm(self.audio_head(self.audio_tower(spec, frames))).numpy())
    return windows_lib.pool(np.concatenate(embs), np.asarray(owner), len(clips))

  # -- text

  @torch.no_grad()
  def embed_text(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
    if isinstance(texts, str):
      texts = [texts]
    out = []
    for s in range(0, len(texts), batch_size):
      enc = self.tokenizer(list(texts[s:s + batch_size]), padding="max_length",
                           truncation=True, max_length=self.max_text_len, return_tensors="pt")
      ids, mask = enc["input_ids"], enc["attention_mask"]
      o = TEXT_INPUTS[self.text_entry["inputs"]](self.text, ids, mask)
      pooled = _pool_text(o, mask, self.text_entry["pooling"])
      out.append(_l2norm(self.text_head(pooled)).numpy())
    return np.concatenate(out)

  def zero_shot(self, clips: Any, prompts: Sequence[str],
                sample_rate: int | None = None) -> np.ndarray:
    """Softmax over ``prompts`` of the scaled similarities, per clip: [n_clips, n_prompts]."""
    logits = self.logit_scale * self.embed_audio(clips, sample_rate) @ self.embed_text(prompts).T
    return scipy.special.softmax(logits, axis=1)
