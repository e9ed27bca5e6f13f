"""The HTS-AT tower against transformers' ClapAudioModel with random weights (every
parameter and batch-norm running statistic randomised), at toy sizes: 32 x 32 images from
[64 frames, 16 mel bins]. Tolerance: max abs difference of pooled output and last hidden
state <= 1e-4 (float32). Also: the fusion variant, training-mode batch norm, the
export round trip, the LAION presets' shapes, and the errors a bad checkpoint raises."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from jaxclap.models import convert, htsat

TOL = 1e-4
TOY = dict(spec_size=32, num_mel_bins=16, embed_dim=16, depths=(2, 2), num_heads=(2, 4),
           window_size=4)


@functools.lru_cache(maxsize=None)
def _reference(fusion=False, spec_size=32, num_mel_bins=16, embed_dim=16, depths=(2, 2),
               num_heads=(2, 4), window_size=4):
  cfg = transformers.ClapAudioConfig(
      spec_size=spec_size, num_mel_bins=num_mel_bins, patch_embeds_hidden_size=embed_dim,
      depths=list(depths), num_attention_heads=list(num_heads), window_size=window_size,
      hidden_size=embed_dim * 2 ** (len(depths) - 1), hidden_dropout_prob=0.0,
      enable_fusion=fusion, fusion_type="aff_2d" if fusion else None)
  torch.manual_seed(0)
  model = transformers.ClapAudioModel(cfg).eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      # Norm scales near 1, everything else (biases, bias tables too) well away from 0.
      is_scale = name.endswith("weight") and p.ndim == 1
      p.copy_(1 + 0.2 * torch.randn_like(p) if is_scale else 0.3 * torch.randn_like(p))
    for name, b in model.named_buffers():
      if name.endswith("running_mean"):
        b.copy_(3 * torch.randn_like(b))
      elif name.endswith("running_var"):
        b.copy_(0.5 + 2 * torch.rand_like(b))
  sd = {k: v.numpy().copy() for k, v in model.state_dict().items()}
  tower = htsat.HTSAT(spec_size=spec_size, num_mel_bins=num_mel_bins, embed_dim=embed_dim,
                      depths=depths, num_heads=num_heads, window_size=window_size,
                      enable_fusion=fusion)
  return model, sd, tower


def _inputs(fusion, frames, mels=16, b=3, seed=0):
  x = 3 * np.random.default_rng(seed).normal(size=(b, 4 if fusion else 1, frames, mels))
  return x.astype(np.float32), np.array([True, False, True])


def _target(tower, spec, **kw):
  return jax.eval_shape(lambda: tower.init(jax.random.PRNGKey(0), spec, None, **kw))


def _ours(tower, sd, x, is_longer, fusion):
  spec, kw = (x, dict(is_longer=is_longer)) if fusion else (x[:, 0], {})
  variables = htsat.import_torch(sd, _target(tower, spec, **kw))
  # jit: one compilation is cheaper than dispatching (and compiling) op by op.
  return jax.jit(lambda v, s: tower.apply(v, s, None, **kw))(variables, spec)


def _theirs(model, x, is_longer, fusion):
  with torch.no_grad():
    out = model(input_features=torch.tensor(x),
                is_longer=torch.tensor(is_longer)[:, None] if fusion else None)
  # [b, C, freq, time] -> ours channels-last
  return out.pooler_output.numpy(), out.last_hidden_state.numpy().transpose(0, 2, 3, 1)


CASES = {
    # 60 < 64 frames: exercises the bicubic stretch; 8x8 then 4x4 tokens, window 4.
    "plain": (False, 60, {}),
    "fusion": (True, 64, {}),
    # 12x12 tokens padded to 16x16 for window 8 (shifted), freq_ratio 3.
    "padded": (False, 130, dict(spec_size=48, depths=(2,), num_heads=(2,), window_size=8)),
    # 8x8 -> 4x4 -> 2x2 with window 2: shifted windows in the first two stages.
    "three_stages": (False, 64, dict(depths=(2, 2, 2), num_heads=(2, 2, 4), window_size=2)),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_matches_transformers(case):
  fusion, frames, over = CASES[case]
  cfg = dict(TOY, **over)
  model, sd, tower = _reference(fusion, **cfg)
  x, longer = _inputs(fusion, frames)
  pooled, hidden = _ours(tower, sd, x, longer, fusion)
  ref_pooled, ref_hidden = _theirs(model, x, longer, fusion)
  assert pooled.shape == (3, tower.num_features())
  assert hidden.shape == ref_hidden.shape
  assert np.max(np.abs(np.asarray(pooled) - ref_pooled)) <= TOL
  assert np.max(np.abs(np.asarray(hidden) - ref_hidden)) <= TOL


def test_training_mode_batch_norm_matches_transformers():
  """deterministic=False normalises with batch statistics (AFF's only over the fused
  clips) and, with batch_stats mutable, updates the running ones as PyTorch does."""
  model, sd, tower = _reference(True, **TOY)
  x, longer = _inputs(True, 64)
  variables = htsat.import_torch(sd, _target(tower, x, is_longer=longer))
  # is_longer from frames: clips 0 and 2 are longer than the 64-frame window.
  train = jax.jit(lambda v, s, frames: tower.apply(v, s, frames, deterministic=False,
                                                   mutable=["batch_stats"]))
  (pooled, hidden), updated = train(variables, x, jnp.array([900, 64, 100]))
  model.train()
  try:
    ref_pooled, ref_hidden = _theirs(model, x, longer, True)
    ref_sd = {k: v.numpy().copy() for k, v in model.state_dict().items()}
  finally:
    model.load_state_dict({k: torch.tensor(v) for k, v in sd.items()})
    model.eval()
  assert np.max(np.abs(np.asarray(pooled) - ref_pooled)) <= TOL
  assert np.max(np.abs(np.asarray(hidden) - ref_hidden)) <= TOL
  exported = htsat.export_torch({"params": variables["params"], **updated})
  running = [k for k in ref_sd if "running_" in k]
  assert len(running) == 10
  for k in running:
    assert np.max(np.abs(exported[k] - ref_sd[k])) <= 1e-5, k
  # Without mutable batch_stats the same call just uses batch statistics.
  p2, _ = jax.jit(lambda v, s: tower.apply(v, s, None, deterministic=False,
                                           is_longer=longer))(variables, x)
  assert np.max(np.abs(np.asarray(p2) - np.asarray(pooled))) <= 1e-6


def test_clap_model_prefix_and_export_round_trip():
  model, sd, tower = _reference(True, **TOY)
  x, longer = _inputs(True, 64)
  # ClapModel nests the tower as audio_model.audio_encoder.; its other keys are left alone.
  nested = {"audio_model." + k: v for k, v in sd.items()}
  nested["text_model.embeddings.word_embeddings.weight"] = np.zeros((5, 4), np.float32)
  nested["audio_projection.linear1.weight"] = np.zeros((4, 32), np.float32)
  target = _target(tower, x, is_longer=longer)
  variables = htsat.import_torch(nested, target, where="clap", depths=(2, 2),
                                 enable_fusion=True)
  exported = htsat.export_torch(variables)
  assert sorted(exported) == sorted(sd)
  for k, v in sd.items():
    assert exported[k].dtype == v.dtype and np.array_equal(exported[k], v), k
  fresh = transformers.ClapAudioModel(model.config)
  fresh.load_state_dict({k: torch.from_numpy(v) for k, v in exported.items()}, strict=True)
  assert sorted(htsat.export_torch(variables, prefix="audio_model.audio_encoder.")) == \
      sorted(k for k in nested if k.startswith("audio_model."))
  with pytest.raises(convert.CheckpointMismatch, match="config depths"):
    htsat.import_torch(nested, target, depths=(2, 2, 2))


def test_presets_have_laion_shapes():
  """``size`` presets against transformers' defaults (HTSAT-tiny, the fused
  laion/clap-htsat-fused layout) and LAION's base/large widths."""
  tiny = htsat.HTSAT(size="tiny", enable_fusion=True)
  assert tiny.num_features() == 768
  assert htsat.HTSAT(size="base").num_features() == 1024
  assert htsat.HTSAT(size="large").arch() == (256, (2, 2, 12, 2), (4, 8, 16, 32))
  torch.manual_seed(0)
  ref = transformers.ClapAudioModel(transformers.ClapAudioConfig(enable_fusion=True,
                                                                 fusion_type="aff_2d"))
  sd = {k: v.numpy() for k, v in ref.state_dict().items()}
  target = _target(tiny, jnp.zeros((1, 4, 1001, 64)), is_longer=jnp.ones((1,), bool))
  variables = htsat.import_torch(sd, target)
  n_ours = sum(v.size for v in jax.tree_util.tree_leaves(variables))
  n_ref = sum(v.size for k, v in sd.items()
              if not k.endswith(("relative_position_index", "num_batches_tracked")))
  assert n_ours == n_ref


