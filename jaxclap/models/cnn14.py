"""CNN14 (PANNs, Kong et al. 2020) audio tower, as the original Microsoft CLAP uses it.

msclap's CLAP 2022 encodes audio with PANNs' CNN14 and projects its 2048-d ``embedding``:
a BatchNorm over the mel bins (``bn0``), six conv blocks (two 3x3 convs without bias,
each followed by BatchNorm and ReLU, then a 2x2 average pool; the last block does not
pool), the mean over mel, max + mean over time, and ``fc1`` (2048 -> 2048) with ReLU.
Dropout as in PANNs: 0.2 after every block, 0.5 before ``fc1`` and on the embedding.
msclap's Cnn14 also returns AudioSet ``clipwise_output`` through ``fc_audioset``; CLAP
never uses it, so the tower has no classifier and ``import_torch`` drops those weights.

Input: log-mel in dB, [b, frames, n_mels] (time first, like every jaxclap audio tower),
without normalisation: ``bn0`` is the normalisation. msclap computes it with torchlibrosa
(``features_config`` gives the settings for ``two_towers.spectrogram``).

Padding: ``frames`` (real frames per clip) makes the tower ignore zero-padding exactly.
Before every conv the positions past the clip's end at that resolution (``frames // 2**k``
after k pools) are zeroed, which is the zero "same" padding the conv applies at the end
of an unpadded clip, and the time pooling covers real steps only. A padded clip's
embedding is therefore the embedding of the clip alone (msclap never pads: it repeats a
short clip to the 5 s window; a data pipeline with ``pad="repeat"`` reproduces that).

Batch norm keeps PyTorch's semantics and jaxclap's HTS-AT convention: scale and bias are
``params``, the running mean / variance live in the ``batch_stats`` collection, so a call
stays a pure function of its variables. ``deterministic=True`` (evaluation, pretrained
checkpoints) normalises with the running statistics. ``deterministic=False`` normalises
with the batch's statistics over its real positions, as PANNs and msclap train (under jit
on a mesh these are global-batch statistics), unless ``batch_norm_train_stats=False``,
which keeps the stored statistics in training too: the choice for fine-tuning a pretrained
CNN14 with small per-device batches, where training and evaluation then run the same
forward pass. Running statistics are updated (momentum 0.1, unbiased variance, like
``torch.nn.BatchNorm2d``) only when the caller makes the collection mutable,
``apply(..., mutable=["batch_stats"])``, and returns the new values with the output.
"""

from __future__ import annotations

from typing import Any, Mapping

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from jaxclap.models import convert, towers
from jaxclap.models.batch_norm import BatchNorm
from jaxclap.models.convert import Rules, ident, linear_t
from jaxclap.models.transformer import logical

BN_EPS = 1e-5           # PyTorch BatchNorm2d's default, which PANNs and msclap keep
CHANNELS = (64, 128, 256, 512, 1024, 2048)

# msclap CLAP 2022 (configs/config_2022.yml) front end: torchlibrosa Spectrogram +
# LogmelFilterBank with these arguments, power_to_db(ref=1, amin=1e-10, top_db=None).
# Its yml says n_fft: 1028, but Cnn14 builds the STFT from window_size (1024).
MSCLAP_SAMPLE_RATE = 44100
MSCLAP_WINDOW = 1024
MSCLAP_HOP = 320
MSCLAP_MELS = 64
MSCLAP_FMIN = 50.0
MSCLAP_FMAX = 14000.0
MSCLAP_SECONDS = 5.0    # msclap's clip window (shorter clips are repeated to fill it)


def features_config(sample_rate: int = MSCLAP_SAMPLE_RATE) -> dict:
  """``config.features`` for msclap's log-mel (``two_towers.spectrogram``); sample_rate is
  that of the stored waveforms (resampled on the device to 44.1 kHz).

  One difference remains: torchlibrosa's STFT reflect-pads the signal ends
  (``pad_mode="reflect"``), ``two_towers.spectrogram`` zero-pads, so the first and last
  frame or two differ slightly from msclap's.
  """
  return dict(kind="logmel", sample_rate=int(sample_rate), target_rate=MSCLAP_SAMPLE_RATE,
              res_type="polyphase", pad_mode="constant", n_fft=MSCLAP_WINDOW, win_length=MSCLAP_WINDOW, hop_length=MSCLAP_HOP,
              n_mels=MSCLAP_MELS, fmin=MSCLAP_FMIN, fmax=MSCLAP_FMAX,
              norm_mean=0.0, norm_std=1.0,   # raw dB: bn0 normalises
              frames_multiple=1)


