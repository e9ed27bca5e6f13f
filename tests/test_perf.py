"""FLOPs counted from a program, the devices' peaks and the MFU the training log shows
(jaxclap.perf, train._Progress)."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hand_flops import minilm_layer, runlocal_vit
from jaxclap import perf


def test_counts_matmuls_convolutions_loops_and_shards_by_hand():
  """Each kind of equation against its hand count: a matmul, a grouped convolution, a
  scan (its body times its length), a cond (the costlier branch) and a shard_map (its
  per-device body times the devices)."""
  mesh = jax.sharding.AbstractMesh((4,), ("d",))
  P = jax.sharding.PartitionSpec

  def f(x, w, img, k):
    y = x @ w                                             # 2 * 8 * 16 * 32
    z = jax.lax.conv_general_dilated(                     # 2 * (2*6*6*8) * (2*3*3)
        img, k, (1, 1), "VALID", dimension_numbers=("NCHW", "OIHW", "NCHW"),
        feature_group_count=2)
    body = lambda c, _: (jnp.tanh(c @ jnp.ones((32, 32))), None)
    y, _ = jax.lax.scan(body, y, None, length=3)          # 3 * 2 * 8 * 32 * 32
    y = jax.lax.cond(y.sum() > 0, lambda a: a @ jnp.ones((32, 4)),       # 2 * 8 * 32 * 4
                     lambda a: a[:, :4] * 2.0, y)
    s = jax.shard_map(lambda a: a @ jnp.ones((4, 5)), mesh=mesh,         # 4 * 2 * 2*4*5
                      in_specs=P("d"), out_specs=P("d"))(y)
    return s.sum() + z.sum()

  jaxpr = jax.make_jaxpr(f)(jnp.ones((8, 16)), jnp.ones((16, 32)),
                            jnp.ones((2, 4, 8, 8)), jnp.ones((8, 2, 3, 3)))
  hand = (2 * 8 * 16 * 32 + 2 * (2 * 8 * 6 * 6) * (2 * 3 * 3) + 3 * 2 * 8 * 32 * 32
          + 2 * 8 * 32 * 4 + 4 * (2 * 2 * 4 * 5))
  assert perf.count_flops(jaxpr) == hand
  # and through value_and_grad: the backward's two matmuls per forward one
  g = jax.make_jaxpr(jax.value_and_grad(lambda x, w: (x @ w).sum(), argnums=(0, 1)))
  assert perf.count_flops(g(jnp.ones((8, 16)), jnp.ones((16, 32)))) == 3 * 2 * 8 * 16 * 32


def _trainer_flops(grad_accum=1):
  from jaxclap import aot, configs, sharding, train
  c = configs.load("configs/demo.py:runlocal")
  c.optim.grad_accum, c.mesh.data = grad_accum, 1
  trainer = train.Trainer(c, sharding.make_mesh(c.mesh))
  batch = aot.batch_spec(c, trainer.batch_sharding)
  return perf.count_flops(trainer.step.trace(trainer.abstract_state(), batch).jaxpr)


def test_the_demo_steps_flops_against_a_hand_count_and_with_accumulation():
  """The runlocal demo's step: the frozen MiniLM forward only (6 layers over 8 x 56
  tokens), the ViT forward and backward (3x); the count adds the front end's mel
  matmul, the MAE decoder, heads and loss. Accumulating over 2 micro-batches does the
  same work in a scan: the count is the same (XLA's cost_analysis counts the scan's body
  once, half of it)."""
  flops = _trainer_flops()
  hand = 6 * minilm_layer(8, 56) + 3 * runlocal_vit(8)
  assert 1.0 <= flops / hand <= 1.15, (flops, hand)
  assert _trainer_flops(grad_accum=2) == pytest.approx(flops, rel=1e-3)


def test_peaks_per_device():
  peak, how = perf.cpu_peak(cores=2, ghz=2.5, isa="AVX-512")
  assert peak == 2 * 2.5e9 * 64 and "assumed" in how and "AVX-512" in how
  assert perf.cpu_peak(cores=2, ghz=2.5, isa="AVX2")[0] == peak / 2
  assert perf.chip("NVIDIA H100 80GB HBM3").peak_flops == 989e12
  assert perf.chip("TPU v5 lite").name == "v5e" and perf.chip("Quantum 9000") is None
  per_device, how = perf.device_peak()   # this process's CPU devices share the cores
  assert per_device > 0 and "assumed CPU peak" in how
  assert perf.device_peak(override_tflops=3.5) == (3.5e12, pytest.approx(
      "peak 3.5 TFLOP/s per device (config.peak_tflops)"))


def test_the_progress_line_and_rows_carry_tflops_and_mfu(tmp_path, capsys):
  """Each log step's metrics.jsonl row (and TensorBoard, perf/...) gets steps/s, TFLOP/s per device
  and MFU, related as the module says; the line shows them."""
  from jaxclap import train
  progress = train._Progress(str(tmp_path), total=4, start=0, is_main=True)
  progress.set_cost(flops=8e12, devices=4, peak=1e12)   # 2 TFLOP per device and step
  for step in range(1, 5):
    progress.add(step, {"loss": jnp.float32(1.0 / step), "nonfinite": jnp.float32(0)})
    if step % 2 == 0:
      progress.flush(step)
  progress.close()
  rows = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in rows] == [1, 2, 3, 4]
  assert "mfu" not in rows[0] and "mfu" not in rows[2]   # the log steps' rows only
  for r in (rows[1], rows[3]):
    assert r["tflops_per_device"] == pytest.approx(2.0 * r["steps_per_s"])
    assert r["mfu"] == pytest.approx(r["tflops_per_device"] / 1.0)
    assert math.isfinite(r["mfu"]) and r["mfu"] > 0
  lines = [l for l in capsys.readouterr().out.splitlines() if l.startswith("step")]
  assert len(lines) == 2 and all("TFLOP/s/device" in l and "MFU" in l for l in lines)


def test_memory_line_of_a_compiled_step():
  compiled = jax.jit(lambda x: x @ x.T, donate_argnums=0).lower(
      np.ones((64, 64), np.float32)).compile()
  line = perf.memory_line(compiled)
  assert line.startswith("compiled step per device: arguments 0.0 MiB") and "temporaries" in line
