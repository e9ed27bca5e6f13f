"""The trainer: an 8-device CPU mesh (data=4 x fsdp=2) matching 1 device, gradient
accumulation, frozen parameters, the demo with other towers. tests/test_reliability.py
has kill -9 at random points and exact resume, SIGTERM, broken checkpoints, config
mismatches, the folder lock, write errors and NaN steps."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
from jax.sharding import PartitionSpec as P

import runs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  """The embedded corpus at the runlocal scale, built once for the module."""
  return str(tmp_path_factory.mktemp("datasets"))


def _per_step(workdir):
  """metrics.jsonl -> {step: row}; a step logged twice fails."""
  rows = {}
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    for line in f:
      r = json.loads(line)
      assert r["step"] not in rows, f"step {r['step']} logged twice"
      rows[r["step"]] = r
  return rows


MESH_SCRIPT = textwrap.dedent("""
    import json, sys
    import jax, numpy as np
    from jaxclap import configs
    from jaxclap import sharding, train
    from tests.runs import random_batch
    c = configs.load("demo", "runlocal")
    c.total_steps = 3
    c.global_batch_size = 16
    c.compute_dtype = "float32"
    c.model.text.update(vocab_size=200, hidden_size=32, depth=2, num_heads=2, mlp_dim=64,
                        max_len=64, init=None)
    rng = np.random.default_rng(0)
    batches = [random_batch(c, 16, rng, varied_lengths=True) for _ in range(3)]
    out = {}
    for name, mesh_cfg, devices in (("one", dict(data=1, fsdp=1, tensor=1), jax.devices()[:1]),
                                    ("eight", dict(data=4, fsdp=2, tensor=1), jax.devices())):
      for mode in ("gather", "chunked"):
        c.loss.mode = mode
        c.mesh = mesh_cfg
        mesh = sharding.make_mesh(c.mesh, devices)
        tr = train.Trainer(c, mesh)
        state = tr.init_state(0)
        losses = []
        for b in batches:
          state, m = tr.step(state, sharding.global_batch(b, mesh))
          losses.append([float(m["loss"]), float(m["contrastive"]), float(m["mae"])])
        out[f"{name}/{mode}"] = losses
        if name == "eight":
          spec = state.params["audio"]["encoder"]["layer_0"]["mlp"]["fc_in"]["kernel"].sharding.spec
          out["fsdp_spec"] = str(spec)
    print(json.dumps(out))
""")


def test_eight_devices_match_one():
  env = runs.clean_env()
  env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
  res = subprocess.run([sys.executable, "-c", MESH_SCRIPT], cwd=ROOT, env=env, check=True,
                       capture_output=True, text=True, timeout=900)
  out = json.loads(res.stdout.strip().splitlines()[-1])
  assert "fsdp" in out["fsdp_spec"]            # parameters really are sharded
  ref = out["one/gather"]
  for key in ("one/chunked", "eight/gather", "eight/chunked"):
    for step, (a, b) in enumerate(zip(out[key], ref)):
      for x, y in zip(a, b):
        assert abs(x - y) <= 1e-5 * max(1.0, abs(y)), (key, step, x, y)


ACCUM_SCRIPT = textwrap.dedent("""
    import json, sys
    import jax, jax.numpy as jnp, numpy as np
    from jaxclap import configs
    from jaxclap import losses, sharding, train
    from tests.runs import random_batch
    c = configs.load("demo", "runlocal")
    c.global_batch_size = 8
    c.optim.grad_accum = 2
    c.loss.terms.mae = 0.0           # contrastive only: its value per micro-batch is exact
    c.optim.frozen = ()              # the reference differentiates every parameter
    c.model.text.update(vocab_size=200, hidden_size=32, depth=1, num_heads=2, mlp_dim=64,
                        max_len=64, init=None)
    rng = np.random.default_rng(0)
    b = random_batch(c, 8, rng)
    mesh = sharding.make_mesh(c.mesh)
    tr = train.Trainer(c, mesh)
    state = tr.init_state(0)
    params = jax.device_get(state.params)
    # The reference: InfoNCE of micro-batches rows k::2, averaged, and its gradient.
    def ref_loss(p):
      total = 0.0
      for k in range(2):
        mb = {key: v[k::2] for key, v in b.items()}
        spec, frames = tr.features(mb)
        a, t, s = tr.model.apply({"params": p}, spec, frames, mb["text_ids"][:, 0], mb["text_mask"][:, 0])
        total += losses.info_nce(a, t, losses.clamp_logit_scale(s))[0] / 2
      return total
    loss_ref, g_ref = jax.value_and_grad(ref_loss)(params)
    _, m = tr.step(state, sharding.global_batch(b, mesh))
    print(json.dumps({"step": float(m["loss"]), "ref": float(loss_ref),
                      "gnorm": float(m["grad_norm"]),
                      "gnorm_ref": float(jnp.sqrt(sum(jnp.sum(x * x) for x in jax.tree_util.tree_leaves(g_ref))))}))
