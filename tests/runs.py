"""What the tests that train share: the command of a small runlocal demo run, the
environment it runs in, and a random batch for a step built in the test (a script run
with ``cwd`` at the checkout imports it as ``tests.runs``)."""

import os
import sys

import numpy as np


def main_command(workdir, data_dir, steps=8, extra=()):
  """``python -m jaxclap.main`` on the runlocal demo: every step logged (with the data
  indices it read, so a test can count each sample) and a checkpoint every 3 steps, so
  that a few steps exercise save, kill and resume."""
  return [sys.executable, "-m", "jaxclap.main", f"--config=configs/demo.py:runlocal,steps={steps}",
          f"--workdir={workdir}", f"--config.corpus.data_dir={data_dir}",
          "--config.log_every=1", "--config.checkpoint_every=3",
          "--config.log_data_indices=True", *extra]


def clean_env(cache=None):
  """The test process's environment without XLA_FLAGS: a forced CPU device count set
  for the test process would make the child another mesh than the run it is compared to
  (each test that wants devices sets them itself, see tests/cpu_devices.py). ``cache``:
  a folder for JAX's persistent compilation cache, so that a run restarted on it loads
  the programs an earlier one compiled (about 20 s of each start on 2 cores) instead of
  compiling them again; the executables are the same, so are the numbers."""
  env = dict(os.environ)
  env.pop("XLA_FLAGS", None)
  if cache is not None:
    env.update(JAX_COMPILATION_CACHE_DIR=str(cache),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
  return env


def random_batch(config, rows: int, rng: np.random.Generator, *, vocab: int = 200,
                 varied_lengths: bool = False) -> dict:
  """A host batch of ``rows`` clips of noise at ``config``'s clip length (full, or
  ``varied_lengths``: each between half and full) with one caption each of random
  tokens below ``vocab``, every token real: the shapes ``sharding.global_batch`` takes."""
  samples = int(config.input.clip_seconds * config.input.sample_rate)
  length = int(config.input.max_text_len)
  audio = (0.1 * rng.normal(size=(rows, samples))).astype(np.float32)
  audio_len = (rng.integers(samples // 2, samples + 1, size=rows) if varied_lengths
               else np.full(rows, samples)).astype(np.int32)
  return {"audio": audio, "audio_len": audio_len,
          "text_ids": rng.integers(1, vocab, size=(rows, 1, length)).astype(np.int32),
          "text_mask": np.ones((rows, 1, length), np.int32)}
