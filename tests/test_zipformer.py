"""Zipformer parity against the k2-fsa team's reference (PyPI ``zipformer`` 0.1.3, icefall's
model repackaged, loaded by ``zipformer_torch.load_reference``): the same random weights,
imported through ``zipformer.import_torch``, give the same encoder output (float32, 1e-4)
with padded batches, at two sizes; presets count what the reference counts; the tower
exports to the reference modules and back identically.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxclap.models import zipformer as Z

torch = pytest.importorskip("torch")


def _reference():
  from jaxclap.models import zipformer_torch
  try:
    return zipformer_torch.load_reference()
  except ImportError as e:
    pytest.skip(str(e))


SIZES = {
    "two_stacks": dict(downsampling_factor=(1, 2), encoder_dim=(16, 24),
                       num_encoder_layers=(1, 2), num_heads=2, query_head_dim=4, pos_head_dim=2,
                       value_head_dim=4, feedforward_dim=32, cnn_module_kernel=5, pos_dim=8),
    "u_net": dict(downsampling_factor=(1, 2, 4, 2), encoder_dim=(16, 32, 24, 16),
                  num_encoder_layers=1, num_heads=(2, 4, 2, 2), query_head_dim=8, pos_head_dim=4,
                  value_head_dim=4, feedforward_dim=(32, 48, 40, 32), cnn_module_kernel=(7, 5, 3, 5),
                  pos_dim=16),
}
BINS = {"two_stacks": 20, "u_net": 24}


def _torch_pair(cfg, bins, zf, ss, ods=2):
  torch.manual_seed(0)
  embed = ss.Conv2dSubsampling(bins, Z._tuple(cfg["encoder_dim"], len(cfg["downsampling_factor"]))[0])
  enc = zf.Zipformer(output_downsampling_factor=ods, causal=False, encoder_unmasked_dim=8, **cfg)
  model = torch.nn.ModuleDict(dict(encoder_embed=embed, encoder=enc)).eval()
  with torch.no_grad():  # move every parameter off its init (zeros, 0.5s) so each one matters
    for p in model.parameters():
      p.add_(0.1 * torch.randn_like(p))
  return model


def _shapes(m, bins, t=40):
  return jax.eval_shape(m.init, jax.random.PRNGKey(0), jnp.zeros((1, t, bins)), jnp.array([t]))["params"]


@pytest.mark.parametrize("size", sorted(SIZES))
def test_parity_with_icefall_zipformer(size):
  zf, ss = _reference()
  cfg, bins = SIZES[size], BINS[size]
  model = _torch_pair(cfg, bins, zf, ss)
  rng = np.random.default_rng(0)
  fbank = rng.standard_normal((3, 61, bins)).astype(np.float32)
  lens = np.array([61, 45, 30])
  with torch.no_grad():
    x, xl = model["encoder_embed"](torch.from_numpy(fbank), torch.from_numpy(lens))
    pad = torch.arange(x.shape[1])[None, :] >= xl[:, None]
    y, yl = model["encoder"](x.permute(1, 0, 2), xl, src_key_padding_mask=pad)
  ref = y.permute(1, 0, 2).numpy()
  m = Z.Zipformer(**cfg)
  params = Z.import_torch({k: v.numpy() for k, v in model.state_dict().items()}, _shapes(m, bins))
  pooled, out = m.apply({"params": params}, jnp.asarray(fbank), jnp.asarray(lens))
  np.testing.assert_array_equal(np.asarray(Z.output_frames(lens, 2)), yl.numpy())
  assert out.shape == ref.shape
  for b, n in enumerate(yl.numpy()):  # frames past a clip's length are padding in both
    np.testing.assert_allclose(np.asarray(out[b, :n]), ref[b, :n], atol=1e-4, rtol=1e-4)
    # The tower's embedding: the mean over the clip's real output frames (CLSP's pooling).
    np.testing.assert_allclose(np.asarray(pooled[b]), ref[b, :n].mean(0), atol=1e-4, rtol=1e-4)


def test_bad_checkpoint_names_key_and_shapes():
  zf, ss = _reference()
  cfg = SIZES["two_stacks"]
  sd = {k: v.numpy() for k, v in _torch_pair(cfg, 20, zf, ss).state_dict().items()}
  shapes = _shapes(Z.Zipformer(**cfg), 20)
  key = "encoder.encoders.1.encoder.layers.0.feed_forward1.in_proj.weight"
  bad = dict(sd)
  bad[key] = np.zeros((5, 24), np.float32)
  with pytest.raises(Z.CheckpointMismatch, match=r"feed_forward1\.in_proj\.weight.*\(5, 24\).*\(24, 24\)"):
    Z.import_torch(bad, shapes)
  extra = dict(sd, **{"encoder.bogus.weight": np.zeros(3)})
  with pytest.raises(Z.CheckpointMismatch, match="encoder.bogus.weight"):
    Z.import_torch(extra, shapes)
  short = dict(sd)
  del short[key]
  with pytest.raises(Z.CheckpointMismatch, match="lacks 1"):
    Z.import_torch(short, shapes)
  # A whole model under a prefix (an ASR transducer's decoder and joiner beside it): the
  # encoder is found by its prefix and the rest left alone.
  whole = {f"model.{k}": v for k, v in sd.items()}
  whole["model.decoder.embedding.weight"] = np.zeros((5, 4), np.float32)
  got = Z.import_torch(whole, {"params": shapes}, where="asr.pt")
  np.testing.assert_array_equal(got["encoder_embed"]["out"]["kernel"], sd["encoder_embed.out.weight"].T)
  with pytest.raises(Z.CheckpointMismatch, match="asr.pt: no key ending in 'encoder_embed.conv.0.weight'"):
    Z.import_torch({"decoder.embedding.weight": np.zeros(3)}, shapes, where="asr.pt")


def _reference_count(fields, bins, zf, ss):
  kw = {k: fields.get(k, getattr(Z.Zipformer, k)) for k in (
      "downsampling_factor", "encoder_dim", "num_encoder_layers", "query_head_dim", "pos_head_dim",
      "value_head_dim", "num_heads", "feedforward_dim", "cnn_module_kernel", "pos_dim",
      "output_downsampling_factor")}
  n = len(kw["downsampling_factor"])
  ref = zf.Zipformer(encoder_unmasked_dim=min(Z._tuple(kw["encoder_dim"], n)), **kw)
  embed = ss.Conv2dSubsampling(bins, Z._tuple(kw["encoder_dim"], n)[0])
  return sum(p.numel() for p in ref.parameters()) + sum(p.numel() for p in embed.parameters())


@pytest.mark.parametrize("preset", ["small", "large"])
def test_preset_param_count_matches_reference(preset):
  """Shape-only count of each icefall preset equals the reference modules' own count."""
  zf, ss = _reference()
  assert Z.param_count(**Z.PRESETS[preset]) == _reference_count(Z.PRESETS[preset], 80, zf, ss)


