"""The CNN14 tower against a PyTorch CNN14 with msclap's module layout and key names.

Neither msclap nor laion-clap (which ships its own PANNs copy) installs next to our stack:
msclap 1.3.4 requires numpy<2, transformers<5, librosa<0.11 and torchaudio; laion-clap
1.1.7 would downgrade numpy to 1.26 and pull wandb & co. So ``RefCnn14`` below transcribes
msclap.models.audio.Cnn14 (ConvBlock, bn0 over mel, six blocks, mean over mel, max + mean
over time, fc1 + ReLU) minus its torchlibrosa front end: it takes the log-mel directly.
Its state_dict keys are msclap's; the test adds the front-end buffers, the classifier and
the CLAP wrapper prefix a real checkpoint carries.

Tolerance: max abs difference <= 1e-4 in float32 (embeddings are O(1): BatchNorm
statistics are calibrated on the input, then perturbed, so every layer stays O(1)).
"""

import jax
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from jaxclap.models import cnn14, convert

SMALL = dict(channels=(8, 16, 16, 16, 16, 32), embed_dim=24)


class ConvBlock(torch.nn.Module):
  def __init__(self, cin, cout):
    super().__init__()
    self.conv1 = torch.nn.Conv2d(cin, cout, (3, 3), stride=(1, 1), padding=(1, 1), bias=False)
    self.conv2 = torch.nn.Conv2d(cout, cout, (3, 3), stride=(1, 1), padding=(1, 1), bias=False)
    self.bn1 = torch.nn.BatchNorm2d(cout)
    self.bn2 = torch.nn.BatchNorm2d(cout)

  def forward(self, x, pool_size):
    x = F.relu_(self.bn1(self.conv1(x)))
    x = F.relu_(self.bn2(self.conv2(x)))
    return F.avg_pool2d(x, kernel_size=pool_size)


class RefCnn14(torch.nn.Module):
  def __init__(self, channels=cnn14.CHANNELS, embed_dim=2048, mel_bins=64, classes_num=527,
               p_block=0.2, p_fc=0.5):
    super().__init__()
    self.p_block, self.p_fc = p_block, p_fc
    self.bn0 = torch.nn.BatchNorm2d(mel_bins)
    cins = (1,) + tuple(channels[:-1])
    self.blocks = len(channels)
    for i, (cin, cout) in enumerate(zip(cins, channels)):
      setattr(self, f"conv_block{i + 1}", ConvBlock(cin, cout))
    self.fc1 = torch.nn.Linear(channels[-1], embed_dim, bias=True)
    self.fc_audioset = torch.nn.Linear(embed_dim, classes_num, bias=True)

  def forward(self, logmel):
    """logmel: [b, T, mel] -> (embedding [b, embed], time sequence [b, T', c])."""
    x = logmel[:, None]                        # (batch, 1, time, mel) as after torchlibrosa
    x = self.bn0(x.transpose(1, 3)).transpose(1, 3)
    for i in range(self.blocks):
      pool = (2, 2) if i < self.blocks - 1 else (1, 1)
      x = getattr(self, f"conv_block{i + 1}")(x, pool)
      x = F.dropout(x, p=self.p_block, training=self.training)
    x = torch.mean(x, dim=3)
    seq = x.transpose(1, 2)
    (x1, _) = torch.max(x, dim=2)
    x2 = torch.mean(x, dim=2)
    x = F.dropout(x1 + x2, p=self.p_fc, training=self.training)
    x = F.relu_(self.fc1(x))
    return F.dropout(x, p=self.p_fc, training=self.training), seq


def _reference(spec, seed=0, **kw):
  """Random weights (PANNs' xavier init) and BN affines; BN statistics calibrated on
  ``spec`` (so every layer stays O(1)) then perturbed; eval mode."""
  torch.manual_seed(seed)
  ref = RefCnn14(mel_bins=spec.shape[-1], **kw)
  bns = [m for m in ref.modules() if isinstance(m, torch.nn.BatchNorm2d)]
  with torch.no_grad():
    for m in ref.modules():
      if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
        torch.nn.init.xavier_uniform_(m.weight)
        if m.bias is not None:
          torch.nn.init.normal_(m.bias, std=0.1)
    for m in bns:
      m.weight.uniform_(0.5, 1.5)
      m.bias.normal_(0.0, 0.2)
      m.momentum = 1.0                                # running stats := this batch's
    p_block, p_fc = ref.p_block, ref.p_fc
    ref.p_block = ref.p_fc = 0.0
    ref.train()(torch.tensor(spec))
    ref.p_block, ref.p_fc = p_block, p_fc
    for m in bns:
      n = m.num_features
      m.running_mean += 0.1 * torch.randn(n) * m.running_var.sqrt()
      m.running_var *= torch.empty(n).uniform_(0.8, 1.25)
      m.momentum = 0.1
  return ref.eval()