""")


def test_gradient_accumulation_averages_micro_batches():
  res = subprocess.run([sys.executable, "-c", ACCUM_SCRIPT], cwd=ROOT, env=runs.clean_env(), check=True,
                       capture_output=True, text=True, timeout=600)
  out = json.loads(res.stdout.strip().splitlines()[-1])
  assert abs(out["step"] - out["ref"]) <= 1e-5 * max(1.0, abs(out["ref"]))
  assert abs(out["gnorm"] - out["gnorm_ref"]) <= 1e-4 * max(1.0, out["gnorm_ref"])


def _tiny_trainer(**optim):
  from jaxclap import configs
  from jaxclap import sharding, train
  c = configs.load("demo", "runlocal")
  c.global_batch_size = 4
  c.model.text.update(vocab_size=200, hidden_size=32, depth=2, num_heads=2, mlp_dim=64,
                      max_len=64, init=None)
  c.optim.update(optim)
  import jax
  mesh = sharding.make_mesh(c.mesh, jax.devices()[:1])
  return c, mesh, train.Trainer(c, mesh)


def test_frozen_parameters_get_no_update_and_no_optimizer_state():
  import jax
  import numpy as np
  from flax import traverse_util
  from jaxclap import sharding
  frozen = ("text/encoder/layer_0/.*", "text/word_embeddings/.*")
  c, mesh, tr = _tiny_trainer(frozen=frozen)
  state = tr.init_state(0)
  before = traverse_util.flatten_dict(jax.device_get(state.params), sep="/")
  rng = np.random.default_rng(0)
  batch = runs.random_batch(c, 4, rng)
  for _ in range(2):
    state, _ = tr.step(state, sharding.global_batch(batch, mesh))
  after = traverse_util.flatten_dict(jax.device_get(state.params), sep="/")
  is_frozen = lambda k: k.startswith(("text/encoder/layer_0/", "text/word_embeddings/"))
  assert any(map(is_frozen, before))
  for k in before:
    if is_frozen(k):
      np.testing.assert_array_equal(after[k], before[k], err_msg=k)
  moved = [k for k in before if not is_frozen(k) and not np.array_equal(after[k], before[k])]
  assert "text/encoder/layer_1/attn/query/kernel" in moved and "audio_head/fc_in/kernel" in moved
  # Adam keeps two moments per trained parameter and nothing for frozen ones.
  trained = sum(v.size for k, v in before.items() if not is_frozen(k) and v.ndim > 0)
  opt = sum(x.size for x in jax.tree_util.tree_leaves(state.opt_state) if x.ndim > 0)
  assert opt == 2 * trained


def test_the_step_takes_text_in_the_pipelines_layout_only():
  """Text is [batch, captions per clip, tokens], as the input pipeline gives it; another
  shape is refused when the step is traced, naming both arrays' shapes."""
  import jax
  import numpy as np
  c, _, tr = _tiny_trainer()
  samples = int(c.input.clip_seconds * c.input.sample_rate)
  length = int(c.input.max_text_len)
  spec = lambda *shape: jax.ShapeDtypeStruct(shape, np.int32)
  batch = {"audio": jax.ShapeDtypeStruct((4, samples), np.float32), "audio_len": spec(4),
           "text_ids": spec(4, length), "text_mask": spec(4, length)}
  with pytest.raises(ValueError, match=rf"batch text_ids \(4, {length}\), text_mask "
                     rf"\(4, {length}\): the step takes both as \[batch, captions per clip"):
    tr.step.trace(tr.abstract_state(), batch)
  batch.update(text_ids=spec(4, 1, length), text_mask=spec(4, 1, length))
  tr.step.trace(tr.abstract_state(), batch)   # the pipeline's layout traces


