r"""A jaxclap towers export in PyTorch: ``ClapModelTorch.from_pretrained(OUT)``.

``python -m jaxclap.export --workdir=RUN --out=OUT`` writes a spectrogram-ViT, CNN14 or
HTS-AT run (one ClapModel cannot hold) tower by tower (``jaxclap.export.export_towers``):
``OUT/audio`` a transformers ``ViTMAEModel``, a transformers ``ClapAudioModel`` (HTS-AT)
or this module's ``Cnn14Torch`` (PANNs' key names),
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

DECODER_CLASSES = ("Qwen3Model", "Gemma3TextModel")
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


class _Cnn14Block(nn.Module):
  """PANNs' ConvBlock: (3x3 conv without bias -> BatchNorm2d -> ReLU) x 2, then a pool."""

  def __init__(self, cin: int, cout: int, eps: float):
    super().__init__()
    self.conv1 = nn.Conv2d(cin, cout, (3, 3), padding=(1, 1), bias=False)
    self.conv2 = nn.Conv2d(cout, cout, (3, 3), padding=(1, 1), bias=False)
    self.bn1 = nn.BatchNorm2d(cout, eps=eps)
    self.bn2 = nn.BatchNorm2d(cout, eps=eps)

  def forward(self, x, valid, pool: int):
    for conv, bn in ((self.conv1, self.bn1), (self.conv2, self.bn2)):
      if valid is not None:
        x = x * valid[:, None, :, None]
      x = nn.functional.relu(bn(conv(x)))
    return nn.functional.avg_pool2d(x, pool) if pool > 1 else x


