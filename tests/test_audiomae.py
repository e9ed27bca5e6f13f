"""AudioMAE weights in ``SpectrogramViT`` against a PyTorch AudioMAE-layout reference.

timm cannot be installed here (timm 1.0 pulls torch 2.14 + torchvision), so ``RefMAE``
below re-states AudioMAE's ``models_mae.MaskedAutoencoderViT`` (decoder_mode=0) with timm
0.3's ``Block`` / ``Attention`` / ``Mlp`` and ``PatchEmbed_org``: the state_dict keys are
AudioMAE's (timm's), positions come from a transcription of AudioMAE's
``get_2d_sincos_pos_embed_flexible`` fed its ``patch_hw`` (including the height/width
swap, ``swap_hw=True``), patchify and the decoder pass are AudioMAE's code.

Tolerance: max abs difference <= 1e-4 (float32) on tokens, pooled outputs and the
decoder's predictions.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from jaxclap.models import audiomae, convert, vit

SMALL = dict(width=64, depth=2, num_heads=4, mlp_dim=256, patch=16, mask_ratio=0.75,
             mae_width=32, mae_depth=1, mae_heads=2)


# -- AudioMAE's util/pos_embed.py, transcribed

def _1d(embed_dim, pos):
  omega = np.arange(embed_dim // 2, dtype=np.float64) / (embed_dim / 2.0)
  omega = 1.0 / 10000 ** omega
  out = np.einsum("m,d->md", pos.reshape(-1), omega)
  return np.concatenate([np.sin(out), np.cos(out)], axis=1)


def get_2d_sincos_pos_embed_flexible(embed_dim, grid_size, cls_token=False):
  grid_h = np.arange(grid_size[0], dtype=np.float32)
  grid_w = np.arange(grid_size[1], dtype=np.float32)
  grid = np.stack(np.meshgrid(grid_w, grid_h), axis=0)      # here w goes first
  grid = grid.reshape([2, 1, grid_size[0], grid_size[1]])
  emb = np.concatenate([_1d(embed_dim // 2, grid[0]), _1d(embed_dim // 2, grid[1])], axis=1)
  if cls_token:
    emb = np.concatenate([np.zeros([1, embed_dim]), emb], axis=0)
  return emb


# -- timm 0.3.2 blocks and AudioMAE's model

class Attention(torch.nn.Module):
  def __init__(self, dim, num_heads):
    super().__init__()
    self.num_heads = num_heads
    self.scale = (dim // num_heads) ** -0.5
    self.qkv = torch.nn.Linear(dim, dim * 3, bias=True)
    self.proj = torch.nn.Linear(dim, dim)

  def forward(self, x):
    B, N, C = x.shape
    qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    attn = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)
    return self.proj((attn @ v).transpose(1, 2).reshape(B, N, C))


class Mlp(torch.nn.Module):
  def __init__(self, dim, hidden):
    super().__init__()
    self.fc1, self.act, self.fc2 = torch.nn.Linear(dim, hidden), torch.nn.GELU(), torch.nn.Linear(hidden, dim)

  def forward(self, x):
    return self.fc2(self.act(self.fc1(x)))


class Block(torch.nn.Module):
  def __init__(self, dim, num_heads, mlp_ratio=4.0):
    super().__init__()
    self.norm1 = torch.nn.LayerNorm(dim, eps=1e-6)
    self.attn = Attention(dim, num_heads)
    self.norm2 = torch.nn.LayerNorm(dim, eps=1e-6)
    self.mlp = Mlp(dim, int(dim * mlp_ratio))

  def forward(self, x):
    x = x + self.attn(self.norm1(x))
    return x + self.mlp(self.norm2(x))


class PatchEmbed(torch.nn.Module):                   # AudioMAE's PatchEmbed_org
  def __init__(self, img_size, patch_size, embed_dim, swap_hw=True):
    super().__init__()
    h, w = img_size[0] // patch_size, img_size[1] // patch_size
    self.patch_hw = (w, h) if swap_hw else (h, w)    # AudioMAE: (img[1] // p, img[0] // p)
    self.num_patches = h * w
    self.proj = torch.nn.Conv2d(1, embed_dim, kernel_size=patch_size, stride=patch_size)

  def forward(self, x):
    return self.proj(x).flatten(2).transpose(1, 2)


class RefMAE(torch.nn.Module):
  def __init__(self, img_size, patch=16, dim=64, depth=2, heads=4, dec_dim=32, dec_depth=1,
               dec_heads=2, mlp_ratio=4.0, swap_hw=True):
    super().__init__()
    self.p = patch
    self.patch_embed = PatchEmbed(img_size, patch, dim, swap_hw)
    n = self.patch_embed.num_patches
    self.cls_token = torch.nn.Parameter(0.02 * torch.randn(1, 1, dim))
    self.pos_embed = torch.nn.Parameter(torch.zeros(1, n + 1, dim), requires_grad=False)
    self.blocks = torch.nn.ModuleList([Block(dim, heads, mlp_ratio) for _ in range(depth)])
    self.norm = torch.nn.LayerNorm(dim, eps=1e-6)
    self.decoder_embed = torch.nn.Linear(dim, dec_dim)
    self.mask_token = torch.nn.Parameter(0.02 * torch.randn(1, 1, dec_dim))
    self.decoder_pos_embed = torch.nn.Parameter(torch.zeros(1, n + 1, dec_dim), requires_grad=False)
    self.decoder_blocks = torch.nn.ModuleList([Block(dec_dim, dec_heads, mlp_ratio)
                                               for _ in range(dec_depth)])
    self.decoder_norm = torch.nn.LayerNorm(dec_dim, eps=1e-6)
    self.decoder_pred = torch.nn.Linear(dec_dim, patch ** 2)
    hw = self.patch_embed.patch_hw
    with torch.no_grad():
      self.pos_embed.copy_(torch.from_numpy(get_2d_sincos_pos_embed_flexible(dim, hw, True)).float()[None])
      self.decoder_pos_embed.copy_(
          torch.from_numpy(get_2d_sincos_pos_embed_flexible(dec_dim, hw, True)).float()[None])
      for m in self.modules():                        # non-trivial LayerNorms
        if isinstance(m, torch.nn.LayerNorm):
          m.weight.uniform_(0.5, 1.5)
          m.bias.normal_(0.0, 0.1)

  def patchify(self, imgs):
    p = self.p
    h, w = imgs.shape[2] // p, imgs.shape[3] // p
    x = imgs.reshape(imgs.shape[0], 1, h, p, w, p)
    x = torch.einsum("nchpwq->nhwpqc", x)
    return x.reshape(imgs.shape[0], h * w, p ** 2)

  def encode(self, imgs, ids_keep=None):
    x = self.patch_embed(imgs) + self.pos_embed[:, 1:, :]
    if ids_keep is not None:
      x = torch.gather(x, 1, ids_keep.unsqueeze(-1).repeat(1, 1, x.shape[2]))
    cls = (self.cls_token + self.pos_embed[:, :1, :]).expand(x.shape[0], -1, -1)
    x = torch.cat((cls, x), dim=1)
    for blk in self.blocks:
      x = blk(x)
    return self.norm(x)

  def decode(self, x, ids_restore):                  # forward_decoder, decoder_mode=0
    x = self.decoder_embed(x)
    mask_tokens = self.mask_token.repeat(x.shape[0], ids_restore.shape[1] + 1 - x.shape[1], 1)
    x_ = torch.cat([x[:, 1:, :], mask_tokens], dim=1)
    x_ = torch.gather(x_, 1, ids_restore.unsqueeze(-1).repeat(1, 1, x.shape[2]))
    x = torch.cat([x[:, :1, :], x_], dim=1) + self.decoder_pos_embed
    for blk in self.decoder_blocks:
      x = blk(x)
    return self.decoder_pred(self.decoder_norm(x))[:, 1:, :]


def _reference(frames, mels, seed=0, swap_hw=True):
  torch.manual_seed(seed)
  return RefMAE((frames, mels), swap_hw=swap_hw).eval()


def _sd(ref, prefix=""):
  return {prefix + k: v.detach().numpy().copy() for k, v in ref.state_dict().items()}


def _spec(b, frames, mels, seed):
  return np.random.default_rng(seed).normal(0.0, 1.0, (b, frames, mels)).astype(np.float32)


def _shapes(tower, spec):
  if tower.mae_depth <= 0:
    return jax.eval_shape(lambda: tower.init(jax.random.PRNGKey(0), spec))["params"]
  return jax.eval_shape(lambda: tower.init(jax.random.PRNGKey(0), spec, None,
                                           jax.random.PRNGKey(1), method=tower.reconstruct))["params"]


def _max_err(a, b):
  return float(np.max(np.abs(np.asarray(a) - np.asarray(b))))


def test_audiomae_square_grid_matches_reference(tmp_path):
  # 64 frames x 64 mel bins: a 4 x 4 tile grid, where AudioMAE's swapped table is ours.
  spec = _spec(2, 64, 64, 0)
  ref = _reference(64, 64)
  torch.save({"model." + k: v for k, v in ref.state_dict().items()}, tmp_path / "mae.pth")
  tower = vit.SpectrogramViT(**SMALL)
  params = convert.import_tower("audiomae", str(tmp_path / "mae.pth"), _shapes(tower, spec),
                                n_mels=64)
  imgs = torch.tensor(spec)[:, None]
  with torch.no_grad():
    tokens_ref = ref.encode(imgs).numpy()
  mean_tower = vit.SpectrogramViT(**dict(SMALL, pooling="mean"))
  rng = jax.random.PRNGKey(3)

  @jax.jit                                            # one compilation for the three passes
  def passes(p, s):
    v = {"params": p}
    return (tower.apply(v, s), mean_tower.apply(v, s)[0],
            tower.apply(v, s, None, rng, method=tower.reconstruct))

  (pooled, tokens), pooled_mean, (pred, target, _) = passes(params, spec)
  assert _max_err(tokens, tokens_ref) <= 1e-4
  assert _max_err(pooled, tokens_ref[:, 0]) <= 1e-4
  assert _max_err(pooled_mean, tokens_ref[:, 1:].mean(1)) <= 1e-4

  # The MAE pass with the same masking: our random_masking draws it, AudioMAE's gather
  # and unshuffle code applies it.
  n = tokens.shape[1] - 1
  keep = max(1, int(round(n * (1 - SMALL["mask_ratio"]))))
  keep_idx, restore, _ = vit.random_masking(rng, n, keep, jnp.ones((2, n), jnp.int32))
  with torch.no_grad():
    latent = ref.encode(imgs, torch.tensor(np.asarray(keep_idx), dtype=torch.int64))
    pred_ref = ref.decode(latent, torch.tensor(np.asarray(restore), dtype=torch.int64)).numpy()
    target_ref = ref.patchify(imgs).numpy()
  np.testing.assert_array_equal(target, target_ref)
  assert _max_err(pred, pred_ref) <= 1e-4


def test_flip_training_forward_encodes_the_kept_tiles_only(tmp_path):
  # FLIP (flip_mask_ratio): the training forward is AudioMAE's encoder over the tiles
  # flip_keep draws (the same "dropout" key); evaluation still sees every tile.
  spec = _spec(2, 64, 64, 4)
  ref = _reference(64, 64, seed=2)
  torch.save({"model." + k: v for k, v in ref.state_dict().items()}, tmp_path / "mae.pth")
  tower = vit.SpectrogramViT(**dict(SMALL, flip_mask_ratio=0.5))
  params = convert.import_tower("audiomae", str(tmp_path / "mae.pth"), _shapes(tower, spec),
                                n_mels=64)
  v, rngs = {"params": params}, {"dropout": jax.random.PRNGKey(7)}
  n = 16
  keep_idx = tower.apply(v, jnp.ones((2, n), jnp.int32), rngs=rngs, method=tower.flip_keep)
  assert keep_idx.shape == (2, 8) and len(set(np.asarray(keep_idx)[0])) == 8
  pooled, tokens = tower.apply(v, spec, None, False, rngs=rngs)
  imgs = torch.tensor(spec)[:, None]
  with torch.no_grad():
    kept_ref = ref.encode(imgs, torch.tensor(np.asarray(keep_idx), dtype=torch.int64)).numpy()
    full_ref = ref.encode(imgs).numpy()
  assert tokens.shape == (2, 9, SMALL["width"])
  assert _max_err(tokens, kept_ref) <= 1e-4 and _max_err(pooled, kept_ref[:, 0]) <= 1e-4
  assert _max_err(tower.apply(v, spec)[1], full_ref) <= 1e-4
  # Another key keeps other tiles; padding tiles are the first dropped.
  other = tower.apply(v, jnp.ones((2, n), jnp.int32), rngs={"dropout": jax.random.PRNGKey(8)},
                      method=tower.flip_keep)
  assert not np.array_equal(np.asarray(other), np.asarray(keep_idx))
  valid = vit.patch_mask(jnp.array([64, 32]), 64, 64, 16)       # clip 2: 8 real tiles
  kept = np.asarray(tower.apply(v, valid, rngs=rngs, method=tower.flip_keep))
  assert np.asarray(valid)[1][kept[1]].all()
  with pytest.raises(ValueError, match="flip_mask_ratio must be in"):
    vit.SpectrogramViT(**dict(SMALL, flip_mask_ratio=1.0)).apply(v, spec, None, False, rngs=rngs)

  # shared_mae_pass: the MAE pass's visible tiles, pooled, are AudioMAE's encoder on them;
  # its reconstruction is reconstruct's.
  mae_rng = jax.random.PRNGKey(5)
  shared = vit.SpectrogramViT(**dict(SMALL, shared_mae_pass=True))
  pooled, recon = shared.apply(v, spec, None, mae_rng, method=shared.pooled_and_reconstruct)
  keep = max(1, int(round(n * (1 - SMALL["mask_ratio"]))))
  keep_idx, _, _ = vit.random_masking(mae_rng, n, keep, jnp.ones((2, n), jnp.int32))
  with torch.no_grad():
    visible = ref.encode(imgs, torch.tensor(np.asarray(keep_idx), dtype=torch.int64)).numpy()
  assert _max_err(pooled, visible[:, 0]) <= 1e-4
  for a, b in zip(recon, shared.apply(v, spec, None, mae_rng, method=shared.reconstruct)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  with pytest.raises(ValueError, match="would mask twice"):
    vit.SpectrogramViT(**dict(SMALL, shared_mae_pass=True, flip_mask_ratio=0.5)).apply(
        v, spec, None, mae_rng, method="pooled_and_reconstruct")


def test_positions_on_a_non_square_grid():
  # 64 frames x 32 mel bins: 4 x 2 tiles, where the two tables differ.
  spec = _spec(2, 64, 32, 1)
  tower = vit.SpectrogramViT(**SMALL)
  shapes = _shapes(tower, spec)
  swapped = _reference(64, 32, seed=1, swap_hw=True)
  np.testing.assert_allclose(swapped.pos_embed[0, 1:].numpy(),
                             audiomae.audiomae_positions(64, 4, 2), atol=1e-6)
  with pytest.raises(convert.CheckpointMismatch,
                     match=r"'pos_embed' is AudioMAE's position table for 4 x 2 tiles"):
    audiomae.import_torch(_sd(swapped), shapes, n_mels=32)

  # A timm-layout checkpoint with (mel, time) positions imports exactly.
  straight = _reference(64, 32, seed=1, swap_hw=False)
  params = audiomae.import_torch(_sd(straight), shapes, n_mels=32)
  with torch.no_grad():
    tokens_ref = straight.encode(torch.tensor(spec)[:, None]).numpy()
  _, tokens = jax.jit(lambda p, s: tower.apply({"params": p}, s))(params, spec)
  assert _max_err(tokens, tokens_ref) <= 1e-4
  with pytest.raises(convert.CheckpointMismatch, match="pass positions='mae'"):
    audiomae.import_torch(_sd(straight), shapes, n_mels=32, positions="audiomae")

  # AudioMAE's own (swapped) table imports exactly into a tower that adds it.
  am_tower = vit.SpectrogramViT(**SMALL, pos_layout="audiomae", pos_max_frames=64)
  params = audiomae.import_torch(_sd(swapped), _shapes(am_tower, spec), n_mels=32,
                                 positions="audiomae")
  with torch.no_grad():
    tokens_ref = swapped.encode(torch.tensor(spec)[:, None]).numpy()
  _, tokens = jax.jit(lambda p, s: am_tower.apply({"params": p}, s))(params, spec)
  assert _max_err(tokens, tokens_ref) <= 1e-4


def test_checkpoint_rules_and_bad_checkpoints():
  spec = _spec(1, 64, 64, 2)
  ref = _reference(64, 64, seed=2)
  sd = _sd(ref)
  full = _shapes(vit.SpectrogramViT(**SMALL), spec)
  encoder_only = _shapes(vit.SpectrogramViT(**dict(SMALL, mae_depth=0)), spec)

  # Fine-tuned classifier head ignored; an encoder-only tower ignores every decoder key,
  # a Swin decoder's included.
  swin = dict(sd, **{"head.weight": np.zeros((527, 64), np.float32),
                     "decoder_blocks.0.attn.relative_position_bias_table": np.zeros((49, 2), np.float32)})
  params = audiomae.import_torch(swin, encoder_only, n_mels=64)
  assert "dec_embed" not in params and "mask_token" not in params
  with pytest.raises(convert.CheckpointMismatch, match=r"Swin local-attention decoder .* mae_depth=0"):
    audiomae.import_torch(swin, full, n_mels=64)

  broken = dict(sd)
  del broken["blocks.1.attn.qkv.bias"]
  with pytest.raises(convert.CheckpointMismatch,
                     match=r"missing key 'blocks.1.attn.qkv.bias' \(for encoder/layer_1/attn/(query|key|value)/bias, shape \(4, 16\)\)"):
    audiomae.import_torch(broken, full, n_mels=64)
  broken = dict(sd, **{"blocks.0.attn.qkv.weight": np.zeros((96, 32), np.float32)})
  with pytest.raises(convert.CheckpointMismatch,
                     match=r"'blocks.0.attn.qkv.weight' has shape \(96, 32\), but "
                           r"encoder/layer_0/attn/(query|key|value)/kernel needs \(64, 4, 16\)"):
    audiomae.import_torch(broken, full, n_mels=64)
  broken = dict(sd, **{"patch_embed.proj.weight": np.zeros((64, 3, 16, 16), np.float32)})
  with pytest.raises(convert.CheckpointMismatch, match=r"has shape \(64, 3, 16, 16\), but patch_embed/kernel"):
    audiomae.import_torch(broken, full, n_mels=64)
  broken = dict(sd, **{"blocks.2.norm1.weight": np.zeros(64, np.float32)})
  with pytest.raises(convert.CheckpointMismatch, match=r"unexpected keys \['blocks.2.norm1.weight'\]"):
    audiomae.import_torch(broken, full, n_mels=64)
  broken = {k: v for k, v in sd.items() if not k.startswith("norm.")}
  broken.update({"fc_norm.weight": np.ones(64, np.float32), "fc_norm.bias": np.zeros(64, np.float32)})
  with pytest.raises(convert.CheckpointMismatch, match="fc_norm.* is timm's global-pool head"):
    audiomae.import_torch(broken, full, n_mels=64)
  learned = dict(sd, pos_embed=sd["pos_embed"] + 0.01)
  with pytest.raises(convert.CheckpointMismatch, match="not a fixed 2-D sin-cos table for 4 x 4 tiles"):
    audiomae.import_torch(learned, full, n_mels=64)
  with pytest.raises(convert.CheckpointMismatch, match="not a whole number of time columns of 8 mel tiles"):
    audiomae.import_torch(_sd(_reference(64, 48, seed=2)), full)      # n_mels=128 assumed
  # The tower inside a wrapper: keys found by their prefix, errors name the full key.
  wrapped = _sd(ref, "audio_encoder.model.")
  wrapped["text.weight"] = np.zeros(3, np.float32)
  audiomae.import_torch(wrapped, full, n_mels=64)
  del wrapped["audio_encoder.model.decoder_pred.bias"]
  with pytest.raises(convert.CheckpointMismatch, match="missing key 'audio_encoder.model.decoder_pred.bias'"):
    audiomae.import_torch(wrapped, full, n_mels=64)


def test_features_config():
  cfg = audiomae.features_config()
  assert cfg["kind"] == "fbank" and cfg["sample_rate"] == 16000 and cfg["n_mels"] == 128
  assert (cfg["frame_length_ms"], cfg["frame_shift_ms"], cfg["max_frames"]) == (25.0, 10.0, 1024)
  assert cfg["window_type"] == "hanning"
  assert cfg["norm_mean"] == -4.2677393 and cfg["norm_std"] == pytest.approx(2 * 4.5689974)
  assert audiomae.VIT_B["width"] == 768 and audiomae.VIT_B["mae_width"] == 512


def test_features_config_fields_are_all_read():
  """Every field of ``features_config()`` is one ``spectrogram`` reads: a field nothing
  reads (it once carried ``num_mel_bins`` beside ``n_mels``, and a ``dither`` our
  deterministic fbank has no use for) suggests a setting that does nothing."""
  import ml_collections
  from jaxclap.models import two_towers
  read = set()

  class Recording(ml_collections.ConfigDict):
    def __getattr__(self, key):
      read.add(key)
      return super().__getattr__(key)

    def get(self, key, default=None):
      read.add(key)
      return super().get(key, default)

  cfg = Recording(audiomae.features_config())
  two_towers.spectrogram(cfg, jnp.zeros((1, 16000)), jnp.full((1,), 16000))
  assert set(audiomae.features_config()) <= read, set(audiomae.features_config()) - read


def test_fbank_front_end_is_audiomaes():
  """``spectrogram`` with ``features_config()`` = AudioMAE's input recipe: clip mean
  removed over real samples, Kaldi fbank, zero-padded to 1024 frames, then normalised."""
  import ml_collections
  from jaxclap import audio
  from jaxclap.models import two_towers
  cfg = ml_collections.ConfigDict(audiomae.features_config())
  rng = np.random.default_rng(0)
  wave = (0.1 * rng.standard_normal((2, 48000)) + 0.01).astype(np.float32)
  lengths = np.array([48000, 30000], np.int32)
  wave[1, 30000:] = 0.0
  spec, frames = jax.jit(lambda w, n: two_towers.spectrogram(cfg, w, n))(wave, lengths)
  assert spec.shape == (2, 1024, 128)
  for i, n in enumerate(lengths):
    x = wave[i, :n] - wave[i, :n].mean()
    fb = np.asarray(audio.fbank(x[None], num_mel_bins=128, window_type="hanning"))[0]
    full = np.zeros((1024, 128), np.float32)
    full[:len(fb)] = fb
    ref = (full - audiomae.AUDIOSET_MEAN) / (2 * audiomae.AUDIOSET_STD)
    assert int(frames[i]) == len(fb)
    assert _max_err(spec[i], ref) <= 1e-4


def test_training_checkpoint_wrapper_loads(tmp_path):
  """AudioMAE / PANNs .pth files: {"model": weights, "args": argparse.Namespace, ...}."""
  import argparse
  torch.save({"model": {"w": torch.ones(2, 3)}, "args": argparse.Namespace(lr=1e-3),
              "epoch": 3}, tmp_path / "ckpt.pth")
  sd = convert.load_state_dict(str(tmp_path / "ckpt.pth"))
  assert list(sd) == ["w"] and sd["w"].shape == (2, 3)