def test_flip_trains_on_kept_tiles_and_its_unmasked_tuning_on_all():
  """FLIP (model.audio.flip_mask_ratio): the training step differs from the unmasked
  one; the unmasked-tuning step (unmasked_tuning_steps) is the unmasked model's step on
  the same parameters; asking for unmasked tuning without FLIP is refused."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  from jaxclap import configs, sharding, train

  def trainer(flip, tuning=0):
    c = configs.load("demo", "runlocal")
    c.global_batch_size = 4
    c.model.text.update(vocab_size=200, hidden_size=32, depth=2, num_heads=2, mlp_dim=64,
                        max_len=64, init=None)
    c.model.audio.update(flip_mask_ratio=flip, shared_mae_pass=False)   # FLIP alone
    c.unmasked_tuning_steps = tuning
    mesh = sharding.make_mesh(c.mesh, jax.devices()[:1])
    return c, mesh, train.Trainer(c, mesh)

  c, mesh, flip = trainer(0.5, tuning=3)
  assert flip.unmasked_from == c.total_steps - 2
  _, _, plain = trainer(0.0)
  rng = np.random.default_rng(0)
  batch = sharding.global_batch(runs.random_batch(c, 4, rng), mesh)
  state = flip.init_state(0)
  copy = lambda: jax.tree_util.tree_map(jnp.copy, state)
  _, masked = flip.step(copy(), batch)
  _, tuned = flip.step_unmasked(copy(), batch)
  _, ref = plain.step(copy(), batch)
  for key in ("loss", "grad_norm"):
    np.testing.assert_allclose(float(tuned[key]), float(ref[key]), rtol=1e-6, err_msg=key)
  assert abs(float(masked["loss"]) - float(ref["loss"])) > 1e-4
  with pytest.raises(ValueError, match=r"unmasked_tuning_steps=3 needs "
                                       r"model.audio.flip_mask_ratio > 0"):
    trainer(0.0, tuning=3)
  c = configs.load("demo", "runlocal")   # the demo's shared MAE pass, and FLIP on top
  c.model.audio.flip_mask_ratio = 0.5
  with pytest.raises(ValueError, match=r"flip_mask_ratio=0.5 would mask twice"):
    train.Trainer(c, mesh)


def test_a_pattern_matching_no_parameter_is_refused():
  with pytest.raises(ValueError, match=r"optim.frozen: 'text/encoder/layer_9/\.\*' matches no"):
    _tiny_trainer(frozen=("text/encoder/layer_9/.*",))
  with pytest.raises(ValueError, match=r"optim.lr_mults: 'txt/\.\*' matches no"):
    _tiny_trainer(lr_mults=(("txt/.*", 0.1),))


@pytest.mark.parametrize("towers", ["audio=htsat,text=roberta", "audio=cnn14,text=qwen3",
                                    "audio=vit,text=gemma3"])
def test_demo_trains_other_towers_by_one_override(tmp_path, data_dir, towers):
  """The model zoo's towers drop into the demo through its config arguments: the loss is
  finite, batch-norm statistics are carried and updated, a
  corpus-trained vocabulary is kept beside the checkpoints, and jaxclap.load serves it."""
  workdir = tmp_path / "run"
  cmd = [sys.executable, "-m", "jaxclap.main",
         f"--config=configs/demo.py:runlocal,steps=6,{towers}", f"--workdir={workdir}",
         f"--config.corpus.data_dir={data_dir}", "--config.log_every=1"]
  subprocess.run(cmd, cwd=ROOT, env=runs.clean_env(), check=True, timeout=900, stdout=subprocess.DEVNULL)
  rows = _per_step(workdir)
  assert sorted(rows) == list(range(1, 7))
  assert all(abs(r["loss"]) < 1e3 for r in rows.values())
  results = json.loads((workdir / "results.json").read_text())
  assert len(results["zero_shot"]) == 10
  check = textwrap.dedent(f"""
      import json, numpy as np, jax, jaxclap
      m = jaxclap.load({str(workdir)!r})
      stats = m.variables.get("batch_stats", {{}}).get("audio", {{}})
      var = [float(np.mean(np.asarray(v))) for k, v in
             jax.tree_util.tree_flatten_with_path(stats)[0] if "var" in str(k[-1])]
      e = m.embed_text(["A woman speaking quickly."])
      print(json.dumps({{"var": var, "tok": m.config.tokenizer.get("path") or "",
                        "norm": float(np.linalg.norm(e))}}))
  """)
  out = json.loads(subprocess.run([sys.executable, "-c", check], cwd=ROOT, env=runs.clean_env(),
                                  check=True, capture_output=True, text=True,
                                  timeout=600).stdout.strip().splitlines()[-1])
  assert abs(out["norm"] - 1.0) < 1e-4
  if "htsat" in towers or "cnn14" in towers:
    assert out["var"] and all(v != 1.0 for v in out["var"])   # running stats moved from init
  if "minilm" not in towers:
    assert out["tok"].startswith(str(workdir / "tokenizer"))


def test_bad_tower_and_feature_settings_are_named():
  """An MAE term on a tower without a decoder, and an unknown front end, fail at build
  time with the config field named, not deep inside XLA."""
  from jaxclap import configs
  import jax
  import jax.numpy as jnp
  import ml_collections
  from jaxclap import sharding, train
  from jaxclap.models import two_towers
  c = configs.load("demo", "runlocal,audio=htsat")
  c.loss.terms.mae = 0.1
  with pytest.raises(ValueError, match=r"loss.terms.mae needs an audio tower with an "
                                       r"MAE decoder \(vit\); model.audio.name='htsat'"):
    train.Trainer(c, sharding.make_mesh(c.mesh, jax.devices()[:1]))
  feats = ml_collections.ConfigDict(dict(configs.load("demo", "runlocal").features, kind="mfcc"))
  with pytest.raises(ValueError, match=r"config.features.kind must be 'logmel' or 'fbank', "
                                       r"got 'mfcc'"):
    two_towers.spectrogram(feats, jnp.zeros((1, 16000)), jnp.array([16000]))


SPLIT_SCRIPT = textwrap.dedent("""
    import json, logging
    import flax.linen as nn, jax, jax.numpy as jnp
    from jaxclap import sharding
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    mesh = sharding.make_mesh({"data": 1, "fsdp": 8, "tensor": 1})
    box = lambda shape, names: nn.LogicallyPartitioned(
        jax.ShapeDtypeStruct(shape, jnp.float32), names)
    tree = {"scales": box((4, 1, 1), ("embed", "mlp", None)),   # 4 layers' scalars
            "kernel": box((16, 3), ("embed", "mlp"))}
    s = sharding.logical_shardings(tree, mesh, None)
    x = jax.device_put(jnp.ones((4, 1, 1)), s["scales"])         # it really places
    print(json.dumps({k: str(v.spec) for k, v in s.items()}))
""")


def test_a_dimension_the_mesh_does_not_divide_is_kept_whole_and_logged():
  env = runs.clean_env()
  env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
  res = subprocess.run([sys.executable, "-c", SPLIT_SCRIPT], cwd=ROOT, env=env, check=True,
                       capture_output=True, text=True, timeout=300)
  out = json.loads(res.stdout.strip().splitlines()[-1])
  assert out["kernel"] == str(P("fsdp", "tensor"))   # 16 rows split 8 ways, as before
  assert out["scales"] == str(P(None, "tensor", None))   # 4 rows cannot be: kept whole
  assert "1 arrays (0.0 MiB) kept whole" in res.stderr and "['scales'][4, 1, 1]" in res.stderr
