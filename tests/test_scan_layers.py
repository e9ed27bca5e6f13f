"""``scan_layers`` (``model.scan_layers``, ``jaxclap.models.transformer.layer_stack``):
a scanned stack computes what the unrolled one computes on the same (stacked) weights,
forward and gradients, for the ViT with its MAE decoder, the BERT family, a Qwen3
decoder, Gemma3's sliding/global pattern and HTS-AT's shifted-window pairs (layers that
repeat with a period scan a period at a time, the remainder unrolled); real checkpoints
import into it; the train step on a scanned model equals the unrolled one's; the stacked
axis is never sharded."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxclap import configs, sharding, train
from jaxclap.models import bert, convert, decoder_lm, htsat, transformer, vit

import runs

TOL = dict(rtol=1e-5, atol=1e-5)


def _pair(cls, **fields):
  return cls(**fields), cls(**fields, scan_layers=True)


def _same(a, b, **tol):
  for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), **(tol or TOL))


def _check(unrolled, scanned, args, method=None):
  variables = nn.meta.unbox(unrolled.init(jax.random.PRNGKey(0), *args, method=method))
  params = variables.pop("params")          # the rest (batch_stats) is shared as it is
  shapes = jax.eval_shape(lambda: scanned.init(jax.random.PRNGKey(0), *args,
                                               method=method))["params"]
  stacked = transformer.stack_layers(params, nn.meta.unbox(shapes))
  assert transformer.has_scanned(stacked) and not transformer.has_scanned(params)
  assert jax.tree_util.tree_structure(transformer.unstack_layers(stacked)) == \
      jax.tree_util.tree_structure(params)
  out = lambda m, p: m.apply({"params": p, **variables}, *args, method=method)
  _same(out(unrolled, params), out(scanned, stacked))
  loss = lambda m: lambda p: sum(jnp.sum(jnp.tanh(x)) for x in jax.tree_util.tree_leaves(
      out(m, p)) if jnp.issubdtype(x.dtype, jnp.floating))
  g_unrolled = jax.grad(loss(unrolled))(params)
  g_scanned = jax.grad(loss(scanned))(stacked)
  # Float32 sums in another order: each gradient within 1e-5 of its own largest entry.
  for x, y in zip(jax.tree_util.tree_leaves(transformer.stack_layers(g_unrolled, g_scanned)),
                  jax.tree_util.tree_leaves(g_scanned)):
    scale = max(1.0, float(np.max(np.abs(np.asarray(x)))))
    np.testing.assert_allclose(np.asarray(y), np.asarray(x), rtol=0, atol=1e-5 * scale)
  return params, stacked, shapes


def _depth(tree):
  """The stacked (group) axis of a scanned child."""
  return jax.tree_util.tree_leaves(tree)[0].shape[0]


def test_layer_period():
  a, b = dict(shift=0), dict(shift=2)
  assert transformer.layer_period([a] * 4) == 1
  assert transformer.layer_period([a, b] * 3) == 2
  assert transformer.layer_period([a, a, b] * 2 + [a]) == 3
  assert transformer.layer_period([a, b, b]) == 3     # nothing repeats: one group


def test_vit_and_its_mae_decoder():
  spec = np.random.default_rng(0).normal(size=(2, 64, 32)).astype(np.float32)
  fields = dict(width=32, depth=3, num_heads=2, mlp_dim=64, patch=16, pooling="mean",
                mask_ratio=0.5, mae_width=16, mae_depth=2, mae_heads=2)
  a, b = _pair(vit.SpectrogramViT, **fields)
  _, _, shapes = _check(a, b, (spec, jnp.array([64, 40]), jax.random.PRNGKey(3)),
                        method="reconstruct")
  enc = nn.meta.unbox(shapes)["encoder"]
  assert set(enc) == {"layers"} and set(enc["layers"]) == {"layer_0"}
  assert enc["layers"]["layer_0"]["attn"]["query"]["kernel"].shape[0] == 3
  assert _depth(nn.meta.unbox(shapes)["decoder"]["layers"]) == 2
  # The stacked axis carries the logical name "layers", which no rule shards.
  spec_q = nn.get_partition_spec(shapes)["encoder"]["layers"]["layer_0"]["attn"]["query"][
      "kernel"]
  assert spec_q[0] == "layers" and dict(sharding.DEFAULT_RULES)["layers"] is None
  _check(a, b, (spec, jnp.array([64, 40])))


def test_bert_and_a_real_checkpoint():
  from jaxclap.tokenizers import minilm_dir
  ids = np.random.default_rng(1).integers(1, 30000, (2, 12)).astype(np.int32)
  mask = np.ones((2, 12), np.int32)
  mask[1, 7:] = 0
  _check(*_pair(bert.BertTower, vocab_size=30522, hidden_size=32, depth=3, num_heads=2,
                mlp_dim=64), (ids, mask))
  # all-MiniLM-L6-v2's weights (named layer by layer) import into the stacked layout.
  a, b = _pair(bert.BertTower, pooling="mean")   # its shape
  target = lambda m: jax.eval_shape(lambda: m.init(jax.random.PRNGKey(0), ids, mask))["params"]
  flat = convert.import_tower("minilm", str(minilm_dir()), target(a))
  stacked = convert.import_tower("minilm", str(minilm_dir()), target(b))
  assert set(stacked["encoder"]) == {"layers"}
  _same(transformer.stack_layers(flat, nn.meta.unbox(target(b))), stacked, rtol=0, atol=0)
  _same(a.apply({"params": flat}, ids, mask), b.apply({"params": stacked}, ids, mask))


def test_qwen3_decoder_and_gemma3_sliding_global_pattern():
  ids = np.random.default_rng(2).integers(1, 100, (2, 9)).astype(np.int32)
  mask = np.ones((2, 9), np.int32)
  mask[0, 6:] = 0
  small = dict(vocab_size=100, hidden_size=32, depth=3, num_heads=4, num_kv_heads=2,
               head_dim=8, mlp_dim=64)
  _check(*_pair(decoder_lm.DecoderTower, family="qwen3", **small), (ids, mask))
  # Gemma3: (sliding, global) x 2 scanned, the fifth (sliding) layer unrolled after them,
  # as MedGemma's 34 layers scan five periods of six and unroll four.
  gemma = dict(small, depth=5, family="gemma3", sliding_window=4, sliding_window_pattern=2)
  _, _, shapes = _check(*_pair(decoder_lm.DecoderTower, **gemma), (ids, mask))
  shapes = nn.meta.unbox(shapes)
  assert set(shapes["layers"]) == {"layer_0", "layer_1"} and _depth(shapes["layers"]) == 2
  assert "layer_4" in shapes and "layer_3" not in shapes


def test_htsat_shifted_window_pairs_and_its_checkpoint():
  """Stage 0 holds 2 blocks (one pair), stage 1 four (two pairs), stage 2's map fits one
  window, so its blocks are all alike (period 1)."""
  spec = 3 * np.random.default_rng(4).normal(size=(2, 256, 16)).astype(np.float32)
  fields = dict(spec_size=64, num_mel_bins=16, embed_dim=16, depths=(2, 4, 2),
                num_heads=(2, 2, 4), window_size=4)
  a, b = _pair(htsat.HTSAT, **fields)
  _, stacked, shapes = _check(a, b, (spec,))
  shapes = nn.meta.unbox(shapes)
  assert set(shapes["stage_1"]["layers"]) == {"block_0", "block_1"}
  assert _depth(shapes["stage_1"]["layers"]) == 2
  assert set(shapes["stage_2"]["layers"]) == {"block_0"} and _depth(shapes["stage_2"]["layers"]) == 2
  # transformers' ClapAudioModel names blocks one by one: export from the stacked tower,
  # import into it again, identical; the export is the unrolled tower's.
  target = jax.eval_shape(lambda: b.init(jax.random.PRNGKey(0), spec))
  flat = nn.meta.unbox(a.init(jax.random.PRNGKey(0), spec))
  variables = {"params": stacked, "batch_stats": flat["batch_stats"]}
  sd = htsat.export_torch(variables)
  assert sd.keys() == htsat.export_torch(flat).keys()
  _same(convert.import_tower("htsat", sd, target), variables, rtol=0, atol=0)


def test_the_train_step_of_a_scanned_model_is_the_unrolled_ones():
  def trainer(scan):
    c = configs.load("demo", "runlocal")
    c.global_batch_size = 4
    c.model.text.update(vocab_size=200, hidden_size=32, depth=2, num_heads=2, mlp_dim=64,
                        max_len=64, init=None)
    c.optim.frozen = ()   # both stacks train
    c.model.scan_layers = scan
    mesh = sharding.make_mesh(c.mesh, jax.devices()[:1])
    return c, mesh, train.Trainer(c, mesh)

  c, mesh, flat = trainer(False)
  _, _, scanned = trainer(True)
  state = flat.init_state(0)
  like = nn.meta.unbox(scanned.abstract_state())
  s_state = scanned.init_state(0).replace(
      params=jax.tree_util.tree_map(jnp.asarray, transformer.stack_layers(
          jax.device_get(state.params), like.params)))
  s_state = s_state.replace(opt_state=scanned.tx.init(s_state.params))
  rng = np.random.default_rng(0)
  batch = sharding.global_batch(runs.random_batch(c, 4, rng), mesh)
  s1, m1 = flat.step(state, batch)
  s2, m2 = scanned.step(s_state, batch)
  for key in ("loss", "contrastive", "mae", "grad_norm"):
    np.testing.assert_allclose(float(m2[key]), float(m1[key]), rtol=1e-5, err_msg=key)
  _same(transformer.stack_layers(jax.device_get(s1.params), like.params),
        jax.device_get(s2.params), rtol=1e-4, atol=1e-6)
