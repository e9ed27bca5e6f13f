"""Ahead-of-time compilation for a TPU slice (jaxclap.aot) on this CPU-only host.

libtpu (the ``tpu`` extra) compiles for compile-only TPU devices; without it every test
here is skipped, saying so. The runlocal demo and CLSP stage 1 are compiled for a v5e
2x2 slice, their figures checked against hand counts of their matmuls; an overflow
exits non-zero naming what overflowed.
"""

import importlib.util
import os
import subprocess
import sys

import pytest

from hand_flops import minilm_layer as _minilm_layer, runlocal_vit as _runlocal_vit

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("libtpu") is None,
    reason="libtpu is not installed (pip install -e '.[tpu]'): nothing to compile for a "
           "TPU topology with")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOPOLOGY = "v5e:2x2"
DEVICES = 4


def _compile(config_name, **overrides):
  from jaxclap import aot, configs
  c = configs.load(config_name)
  for k, v in overrides.items():
    c[k] = v
  return aot.compile_step(c, TOPOLOGY)


@pytest.fixture(scope="module")
def demo():
  """The runlocal demo compiled, recording that the program lowered is the Trainer's own
  step (its ``_step`` traced once, inside ``Trainer.step``) and that nothing loaded the
  pretrained text tower (``model.text.init="minilm"``) or built a state."""
  from jaxclap import train
  from jaxclap.models import convert
  calls = {"step": 0}
  original = train.Trainer._step

  def counted(self, state, batch):
    calls["step"] += 1
    return original(self, state, batch)

  def refuse(*args, **kwargs):
    raise AssertionError("AOT read weights or built a state")

  mp = pytest.MonkeyPatch()
  mp.setattr(train.Trainer, "_step", counted)
  mp.setattr(train.Trainer, "init_state", refuse)
  mp.setattr(convert, "import_tower", refuse)
  try:
    result = _compile("configs/demo.py:runlocal")
  finally:
    mp.undo()
  return result, calls


def test_demo_is_the_trainers_step(demo):
  result, calls = demo
  assert calls["step"] == 1   # traced once: the program compiled is Trainer._step
  trainer = result["trainer"]
  # The executable is what Trainer.step (the jitted function main calls) compiles to:
  # same shardings in and out, the state donated.
  compiled = result["compiled"]
  assert compiled.input_shardings[0][0] == trainer.state_shardings
  f = result["figures"]
  assert f["mesh"] == {"data": 4, "fsdp": 1, "tensor": 1}
  assert f["alias_bytes"] > 0.9 * f["state_bytes"]   # donate_argnums=(0,)


def test_demo_figures(demo):
  result, _ = demo
  f = result["figures"]
  from jaxclap import aot, perf
  assert f["chip"] == "v5e" and f["devices"] == DEVICES and f["hbm"] == perf.CHIPS[
      "TPU v5 lite"].usable_hbm
  # 22.7M parameters, all but the heads frozen (MiniLM); replicated over a data-only mesh.
  assert 22e6 < f["params"] < 23.5e6 and f["trained_params"] < 0.5e6
  assert 4 * f["params"] <= f["params_bytes"] < 4.2 * f["params"]
  assert 0 < f["temp_bytes"] and 0 < f["peak_bytes"] < f["hbm"] and f["fits"]
  assert f["argument_bytes"] >= f["state_bytes"] + f["batch_bytes"] - 2 ** 16
  # The frozen MiniLM is computed once per caption outside the step (config.frozen_cache,
  # as main runs it): the batch holds its pooled outputs (test_demo_flops has the counts).
  assert f["text_cached"]
  assert "text_pooled" in result["compiled"].args_info[0][1]
  assert f["tflop_per_step"] == pytest.approx(f["counted_flops"] / 1e12)
  assert 0 < f["mfu_bound"] <= 1 and f["bound_s"] >= f["compute_s"]
  # The compute bound is the counted FLOPs' (the cost analysis counts a loop body once).
  peak = perf.CHIPS["TPU v5 lite"].peak_flops
  assert f["compute_s"] == pytest.approx(f["counted_flops"] / DEVICES / peak)
  assert f["mfu_bound"] == pytest.approx(f["compute_s"] / f["bound_s"])
  text = aot.report(f)
  assert "peak" in text and text.splitlines()[-1].startswith("row: | v5e-4 (`v5e:2x2`) |")


def test_demo_serializes(demo, tmp_path):
  import pickle
  from jaxclap import aot
  result, _ = demo
  path = tmp_path / "step.bin"
  aot.serialize(result["compiled"], str(path))
  with open(path, "rb") as fh:
    payload, in_tree, out_tree = pickle.load(fh)
  assert len(payload) > 2 ** 16 and in_tree.num_leaves > 10 and out_tree.num_leaves > 10


