"""What the tests that train in a subprocess share: the command of a small runlocal demo
run and the environment it runs in."""

import os
import sys


def main_command(workdir, data_dir, steps=8, extra=()):
  """``python -m jaxclap.main`` on the runlocal demo: every step logged (with the data
  indices it read, so a test can count each sample) and a checkpoint every 3 steps, so
  that a few steps exercise save, kill and resume."""
  return [sys.executable, "-m", "jaxclap.main", f"--config=configs/demo.py:runlocal,steps={steps}",
          f"--workdir={workdir}", f"--config.corpus.data_dir={data_dir}",
          "--config.log_every=1", "--config.checkpoint_every=3",
          "--config.log_data_indices=True", *extra]


def clean_env():
  """The test process's environment without XLA_FLAGS: a forced CPU device count set
  for the test process would make the child another mesh than the run it is compared to
  (each test that wants devices sets them itself, see tests/cpu_devices.py)."""
  env = dict(os.environ)
  env.pop("XLA_FLAGS", None)
  return env