def test_spear_xlarge_preset_has_the_published_size():
  """SPEAR-XLarge over its 128 fbank bins: 599M in CLSP (section 4.1), 600M in SPEAR's
  abstract; shapes only. The layout it counts is the one the icefall presets check
  against the reference above."""
  count = Z.param_count(feature_dim=Z.SPEAR_MEL_BINS, **Z.PRESETS["spear-xlarge"])
  assert abs(count - 599e6) <= 0.05 * 599e6, count   # 596,973,235


def test_every_parameter_has_logical_axis_names():
  """The tower shards like the others: every parameter is boxed with names (a scalar
  with none), residual channels named 'embed'."""
  shapes = jax.eval_shape(Z.Zipformer(**SIZES["u_net"]).init, jax.random.PRNGKey(0),
                          jnp.zeros((1, 40, 24)), jnp.array([40]))["params"]
  leaves = jax.tree_util.tree_leaves(shapes, is_leaf=lambda x: isinstance(x, nn.Partitioned))
  assert leaves and all(isinstance(x, nn.Partitioned) for x in leaves)
  assert all(len(x.names) == x.value.ndim for x in leaves)
  layer = shapes["encoder/encoders_1"]["encoder"]["layers_0"]
  assert layer["feed_forward2"]["in_proj"]["kernel"].names == ("embed", "mlp")
  assert layer["feed_forward2"]["out_proj"]["kernel"].names == ("mlp", "embed")


@pytest.mark.parametrize("ods", [1, 2])
def test_export_to_the_reference_modules_round_trips(ods, tmp_path):
  """The registered export writes the reference modules (``ZipformerTorch``) in icefall's
  key names: they reload strictly, embed as the Flax tower does (SPEAR's factor 1, which
  the reference's own forward refuses, and icefall's 2), and read back bit-identical."""
  _reference()
  import ml_collections
  from jaxclap.models import towers
  from jaxclap.models.zipformer_torch import ZipformerTorch
  # A smaller subsampling (embed_channels: icefall's layer1/2/3_channels) travels too.
  fields = dict(SIZES["u_net"], output_downsampling_factor=ods, embed_channels=(4, 8, 16))
  m = Z.Zipformer(**fields)
  rng = np.random.default_rng(1)
  fbank = rng.standard_normal((2, 53, 24)).astype(np.float32)
  lens = np.array([53, 31])
  variables = nn.meta.unbox(m.init(jax.random.PRNGKey(3), jnp.asarray(fbank), jnp.asarray(lens)))
  config = ml_collections.ConfigDict(dict(model=dict(audio=dict(name="zipformer", **fields)),
                                          features=dict(n_mels=24)))
  tower = towers.get("zipformer")
  entry = tower.export_torch(config, variables, str(tmp_path))
  assert entry["inputs"] == "spec_frames" and entry["class"] == tower.torch_class
  back = tower.import_export(config, str(tmp_path), {"params": _shapes(m, 24)})
  for (pa, a), (pb, b) in zip(*(sorted(jax.tree_util.tree_leaves_with_path(v), key=lambda e: str(e[0]))
                                for v in (variables["params"], back["params"]))):
    assert pa == pb
    np.testing.assert_array_equal(np.asarray(a), b)
  torch_model = ZipformerTorch.from_pretrained(str(tmp_path / "audio"))
  with torch.no_grad():
    got = torch_model(torch.from_numpy(fbank), torch.from_numpy(lens)).numpy()
  pooled, _ = m.apply(variables, jnp.asarray(fbank), jnp.asarray(lens))
  np.testing.assert_allclose(got, np.asarray(pooled), atol=1e-4, rtol=1e-4)
