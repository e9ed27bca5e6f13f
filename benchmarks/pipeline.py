"""Input pipeline throughput against the train step's consumption, in one run.

  python benchmarks/pipeline.py [--config configs/demo.py] [--batches 40] [--steps 10]

Measures, on the demo corpus and config (built/reused as the demo does):
  * pipeline: batches/s of the grain iterator (read, crop, caption draw, tokenisation,
    batching) with the config's threads, on the host alone;
  * step: steps/s of the jitted train step (features + towers + losses + update) on
    batches already on the device.
and prints the ratio pipeline/step: above 1 the step never waits for data (on this CPU
the two share the same 2 cores during training, so the ratio is a lower bound).
"""

import argparse
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--config", default=os.path.join(ROOT, "configs", "demo.py"),
                 help="config file (default configs/demo.py)")
  p.add_argument("--config_arg", default="", help="the config's own arguments, e.g. batch=32")
  p.add_argument("--batches", type=int, default=40, help="pipeline batches to time")
  p.add_argument("--steps", type=int, default=10, help="train steps to time (after warm-up)")
  args = p.parse_args()

  from absl import flags
  flags.FLAGS.mark_as_parsed()   # grain needs absl flags parsed
  import jax
  from jaxclap import configs, input_pipeline, sharding, tokenizers, train

  config = configs.load(args.config, args.config_arg)
  train.resolve_sources(config)
  tok = tokenizers.from_config(config.tokenizer)
  ds = input_pipeline.train_dataset(config.input, tok,
                                    global_batch_size=int(config.global_batch_size))
  it = input_pipeline.make_iterator(ds, num_threads=int(config.input.num_threads),
                                    prefetch=int(config.input.prefetch))
  next(it)                                   # open files, start threads
  t = time.perf_counter()
  batches = [next(it) for _ in range(args.batches)]
  pipe_rate = args.batches / (time.perf_counter() - t)

  mesh = sharding.make_mesh(config.mesh)
  trainer = train.Trainer(config, mesh)
  state = trainer.init_state(0)
  on_device = [sharding.global_batch(b, mesh) for b in batches[:args.steps + 2]]
  for b in on_device[:2]:                    # compile and warm up
    state, m = trainer.step(state, b)
  jax.block_until_ready(m)
  times = []
  for b in on_device[2:]:
    t = time.perf_counter()
    state, m = trainer.step(state, b)
    jax.block_until_ready(m)
    times.append(time.perf_counter() - t)
  step_rate = 1.0 / statistics.median(times)
  print(f"device: {jax.devices()[0].device_kind}; global batch {config.global_batch_size}, "
        f"{config.input.clip_seconds} s clips")
  print(f"pipeline: {pipe_rate:8.2f} batches/s  ({pipe_rate * config.global_batch_size:.0f} clips/s)")
  print(f"step:     {step_rate:8.2f} steps/s   (median of {len(times)})")
  print(f"ratio pipeline/step: {pipe_rate / step_rate:.1f}x")


if __name__ == "__main__":
  main()