def test_bad_checkpoints_are_named():
  _, sd, tower = _reference(False, **TOY)
  x, _ = _inputs(False, 64)
  target = _target(tower, x[:, 0])
  key = "audio_encoder.layers.0.blocks.1.attention.self.key.weight"
  broken = dict(sd)
  del broken[key]
  with pytest.raises(convert.CheckpointMismatch, match=rf"missing key '{key}'"):
    htsat.import_torch(broken, target)
  key = "audio_encoder.layers.1.blocks.0.intermediate.dense.weight"
  broken = dict(sd, **{key: np.zeros((10, 32), np.float32)})
  with pytest.raises(convert.CheckpointMismatch,
                     match=rf"'{key}' has shape \(10, 32\), but params/stage_1/block_0/mlp/"
                           r"fc_in/kernel needs \(32, 128\)"):
    htsat.import_torch(broken, target)
  key = "audio_encoder.layers.0.blocks.0.attention.self.relative_position_bias_table"
  broken = dict(sd, **{key: np.zeros((81, 2), np.float32)})
  with pytest.raises(convert.CheckpointMismatch,
                     match=r"has shape \(81, 2\), but .* needs \(49, 2\)"):
    htsat.import_torch(broken, target)
  key = "audio_encoder.layers.0.blocks.0.attention.self.relative_position_index"
  broken = dict(sd, **{key: sd[key][::-1].copy()})
  with pytest.raises(convert.CheckpointMismatch, match=rf"buffer '{key}'"):
    htsat.import_torch(broken, target)
  broken = dict(sd, **{"audio_encoder.patch_embed.mel_conv2d.weight": np.zeros(3, np.float32)})
  with pytest.raises(convert.CheckpointMismatch,
                     match=r"unexpected keys \['audio_encoder.patch_embed.mel_conv2d.weight'\]"):
    htsat.import_torch(broken, target)
  with pytest.raises(TypeError, match="batch_stats"):
    htsat.import_torch(sd, target["params"])