def _msclap_state_dict(ref, prefix="audio_encoder.base."):
  """What msclap's CLAP checkpoint holds for the tower: ours plus the front-end buffers,
  the classifier, BN step counters (already in state_dict) and neighbours outside it."""
  sd = {k: v.detach().numpy().copy() for k, v in ref.state_dict().items()}
  sd["spectrogram_extractor.stft.conv_real.weight"] = np.zeros((513, 1, 1024), np.float32)
  sd["spectrogram_extractor.stft.conv_imag.weight"] = np.zeros((513, 1, 1024), np.float32)
  sd["logmel_extractor.melW"] = np.zeros((513, 64), np.float32)
  out = {prefix + k: v for k, v in sd.items()}
  out["audio_encoder.projection.linear1.weight"] = np.zeros((1024, 2048), np.float32)
  out["caption_encoder.base.embeddings.word_embeddings.weight"] = np.zeros((4, 8), np.float32)
  out["logit_scale"] = np.zeros((), np.float32)
  return out


def _spec(b, t, mels, seed):
  return np.random.default_rng(seed).normal(-45.0, 18.0, (b, t, mels)).astype(np.float32)


def _shapes(tower, spec):
  return jax.eval_shape(lambda: tower.init(jax.random.PRNGKey(0), spec))


def test_msclap_cnn14_matches_reference():
  # 160 frames: the last block sees 5 x 2 maps. (At 4 x 2, XLA:CPU's convolution takes a
  # path ~400x slower than at 5 x 2 for 2048 channels; real clips are longer anyway.)
  spec = _spec(2, 160, 64, 0)
  ref = _reference(spec)
  tower = cnn14.Cnn14()
  variables = cnn14.import_torch(_msclap_state_dict(ref), _shapes(tower, spec))
  run = jax.jit(lambda v, s, f: tower.apply(v, s, f))
  # Clip 1 is zero-padded from 100 to 160 frames: it must embed like the 100-frame clip
  # alone (3 final steps, as PyTorch's floor pooling gives), clip 0 like the full input.
  padded = spec.copy()
  padded[1, 100:] = 0.0
  emb, seq = run(variables, padded, np.array([160, 100], np.int32))
  with torch.no_grad():
    emb_ref, seq_ref = ref(torch.tensor(spec))
    emb_short, seq_short = ref(torch.tensor(spec[1:, :100]))
  assert emb.shape == (2, 2048) and seq.shape == (2, 5, 2048)
  assert np.max(np.abs(emb_ref.numpy())) > 1.0          # not a vacuous comparison
  assert np.max(np.abs(np.asarray(emb[0]) - emb_ref.numpy()[0])) <= 1e-4
  assert np.max(np.abs(np.asarray(seq[0]) - seq_ref.numpy()[0])) <= 1e-4
  assert np.max(np.abs(np.asarray(emb[1]) - emb_short.numpy()[0])) <= 1e-4
  assert np.max(np.abs(np.asarray(seq[1, :3]) - seq_short.numpy()[0])) <= 1e-4