def test_demo_flops(demo):
  """The step's FLOPs per device against a hand count, with config.frozen_cache off so
  that the frozen MiniLM runs in the step, forward only (6 layers over 8 x 56 tokens),
  and the ViT forward and backward (3x); the compiled count adds the rest (front end,
  MAE decoder, heads, loss, softmax, norms, optimiser). The global batch of 8 is split
  over the 4 devices. With the cache (the demo's default) the count is that less the
  tower's forward, and nothing else."""
  f = _compile("configs/demo.py:runlocal", frozen_cache=False)["figures"]
  assert not f["text_cached"]
  text = 6 * _minilm_layer(8, 56)
  hand = (text + 3 * _runlocal_vit(8)) / DEVICES
  assert 1.0 <= f["flops"] / hand <= 1.3, (f["flops"], hand)
  # Counted from the program (matmuls and convolutions only, over all devices): the
  # hand count plus the front end's mel matmul, the MAE decoder, heads and loss.
  assert 1.0 <= f["counted_flops"] / (hand * DEVICES) <= 1.15, (f["counted_flops"], hand)
  saved = f["counted_flops"] - demo[0]["figures"]["counted_flops"]
  assert saved == pytest.approx(text, rel=0.02), (saved, text)


def test_clsp_stage1_flops():
  """CLSP stage 1's runlocal trains MiniLM's top 2 layers (the lower 4 and the
  embeddings frozen): 4 layers forward only, 2 forward and backward (3x)."""
  f = _compile("configs/clsp.py:runlocal,stage=1")["figures"]
  hand = ((4 + 3 * 2) * _minilm_layer(8, 56) + 3 * _runlocal_vit(8)) / DEVICES
  assert 1.0 <= f["flops"] / hand <= 1.3, (f["flops"], hand)
  assert 0 < f["peak_bytes"] < f["hbm"]


def test_overflow_exits_naming_it(tmp_path):
  """A global batch of 32,768 runlocal clips does not fit a v5e: the command exits 1
  with one line naming the overflow, not a traceback."""
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  proc = subprocess.run(
      [sys.executable, "-m", "jaxclap.aot", "--config=configs/demo.py:runlocal",
       f"--topology={TOPOLOGY}", "--config.global_batch_size=32768"],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 1, proc.stderr[-3000:]
  last = proc.stderr.strip().splitlines()[-1]
  assert "does not fit" in last and "global batch 32768" in last and "v5e:2x2" in last, last
  assert "HBM" in last and "Traceback" not in proc.stderr


def test_topologies_and_slices():
  """Topology names as MaxText spells them, one device per chip, and two slices joined
  on the data axis (each slice one contiguous half of it)."""
  import ml_collections
  from jaxclap import aot
  assert aot.parse_topology("v5p:4x4x8") == ("v5:4x4x8", {})
  assert aot.parse_topology("v4:4x4x4") == ("v4:4x4x4", {"chip_config_name": "megacore"})
  with pytest.raises(ValueError, match="--topology='v5e-16'"):
    aot.parse_topology("v5e-16")
  assert len(aot.topology_devices("v4:2x2x2")) == 8      # 8 chips, 16 TensorCores
  devices = aot.topology_devices(TOPOLOGY, num_slices=2)
  mesh = aot.make_mesh(ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1)), devices, 2)
  assert dict(mesh.shape) == {"data": 8, "fsdp": 1, "tensor": 1}
  slices = [d.slice_index for d in mesh.devices.flat]
  assert slices == [0] * 4 + [1] * 4
  with pytest.raises(ValueError, match="multiple of --num_slices=2"):
    aot.make_mesh(ml_collections.ConfigDict(dict(data=1, fsdp=-1, tensor=1)), devices, 2)


def test_contrastive_loss_alone_gather_against_chunked():
  """The loss alone at 16,384 x 256 on 4 devices (4,096 rows each): gather holds at least
  one [4096, 16384] float32 logits block per device (256 MiB) and does at least the
  forward's two [n, d] x [d, N] products (one per direction) and their backward; chunked
  holds an n x n block (64 MiB), not n x N. The CLI prints the figures and the row."""
  from jaxclap import aot
  n, big, d = 4096, 16384, 256
  gather = aot.compile_loss(TOPOLOGY, "info_nce", "gather", big, d)
  chunked = aot.compile_loss(TOPOLOGY, "info_nce", "chunked", big, d)
  assert gather["devices"] == DEVICES
  assert gather["temp_bytes"] >= n * big * 4, gather
  assert n * n * 4 <= chunked["temp_bytes"] < n * big * 4 / 2, chunked
  forward = 2 * 2 * n * big * d
  assert 2 * forward <= gather["flops"] <= 6 * forward, (gather["flops"], forward)
  out = subprocess.run(
      [sys.executable, "-m", "jaxclap.aot", "--loss=sigmoid", "--mode=gather",
       f"--topology={TOPOLOGY}", "--global_batch=4096", "--embed_dim=256"],
      capture_output=True, text=True, cwd=ROOT, timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  assert "row: | sigmoid | gather | 4096 x 256 | v5e:2x2 (4) |" in out.stdout, out.stdout
