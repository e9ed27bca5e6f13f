"""Zipformer parity against the k2-fsa team's reference (PyPI ``zipformer`` 0.1.3, icefall's
model repackaged): the same random weights, imported through ``zipformer.import_torch``,
give the same encoder output (float32, 1e-4) with padded batches, at two sizes.

The reference's package ``__init__`` imports its training utilities (tensorboard, lhotse's
``atdataset``...), which the model does not need; so the three model files
(``modules/{zipformer,scaling,subsampling}.py``) and ``utils/utils.py`` (for
``torch_autocast``, which needs ``kaldialign``) are loaded by path under their own package
names, without running the package ``__init__`` files. Nothing is stubbed.
"""

import functools
import importlib.util
import os
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxclap.models import zipformer as Z

torch = pytest.importorskip("torch")


@functools.cache
def _load_reference():
  spec = importlib.util.find_spec("zipformer")
  root = spec.submodule_search_locations[0]

  def load(name, path):
    s = importlib.util.spec_from_file_location(name, path)
    m = importlib.util.module_from_spec(s)
    sys.modules[name] = m
    s.loader.exec_module(m)
    return m

  for pkg, sub in (("zipformer", ""), ("zipformer.modules", "modules")):
    if pkg not in sys.modules:
      p = types.ModuleType(pkg)
      p.__path__ = [os.path.join(root, sub)]
      sys.modules[pkg] = p
  if "zipformer.utils" not in sys.modules:
    load("zipformer.utils", os.path.join(root, "utils", "utils.py"))
  zf = sys.modules.get("zipformer.modules.zipformer") or load(
      "zipformer.modules.zipformer", os.path.join(root, "modules", "zipformer.py"))
  ss = sys.modules.get("zipformer.modules.subsampling") or load(
      "zipformer.modules.subsampling", os.path.join(root, "modules", "subsampling.py"))
  return zf, ss


def _reference():
  if "zipformer" not in sys.modules and importlib.util.find_spec("zipformer") is None:
    pytest.skip("reference not installed: pip install kaldialign && pip install --no-deps zipformer==0.1.3")
  return _load_reference()


SIZES = {
    "two_stacks": dict(feature_dim=20, downsampling_factor=(1, 2), encoder_dim=(16, 24),
                       num_encoder_layers=(1, 2), num_heads=2, query_head_dim=4, pos_head_dim=2,
                       value_head_dim=4, feedforward_dim=32, cnn_module_kernel=5, pos_dim=8),
    "u_net": dict(feature_dim=24, downsampling_factor=(1, 2, 4, 2), encoder_dim=(16, 32, 24, 16),
                  num_encoder_layers=1, num_heads=(2, 4, 2, 2), query_head_dim=8, pos_head_dim=4,
                  value_head_dim=4, feedforward_dim=(32, 48, 40, 32), cnn_module_kernel=(7, 5, 3, 5),
                  pos_dim=16),
}


def _torch_pair(cfg, zf, ss):
  torch.manual_seed(0)
  kw = {k: v for k, v in cfg.items() if k != "feature_dim"}
  embed = ss.Conv2dSubsampling(cfg["feature_dim"], Z._tuple(cfg["encoder_dim"], len(cfg["downsampling_factor"]))[0])
  enc = zf.Zipformer(output_downsampling_factor=2, causal=False, encoder_unmasked_dim=8, **kw)
  model = torch.nn.ModuleDict(dict(encoder_embed=embed, encoder=enc)).eval()
  with torch.no_grad():  # move every parameter off its init (zeros, 0.5s) so each one matters
    for p in model.parameters():
      p.add_(0.1 * torch.randn_like(p))
  return model


@pytest.mark.parametrize("size", sorted(SIZES))
def test_parity_with_icefall_zipformer(size):
  zf, ss = _reference()
  cfg = SIZES[size]
  model = _torch_pair(cfg, zf, ss)
  rng = np.random.default_rng(0)
  fbank = rng.standard_normal((3, 61, cfg["feature_dim"])).astype(np.float32)
  lens = np.array([61, 45, 30])
  with torch.no_grad():
    x, xl = model["encoder_embed"](torch.from_numpy(fbank), torch.from_numpy(lens))
    pad = torch.arange(x.shape[1])[None, :] >= xl[:, None]
    y, yl = model["encoder"](x.permute(1, 0, 2), xl, src_key_padding_mask=pad)
  ref = y.permute(1, 0, 2).numpy()
  m = Z.Zipformer(**cfg)
  shapes = jax.eval_shape(m.init, jax.random.PRNGKey(0), jnp.asarray(fbank), jnp.asarray(lens))["params"]
  params = Z.import_torch({k: v.numpy() for k, v in model.state_dict().items()}, shapes)
  out, out_lens = m.apply({"params": params}, jnp.asarray(fbank), jnp.asarray(lens))
  np.testing.assert_array_equal(np.asarray(out_lens), yl.numpy())
  assert out.shape == ref.shape
  for b, n in enumerate(yl.numpy()):  # frames past a clip's length are padding in both
    np.testing.assert_allclose(np.asarray(out[b, :n]), ref[b, :n], atol=1e-4, rtol=1e-4)


def test_bad_checkpoint_names_key_and_shapes():
  zf, ss = _reference()
  cfg = SIZES["two_stacks"]
  sd = {k: v.numpy() for k, v in _torch_pair(cfg, zf, ss).state_dict().items()}
  m = Z.Zipformer(**cfg)
  shapes = jax.eval_shape(m.init, jax.random.PRNGKey(0), jnp.zeros((1, 40, 20)), jnp.array([40]))["params"]
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


@pytest.mark.parametrize("preset", ["small", "large"])
def test_preset_param_count_matches_reference(preset):
  """Shape-only count of each icefall preset equals the reference modules' own count."""
  zf, ss = _reference()
  fields = Z.PRESETS[preset]
  ours = Z.param_count(**fields)
  kw = {k: fields.get(k, getattr(Z.Zipformer, k)) for k in (
      "downsampling_factor", "encoder_dim", "num_encoder_layers", "query_head_dim", "pos_head_dim",
      "value_head_dim", "num_heads", "feedforward_dim", "cnn_module_kernel", "pos_dim")}
  ref = zf.Zipformer(encoder_unmasked_dim=192, **kw)
  embed = ss.Conv2dSubsampling(80, Z._tuple(kw["encoder_dim"], 6)[0])
  want = sum(p.numel() for p in ref.parameters()) + sum(p.numel() for p in embed.parameters())
  assert ours == want