def test_bicubic_stretch_matches_pytorch():
  """LAION's 10 s window: 1001 frames stretched to 1024 as torch's bicubic resize does."""
  x = (-40 + 20 * np.random.default_rng(0).normal(size=(2, 1, 1001, 64))).astype(np.float32)
  ref = torch.nn.functional.interpolate(torch.tensor(x), (1024, 64), mode="bicubic",
                                        align_corners=True).numpy()
  ours = np.einsum("ot,bctf->bcof", htsat.bicubic_matrix(1001, 1024), x)
  assert np.max(np.abs(ours - ref)) <= 1e-4


def test_fusion_input_follows_the_feature_extractor():
  rng = np.random.default_rng(0)
  mel = rng.normal(size=(4, 50, 8)).astype(np.float32)
  frames = np.array([50, 20, 21, 33])
  chunk = 20
  build = jax.jit(htsat.fusion_input, static_argnums=2)
  for key in (jax.random.PRNGKey(1), None):
    fused, longer = build(jnp.asarray(mel), frames, chunk, key)
    fused = np.asarray(fused)
    assert fused.shape == (4, 4, chunk, 8)
    assert np.asarray(longer).tolist() == [True, False, True, True]
    assert all(np.array_equal(fused[1, k], mel[1, :chunk]) for k in range(4))
    for i in (0, 2, 3):
      f = int(frames[i])
      shrink = torch.nn.functional.interpolate(torch.tensor(mel[None, None, i, :f]),
                                               size=[chunk, 8], mode="bilinear",
                                               align_corners=False)[0, 0].numpy()
      assert np.max(np.abs(fused[i, 0] - shrink)) <= 1e-5
      # Each crop starts inside its third of np.array_split(range(f - chunk + 1), 3).
      for k, starts in enumerate(np.array_split(np.arange(f - chunk + 1), 3)):
        starts = starts if len(starts) else [0]
        assert any(np.array_equal(fused[i, k + 1], mel[i, s:s + chunk]) for s in starts)


def test_gradients_in_training():
  """The training call: stochastic depth, batch statistics and remat on (one stage, no
  dropout: every random mask costs seconds of compilation on 2 cores)."""
  tower = htsat.HTSAT(**dict(TOY, depths=(2,), num_heads=(2,)), drop_path_rate=0.2,
                      remat=True)
  x, _ = _inputs(False, 64)
  spec = jnp.asarray(x[:, 0])
  variables = nn.meta.unbox(jax.jit(lambda s: tower.init(jax.random.PRNGKey(0), s, None))(spec))

  def loss(params):
    (pooled, _), upd = tower.apply({"params": params, "batch_stats": variables["batch_stats"]},
                                   spec, None, deterministic=False, mutable=["batch_stats"],
                                   rngs={"dropout": jax.random.PRNGKey(1)})
    return jnp.sum(pooled ** 2), upd

  grads, upd = jax.jit(jax.grad(loss, has_aux=True))(variables["params"])
  norms = [float(jnp.linalg.norm(g)) for g in jax.tree_util.tree_leaves(grads)]
  assert all(np.isfinite(norms)) and sum(n > 0 for n in norms) > len(norms) // 2
  assert not np.allclose(upd["batch_stats"]["bn0"]["mean"], 0)