def _time_mask(frames, length: int, level: int):
  """[b, length] 1 where a step at resolution ``level`` (after ``level`` 2x pools) is
  real audio; None when every frame is real."""
  if frames is None:
    return None
  return (jnp.arange(length)[None, :] < (frames // 2 ** level)[:, None]).astype(jnp.float32)


class ConvBlock(nn.Module):
  features: int
  pool: int = 2
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, valid, use_batch_stats: bool):
    for i in (1, 2):
      # The single-channel input of the first conv cannot be FSDP-sharded; the others
      # shard in/out channels like a dense layer's embed/mlp.
      in_axis = None if x.shape[-1] == 1 else "embed"
      if valid is not None:
        x = x * valid[:, :, None, None].astype(x.dtype)
      x = nn.Conv(self.features, (3, 3), padding=((1, 1), (1, 1)), use_bias=False,
                  dtype=self.dtype, name=f"conv{i}",
                  kernel_init=logical(nn.initializers.xavier_uniform(), None, None,
                                      in_axis, "mlp"))(x)
      x = nn.relu(BatchNorm("mlp", epsilon=BN_EPS, dtype=self.dtype, name=f"bn{i}")(x, use_batch_stats, valid))
    if self.pool > 1:
      x = nn.avg_pool(x, (self.pool, self.pool), strides=(self.pool, self.pool))
    return x


class Cnn14(nn.Module):
  """PANNs CNN14; ``channels``/``embed_dim`` shrink it for tests, defaults are msclap's."""
  channels: tuple[int, ...] = CHANNELS
  embed_dim: int = 2048                # fc1 width (msclap's out_emb)
  block_dropout: float = 0.2
  fc_dropout: float = 0.5
  batch_norm_train_stats: bool = True  # see the module docstring
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, spec, frames=None, deterministic: bool = True):
    """spec: [b, T, n_mels] log-mel dB; frames: int [b] real frames (None = all real).
    Returns (embedding [b, embed_dim], the time sequence the pooling reads: mel-averaged
    features [b, T // 2**(len(channels)-1), channels[-1]])."""
    batch_stats = not deterministic and self.batch_norm_train_stats
    _, t, n_mels = spec.shape
    shrink = 2 ** (len(self.channels) - 1)
    if t < shrink or n_mels < shrink:
      raise ValueError(f"CNN14 with {len(self.channels)} blocks needs at least {shrink} "
                       f"frames and mel bins, got {t} x {n_mels}")
    drop = lambda rate, y: nn.Dropout(rate)(y, deterministic=deterministic)

    # bn0 normalises each mel bin over batch and time (PANNs transposes mel into the
    # channel slot of BatchNorm2d for it).
    x = BatchNorm(None, epsilon=BN_EPS, dtype=self.dtype, name="bn0")(
        spec, batch_stats, _time_mask(frames, t, 0))[..., None]
    for i, c in enumerate(self.channels):
      pool = 2 if i < len(self.channels) - 1 else 1
      x = ConvBlock(c, pool, self.dtype, name=f"conv_block{i + 1}")(
          x, _time_mask(frames, x.shape[1], i), batch_stats)
      x = drop(self.block_dropout, x)

    seq = jnp.mean(x, axis=2)                              # over mel: [b, t', c]
    valid = _time_mask(frames, seq.shape[1], len(self.channels) - 1)
    if valid is None:
      pooled = jnp.max(seq, axis=1) + jnp.mean(seq, axis=1)
    else:
      # A clip shorter than one final step still keeps its first (partly real) step.
      valid = valid.at[:, 0].set(1.0)[..., None]
      peak = jnp.max(jnp.where(valid > 0, seq, jnp.finfo(seq.dtype).min), axis=1)
      pooled = peak + jnp.sum(seq * valid, axis=1) / jnp.sum(valid, axis=1)
    h = drop(self.fc_dropout, pooled)
    h = nn.relu(nn.Dense(self.embed_dim, dtype=self.dtype, name="fc1",
                         kernel_init=logical(nn.initializers.xavier_uniform(), "embed", "mlp"),
                         bias_init=logical(nn.initializers.zeros, "mlp"))(h))
    return drop(self.fc_dropout, h), seq


# --------------------------------------------------------------------------- import

_BN = (("scale", "weight"), ("bias", "bias"))
_BN_STATS = (("mean", "running_mean"), ("var", "running_var"))
conv_t = lambda a, shape: a.transpose(2, 3, 1, 0)     # [out, in, kt, kf] -> [kt, kf, in, out]


def rules(num_blocks: int = len(CHANNELS)) -> Rules:
  """PANNs / msclap Cnn14 keys (without the model prefix) for our ``{"params",
  "batch_stats"}`` variables."""
  P, S = ("params",), ("batch_stats",)

  def bn(ours: tuple[str, ...], theirs: str) -> Rules:
    r = {P + ours + (a,): (f"{theirs}.{b}", ident) for a, b in _BN}
    r.update({S + ours + (a,): (f"{theirs}.{b}", ident) for a, b in _BN_STATS})
    return r

  r: Rules = bn(("bn0",), "bn0")
  for i in range(1, num_blocks + 1):
    block = f"conv_block{i}"
    for j in (1, 2):
      r[P + (block, f"conv{j}", "kernel")] = (f"{block}.conv{j}.weight", conv_t)
      r.update(bn((block, f"bn{j}"), f"{block}.bn{j}"))
  r[P + ("fc1", "kernel")] = ("fc1.weight", linear_t)
  r[P + ("fc1", "bias")] = ("fc1.bias", ident)
  return r