class Cnn14Torch(nn.Module):
  """jaxclap's CNN14 audio tower (``jaxclap.models.cnn14.Cnn14``) in PyTorch, inference
  only (eval-mode batch norm with the running statistics, no dropout).

  PANNs' / msclap's module layout and state-dict key names (``bn0.*``,
  ``conv_block{i}.conv{j}.weight``, ``conv_block{i}.bn{j}.*``, ``fc1.*``), without the
  torchlibrosa front end and the AudioSet classifier: it takes the log-mel [b, T, n_mels]
  that ``ClapModelTorch.features`` computes. ``bn0`` normalises per mel bin; six blocks
  (2x2 average pool after all but the last); mean over mel; max + mean over time; ``fc1``
  + ReLU -> [b, embed_dim].

  ``frames`` (int [b], real frames per clip; None = all real) has the Flax tower's
  meaning: before every conv of block k (0-based) the time steps at or past
  ``frames // 2**k`` are zeroed, and the time max / mean read the steps before
  ``frames // 2**(blocks - 1)`` only (always at least the first). So a zero-padded clip
  embeds as the clip alone.

  ``Cnn14Torch.from_pretrained(folder)`` reads ``config.json`` (``channels``,
  ``embed_dim``, ``mel_bins``, ``bn_eps``) and ``model.safetensors``; ``save_pretrained``
  writes them.
  """

  def __init__(self, channels: Sequence[int], embed_dim: int, mel_bins: int,
               bn_eps: float = 1e-5):
    super().__init__()
    self.config = dict(channels=[int(c) for c in channels], embed_dim=int(embed_dim),
                       mel_bins=int(mel_bins), bn_eps=float(bn_eps))
    self.bn0 = nn.BatchNorm2d(mel_bins, eps=bn_eps)
    self.blocks = len(channels)
    for i, (cin, cout) in enumerate(zip((1,) + tuple(channels[:-1]), channels)):
      setattr(self, f"conv_block{i + 1}", _Cnn14Block(cin, cout, bn_eps))
    self.fc1 = nn.Linear(channels[-1], embed_dim)
    self.eval()

  @classmethod
  def from_pretrained(cls, folder: str) -> "Cnn14Torch":
    from safetensors.torch import load_file
    with open(os.path.join(folder, "config.json")) as f:
      cfg = json.load(f)
    model = cls(cfg["channels"], cfg["embed_dim"], cfg["mel_bins"], cfg.get("bn_eps", 1e-5))
    model.load_state_dict(load_file(os.path.join(folder, "model.safetensors")), strict=True)
    return model.eval()

  def save_pretrained(self, folder: str) -> None:
    from safetensors.torch import save_file
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "config.json"), "w") as f:
      json.dump({"class": "Cnn14Torch", **self.config}, f, indent=2)
    save_file({k: v.contiguous() for k, v in self.state_dict().items()},
              os.path.join(folder, "model.safetensors"))

  def forward(self, spec: torch.Tensor, frames: torch.Tensor | None = None) -> torch.Tensor:
    """spec: [b, T, n_mels] log-mel; frames: int [b] real frames -> [b, embed_dim]."""
    mask = lambda length, level: None if frames is None else (
        torch.arange(length)[None, :] < (frames // 2 ** level)[:, None]).to(spec.dtype)
    x = self.bn0(spec.transpose(1, 2)[..., None])[..., 0].transpose(1, 2)   # per mel bin
    x = x[:, None]                                                          # [b, 1, T, F]
    for i in range(self.blocks):
      x = getattr(self, f"conv_block{i + 1}")(x, mask(x.shape[2], i),
                                              2 if i < self.blocks - 1 else 1)
    seq = x.mean(dim=3).transpose(1, 2)                                     # [b, t', c]
    valid = mask(seq.shape[1], self.blocks - 1)
    if valid is None:
      pooled = seq.max(dim=1).values + seq.mean(dim=1)
    else:
      valid = valid.clone()
      valid[:, 0] = 1.0
      valid = valid[..., None]
      peak = torch.where(valid > 0, seq, torch.finfo(seq.dtype).min).max(dim=1).values
      pooled = peak + (seq * valid).sum(1) / valid.sum(1)
    return nn.functional.relu(self.fc1(pooled))


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
    self.audio_class, self.audio_pooling = a["class"], a["pooling"]
    self.patch = int(a.get("patch", 0))
    if a["class"] == "Cnn14Torch":
      self.audio = Cnn14Torch.from_pretrained(os.path.join(folder, a["path"]))
    else:
      self.audio = getattr(transformers, a["class"]).from_pretrained(
          os.path.join(folder, a["path"])).eval()
    self.text_pooling = t["pooling"]
    self.decoder_text = t["class"] in DECODER_CLASSES
    extra = {} if self.decoder_text else {"add_pooling_layer": bool(t["add_pooling_layer"])}
    self.text = getattr(transformers, t["class"]).from_pretrained(
        os.path.join(folder, t["path"]), **extra).eval()
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
    """The audio tower's pooled output for [b, frames, n_mels] features: ViTMAEModel in
    tile order with padding tiles masked; ClapAudioModel's ``pooler_output`` for
    ``input_features`` [b, 1, T, F] (HTS-AT has no mask: it sees the padded image, as
    jaxclap's); Cnn14Torch with the real ``frames``."""
    if self.audio_class == "ClapAudioModel":
      return self.audio(input_features=spec[:, None]).pooler_output
    if self.audio_class == "Cnn14Torch":
      return self.audio(spec, frames)
    b, t, m = spec.shape
    p = self.patch
    valid = (torch.arange(t // p) * p)[None, :] < frames[:, None]          # [b, t/p]
    valid = valid.repeat_interleave(m // p, dim=1)                        # time-major tiles
    mask = torch.cat([torch.ones(b, 1, dtype=torch.long), valid.long()], dim=1)
    noise = torch.arange(valid.shape[1], dtype=torch.float32)[None].expand(b, -1)
    h = self.audio(pixel_values=spec[:, None], noise=noise, attention_mask=mask).last_hidden_state
    if self.audio_pooling == "cls":
      return h[:, 0]
    w = valid[..., None].to(h.dtype)
    return (h[:, 1:] * w).sum(1) / torch.clamp(w.sum(1), min=1.0)

  # -- audio

  def _load(self, clip, sample_rate) -> np.ndarray:
    if isinstance(clip, (str, os.PathLike)):
      import soundfile as sf
      wave, sr = sf.read(str(clip), dtype="float32", always_2d=True)
      wave = wave.mean(axis=1)
    else:
      wave = clip.detach().cpu().numpy() if torch.is_tensor(clip) else clip
      wave, sr = np.asarray(wave, np.float32), sample_rate or self.sample_rate
      if wave.ndim != 1:
        raise ValueError(f"a waveform must be 1-D [samples], got shape {wave.shape}")
    if wave.size == 0 or not np.all(np.isfinite(wave)):
      raise ValueError("a clip is empty or has NaN/Inf")
    if int(sr) != self.sample_rate:
      raise ValueError(f"audio at {sr} Hz: resample to {self.sample_rate} Hz first "
                       "(jaxclap's on-device resampler is not part of the export)")
    return wave

  @torch.no_grad()
  def embed_audio(self, clips: Any, sample_rate: int | None = None,
                  batch_size: int = 32) -> np.ndarray:
    clips = windows_lib.clip_list(clips)
    waves, lens, owner = [], [], []
    for i, clip in enumerate(clips):
      w, l = windows_lib.windows(self._load(clip, sample_rate), self.window, self.hop, self.pad)
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
      if self.decoder_text:   # positions 0..t-1, causal + padding mask, as DecoderTower
        o = self.text(input_ids=ids, attention_mask=mask)
      else:
        o = self.text(input_ids=ids, attention_mask=mask, token_type_ids=torch.zeros_like(ids))
      h = o.last_hidden_state
      if self.text_pooling == "last":   # the last real token (right or left padding)
        last = torch.where(mask.bool(), torch.arange(ids.shape[1])[None], 0).max(1).values
        pooled = h[torch.arange(h.shape[0]), last]
      elif self.text_pooling == "pooler":
        pooled = o.pooler_output
      elif self.text_pooling == "cls":
        pooled = h[:, 0]
      else:
        m = mask[..., None].to(h.dtype)
        pooled = (h * m).sum(1) / torch.clamp(m.sum(1), min=1.0)
      out.append(_l2norm(self.text_head(pooled)).numpy())
    return np.concatenate(out)

  def zero_shot(self, clips: Any, prompts: Sequence[str],
                sample_rate: int | None = None) -> np.ndarray:
    """Softmax over ``prompts`` of the scaled similarities, per clip: [n_clips, n_prompts]."""
    logits = self.logit_scale * self.embed_audio(clips, sample_rate) @ self.embed_text(prompts).T
    return scipy.special.softmax(logits, axis=1)
