"""Named remat policies (``model.remat``, ``jaxclap.models.transformer.REMAT_POLICIES``):
the same loss and gradients under every policy, the policy really reaches the compiled
step (a ``checkpoint`` equation carrying it), less temporary memory with full remat, and
a clear error for an unknown name."""

import importlib.util

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxclap import aot, configs
from jaxclap.models import transformer, two_towers

ENC = dict(depth=3, num_heads=2, mlp_dim=64)


def _grads(remat, x):
  enc = transformer.Encoder(**ENC, remat=remat)
  params = enc.init(jax.random.PRNGKey(0), x)["params"]
  loss = lambda p, x: jnp.sum(jnp.tanh(enc.apply({"params": p}, x)) ** 2)
  return params, loss, jax.value_and_grad(loss)


def _checkpoint_policies(jaxpr):
  """The policies of every remat (``jax.checkpoint``) equation, nested jaxprs included."""
  found = []
  for eqn in jaxpr.eqns:
    if eqn.primitive.name in ("checkpoint", "remat2"):  # remat2: the name jax gives it now
      found.append(eqn.params["policy"])
    for sub in jax.core.jaxprs_in_params(eqn.params):
      found += _checkpoint_policies(sub)
  return found


@pytest.mark.parametrize("name", ["none", True, *transformer.REMAT_POLICIES])
def test_every_policy_same_loss_and_grads(name):
  x = jax.random.normal(jax.random.PRNGKey(1), (2, 16, 32))
  params, loss, vg = _grads("none", x)
  want_loss, want = vg(params, x)
  _, _, vg_r = _grads(name, x)
  got_loss, got = vg_r(params, x)
  np.testing.assert_allclose(got_loss, want_loss, rtol=1e-6)
  jax.tree_util.tree_map(lambda g, w: np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6),
                         got, want)
  policies = _checkpoint_policies(jax.make_jaxpr(vg_r)(params, x).jaxpr)
  if name == "none":
    assert policies == []
  else:
    policy = transformer.REMAT_POLICIES["nothing_saveable" if name is True else name]
    assert policies == [policy] * ENC["depth"], policies


@pytest.mark.skipif(importlib.util.find_spec("libtpu") is None,
                    reason="libtpu is not installed (pip install -e '.[tpu]'): the CPU "
                           "compiler keeps the same buffers under every policy")
def test_policies_trade_temporary_memory_on_a_tpu_compile():
  """On a TPU v5e compile (libtpu's compile-only device: XLA's CPU backend plans the same
  temporaries whatever the policy), full remat keeps least, the weight-matmul policy
  more, no remat most; dots_saveable keeps every matmul output, no less than none."""
  devices = aot.topology_devices("v5e:2x2")
  replicated = jax.sharding.NamedSharding(jax.sharding.Mesh(devices[:1], ("d",)),
                                          jax.sharding.PartitionSpec())
  shape = (16, 256, 128)
  temp = {}
  for name in ("none", *transformer.REMAT_POLICIES):
    enc = transformer.Encoder(depth=4, num_heads=4, mlp_dim=512, remat=name)
    abstract = lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=replicated)
    params = jax.tree_util.tree_map(abstract, jax.eval_shape(
        lambda: enc.init(jax.random.PRNGKey(0), jnp.zeros(shape))["params"]))
    loss = lambda p, x: jnp.sum(jnp.tanh(enc.apply({"params": p}, x)) ** 2)
    compiled = jax.jit(jax.grad(loss)).lower(
        params, jax.ShapeDtypeStruct(shape, jnp.float32, sharding=replicated)).compile()
    temp[name] = compiled.memory_analysis().temp_size_in_bytes
  assert (temp["nothing_saveable"] < 0.5 * temp["dots_with_no_batch_dims_saveable"]
          < 0.5 * temp["none"] <= 0.5 * temp["dots_saveable"]), temp


def test_model_remat_reaches_every_tower_with_layers():
  config = configs.load("configs/demo.py", "runlocal")
  config.model.remat = "dots_saveable"
  model = two_towers.from_config(config.model)
  spec = jnp.zeros((2, 128, config.features.n_mels))
  frames = jnp.full((2,), 128, jnp.int32)
  ids = jnp.ones((2, 8), jnp.int32)
  mask = jnp.ones((2, 8), jnp.int32)
  variables = model.init(jax.random.PRNGKey(0), spec, frames, ids, mask)

  def loss(p):
    a, t, _ = model.apply({**variables, "params": p}, spec, frames, ids, mask)
    return jnp.sum(a * t)

  policies = _checkpoint_policies(jax.make_jaxpr(jax.grad(loss))(variables["params"]).jaxpr)
  depth = config.model.audio.depth + config.model.text.depth
  assert policies == [jax.checkpoint_policies.dots_saveable] * depth, len(policies)


def test_unknown_policy_is_named():
  with pytest.raises(ValueError, match=r"remat must be .*dots_saveable.*got 'dots'"):
    _grads("dots", jnp.zeros((1, 4, 32)))