def _ignored(key: str) -> bool:
  # The STFT / mel front end (frozen buffers: features are computed on the device), the
  # AudioSet classifier CLAP does not use, and BatchNorm's step counter.
  return (key.startswith(("spectrogram_extractor.", "logmel_extractor.", "fc_audioset."))
          or key.endswith("num_batches_tracked"))


def import_torch(state_dict: Mapping[str, np.ndarray], target: Mapping, *,
                 where: str = "checkpoint", prefix: str | None = None) -> dict:
  """PANNs / msclap Cnn14 weights -> our variables.

  ``target``: the tower's ``{"params": ..., "batch_stats": ...}`` (arrays or
  ShapeDtypeStructs from ``jax.eval_shape(tower.init, ...)``); the number of blocks is
  read off it. Keys may carry any prefix before ``conv_block1.conv1.weight`` (msclap's
  CLAP checkpoints hold the tower under ``audio_encoder.base.``; ``prefix=`` picks one
  explicitly); keys outside it (the projection, the text encoder) are left alone. The
  STFT/mel buffers, ``fc_audioset`` and ``num_batches_tracked`` are dropped; anything else
  missing, unexpected or mis-shaped raises ``CheckpointMismatch`` naming the key.
  """
  if not isinstance(target, Mapping) or "params" not in target or "batch_stats" not in target:
    raise TypeError("cnn14.import_torch needs the tower's variables {'params', 'batch_stats'} "
                    "(batch norm running statistics live in 'batch_stats')")
  target = {"params": target["params"], "batch_stats": target["batch_stats"]}
  prefix = convert._find_prefix(state_dict, "conv_block1.conv1.weight", prefix, where)
  num_blocks = sum(1 for k in nn.meta.unbox(target["params"]) if k.startswith("conv_block"))
  return convert.apply_rules(rules(num_blocks), state_dict, target, prefix=prefix,
                             ignore=_ignored, where=where)


# --------------------------------------------------------------------------- export

_INVERSE = {**convert.INVERSE, id(conv_t): lambda a: a.transpose(3, 2, 0, 1)}


def export_torch(variables: Mapping, *, prefix: str = "",
                 num_batches_tracked: bool = True) -> dict[str, np.ndarray]:
  """Our ``{"params", "batch_stats"}`` -> a PANNs / msclap Cnn14 state dict (float32
  numpy, keys ``prefix`` + PANNs' names: ``bn0.*``, ``conv_block{i}.conv{j}.weight``,
  ``conv_block{i}.bn{j}.*``, ``fc1.*``), the inverse of ``import_torch``. The front-end
  buffers and ``fc_audioset`` are not written (the tower has none);
  ``num_batches_tracked`` (0, int64) is, so a ``BatchNorm2d`` layout loads strictly."""
  v = nn.meta.unbox({"params": variables["params"], "batch_stats": variables["batch_stats"]})
  num_blocks = sum(1 for k in v["params"] if k.startswith("conv_block"))
  flat = {}
  for path, (key, fn) in rules(num_blocks).items():
    node = v
    for part in path:
      node = node[part]
    flat[prefix + key] = np.ascontiguousarray(_INVERSE[id(fn)](np.asarray(node, np.float32)))
  if num_batches_tracked:
    bns = ["bn0"] + [f"conv_block{i}.bn{j}" for i in range(1, num_blocks + 1) for j in (1, 2)]
    flat.update({f"{prefix}{b}.num_batches_tracked": np.array(0, np.int64) for b in bns})
  return flat


# ------------------------------------------------- the towers export (jaxclap.export)


def _export(config: Any, variables: Mapping, out: str) -> dict:
  """OUT/audio as ``jaxclap.models.cnn14_torch.Cnn14Torch`` in PANNs' key names; called
  with the real frames (padding masked as ``Cnn14`` does)."""
  import os
  from jaxclap.models.cnn14_torch import Cnn14Torch
  tower = towers.module(config.model.audio)
  convert.save_strict(Cnn14Torch(tower.channels, tower.embed_dim, int(config.features.n_mels),
                                 BN_EPS), export_torch(variables), os.path.join(out, "audio"))
  return {"class": "Cnn14Torch", "module": "jaxclap.models.cnn14_torch", "path": "audio",
          "inputs": "spec_frames", "pooling": "max+mean over real frames"}


def _import_export(config: Any, folder: str, target: Mapping) -> dict:
  import os
  where = os.path.join(folder, "audio")
  return import_torch(convert.load_state_dict(where), target, prefix="", where=where)


# -------------------------------------------------------------------------- registration

towers.register(towers.Tower(
    name="cnn14", side="audio", module=Cnn14, import_torch=import_torch,
    torch_class="Cnn14Torch",   # jaxclap.models.cnn14_torch's: transformers has no CNN14
    export_torch=_export, import_export=_import_export,
    presets={"cnn14": dict(name="cnn14")},
    # The miniature drops PANNs' dropout (0.2 per block, 0.5 before fc1): on 8-32
    # channels it keeps a from-scratch CNN14 near chance for hundreds of steps.
    runlocal={"cnn14": dict(channels=(8, 16, 16, 16, 16, 32), embed_dim=24,
                            block_dropout=0.0, fc_dropout=0.0)}))