def test_training_batch_norm_matches_torch_train_mode(tmp_path):
  spec = _spec(3, 64, 32, 1)
  ref = _reference(spec, seed=1, p_block=0.0, p_fc=0.0, **SMALL)
  torch.save(ref.state_dict(), tmp_path / "cnn14.pth")           # the file path users take
  tower = cnn14.Cnn14(block_dropout=0.0, fc_dropout=0.0, **SMALL)
  variables = convert.import_tower("cnn14", str(tmp_path / "cnn14.pth"), _shapes(tower, spec))
  keep = cnn14.Cnn14(block_dropout=0.0, fc_dropout=0.0, batch_norm_train_stats=False, **SMALL)

  @jax.jit                                          # one compilation for the four passes
  def passes(v, s):
    (emb, _), updated = tower.apply(v, s, None, deterministic=False, mutable=["batch_stats"])
    return (emb, updated, tower.apply(v, s, None, deterministic=False)[0],
            keep.apply(v, s, None, deterministic=False)[0], tower.apply(v, s, None)[0])

  emb, updated, emb_pure, emb_keep, emb_eval = passes(variables, spec)
  ref.train()                                      # batch statistics, running stats update
  with torch.no_grad():
    emb_ref = ref(torch.tensor(spec))[0].numpy()
  assert np.max(np.abs(np.asarray(emb) - emb_ref)) <= 1e-4
  for ours, theirs in (("bn0", ref.bn0), ("conv_block3/bn1", ref.conv_block3.bn1)):
    stats = updated["batch_stats"]
    for name in ours.split("/"):
      stats = stats[name]
    np.testing.assert_allclose(stats["mean"], theirs.running_mean.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(stats["var"], theirs.running_var.numpy(), rtol=1e-5, atol=1e-5)

  # Without a mutable collection the call is pure and normalises the same way;
  # batch_norm_train_stats=False keeps the stored statistics in training (= evaluation).
  np.testing.assert_allclose(emb_pure, emb, rtol=0, atol=1e-6)
  np.testing.assert_allclose(emb_keep, emb_eval, rtol=0, atol=1e-6)
  assert np.max(np.abs(np.asarray(emb_eval) - emb_ref)) > 1e-2


def test_bad_checkpoints_are_named():
  spec = _spec(2, 64, 32, 2)
  ref = _reference(spec, seed=2, **SMALL)
  sd = _msclap_state_dict(ref)
  shapes = _shapes(cnn14.Cnn14(**SMALL), spec)
  cnn14.import_torch(sd, shapes)                                 # the intact one loads

  broken = dict(sd)
  del broken["audio_encoder.base.conv_block4.bn2.running_var"]
  with pytest.raises(convert.CheckpointMismatch,
                     match=r"missing key 'audio_encoder.base.conv_block4.bn2.running_var' "
                           r"\(for batch_stats/conv_block4/bn2/var, shape \(16,\)\)"):
    cnn14.import_torch(broken, shapes)
  broken = dict(sd, **{"audio_encoder.base.conv_block2.conv1.weight": np.zeros((16, 4, 3, 3), np.float32)})
  with pytest.raises(convert.CheckpointMismatch,
                     match=r"'audio_encoder.base.conv_block2.conv1.weight' has shape \(16, 4, 3, 3\), "
                           r"but params/conv_block2/conv1/kernel needs \(3, 3, 8, 16\)"):
    cnn14.import_torch(broken, shapes)
  broken = dict(sd, **{"audio_encoder.base.fc1.weight": np.zeros((24, 32, 1), np.float32)})
  with pytest.raises(convert.CheckpointMismatch, match=r"'audio_encoder.base.fc1.weight' has shape \(24, 32, 1\)"):
    cnn14.import_torch(broken, shapes)
  broken = dict(sd, **{"audio_encoder.base.conv_block7.conv1.weight": np.zeros(3, np.float32)})
  with pytest.raises(convert.CheckpointMismatch,
                     match=r"unexpected keys \['audio_encoder.base.conv_block7.conv1.weight'\]"):
    cnn14.import_torch(broken, shapes)
  with pytest.raises(convert.CheckpointMismatch, match="no key ending in 'conv_block1.conv1.weight'"):
    cnn14.import_torch({"encoder.layer.0.weight": np.zeros(3)}, shapes)


def test_features_config_and_short_input():
  cfg = cnn14.features_config(16000)
  assert (cfg["target_rate"], cfg["n_fft"], cfg["hop_length"], cfg["n_mels"]) == (44100, 1024, 320, 64)
  assert (cfg["fmin"], cfg["fmax"], cfg["norm_mean"], cfg["norm_std"]) == (50.0, 14000.0, 0.0, 1.0)
  with pytest.raises(ValueError, match="at least 32 frames and mel bins, got 16 x 64"):
    cnn14.Cnn14(**SMALL).init(jax.random.PRNGKey(0), np.zeros((1, 16, 64), np.float32))
