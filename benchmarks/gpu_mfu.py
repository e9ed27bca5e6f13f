r"""MFU of the ViT-B + BERT-base contrastive + MAE train step (bf16 compute), on whatever
accelerator JAX sees: the figure to take from a session that is lent a GPU.

  python benchmarks/gpu_mfu.py [--batch 256] [--steps 20] [--dtype bfloat16] [--small]

The step is the library's own (``Trainer.compile``: the program ``python -m jaxclap.main``
runs), on a 1-device mesh, fed one random batch of the demo's input shapes (3 s clips at
16 kHz, 56-token captions): AudioMAE's ViT-B (12 x 768, 16 x 16 tiles, MAE decoder 8 x
512, mask ratio 0.8) and a BERT-base text tower (12 x 768, WordPiece vocabulary, from
scratch), contrastive InfoNCE + 0.1 x MAE (configs.set_terms), AdamW, every parameter
trained, compute in ``--dtype`` with float32 master weights. The FLOPs are counted from
the traced step (``jaxclap.perf.count_flops``: matmuls and convolutions; recomputation
included) and the peak is the device's data-sheet dense bf16 figure (``jaxclap.perf``;
a CPU's is a stated assumption), so MFU = FLOPs / step time / peak, as the training log
prints it. ``--small`` shrinks both towers to 1 layer of 64 for a CPU smoke run
(measured here: 2.4M parameters, batch 8, compiled in 138 s at load 12 on 2 AVX-512
cores, then 110 ms a step: MFU 1.0% of the assumed CPU peak).

Prints the device, the counted TFLOP per step, the compiled memory, the median step time
over ``--steps`` (after one warm-up step), samples/s, TFLOP/s and MFU, and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def make_config(dtype: str, batch: int, small: bool):
  from jaxclap import configs
  c = configs.load("configs/demo.py:text=bert")
  c.global_batch_size, c.compute_dtype = batch, dtype
  c.augment.rows = 0.0
  c.mesh.data = 1
  vit = configs.preset_tower("vit", "audiomae-vit-b")
  bert = dict(hidden_size=768, depth=12, num_heads=12, mlp_dim=3072)
  if small:
    vit = configs.tower(configs.AUDIO, "vit", runlocal=True)
    bert = dict(hidden_size=64, depth=1, num_heads=2, mlp_dim=128)
  c.model.audio = vit
  for k, v in bert.items():
    c.model.text[k] = v
  c.model.text.init = None
  c.optim.frozen = []
  configs.set_terms(c, info_nce=1.0, mae=0.1)
  return c


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--batch", type=int, default=256, help="global batch (clips per step)")
  p.add_argument("--steps", type=int, default=20, help="timed steps (after one warm-up)")
  p.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"),
                 help="compute dtype (master weights stay float32)")
  p.add_argument("--small", action="store_true",
                 help="1-layer 64-wide towers: a CPU smoke run, not a measurement")
  args = p.parse_args(argv)

  import jax
  from jaxclap import perf, sharding, train
  from train_step import make_batch
  config = make_config(args.dtype, args.batch, args.small)
  device = jax.devices()[0]
  mesh = sharding.make_mesh(config.mesh, [device])
  trainer = train.Trainer(config, mesh)
  state = trainer.init_state(int(config.seed))
  batch = sharding.global_batch(make_batch(config, args.batch), mesh)
  t = time.perf_counter()
  step, flops = trainer.compile(state, batch)
  compile_s = time.perf_counter() - t
  peak, source = perf.device_peak([device], float(config.peak_tflops))
  n_params = sum(int(x.size) for x in jax.tree_util.tree_leaves(state.params))
  isa = perf.hardware_isa() if device.platform == "cpu" else None
  print(f"device: {device.device_kind} ({device.platform}"
        + (f", ISA {isa}" if isa else "") + f"); jax {jax.__version__}")
  print(f"ViT-B + BERT-base{' (--small)' if args.small else ''}: {n_params / 1e6:.1f}M "
        f"parameters, batch {args.batch}, compute {args.dtype}; compiled in {compile_s:.1f} s")
  print(f"{perf.flop_text(flops)} per step (matmuls and convolutions counted from the "
        f"program); MFU against {source}")
  print(perf.memory_line(step))
  state, metrics = step(state, batch)   # warm-up
  jax.block_until_ready(metrics)
  times = []
  for _ in range(args.steps):
    t = time.perf_counter()
    state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - t)
  med = statistics.median(times)
  tflops = flops / med / 1e12
  mfu = flops / med / peak if peak else float("nan")
  loss = float(metrics["loss"])
  print(f"step {med * 1e3:.1f} ms median of {args.steps} (best {min(times) * 1e3:.1f} ms); "
        f"{args.batch / med:.1f} samples/s; {tflops:.3g} TFLOP/s; MFU {100 * mfu:.1f}%; "
        f"loss {loss:.4f}")
  print(json.dumps(dict(device=device.device_kind, platform=device.platform, isa=isa,
                        batch=args.batch, dtype=args.dtype, small=args.small,
                        params=n_params, flops_per_step=flops, step_s=med,
                        samples_per_s=args.batch / med, tflops_per_s=tflops, mfu=mfu,
                        peak_flops=peak, peak_source=source, loss=loss)))


if __name__ == "__main__":
  main()
