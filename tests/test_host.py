"""jaxclap/host.py: the process settings the command lines make before JAX starts, each
checked in a fresh process (they are process-wide) against what happens without it."""

import importlib.util
import os
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(script, *args, env=None):
  proc = subprocess.run([sys.executable, "-c", script, *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return proc


_PLATFORMS = textwrap.dedent("""
    import sys
    from jax._src import hardware_utils
    from jaxclap import host
    if sys.argv[1] == "tpu":      # a machine with TPU chips keeps JAX's own choice
      hardware_utils.num_available_tpu_chips_and_device_id = lambda: (4, 5)
      print(host.skip_absent_accelerators(), flush=True)
      sys.exit()
    if sys.argv[1] == "skip":
      print(host.skip_absent_accelerators(), flush=True)
    import jax
    print(jax.config.jax_platforms, [d.platform for d in jax.devices()], flush=True)
    """)


@pytest.mark.skipif(any(os.path.exists(p) for p in ("/dev/nvidia0", "/dev/accel0", "/dev/kfd")),
                    reason="this machine has an accelerator")
def test_a_machine_without_accelerators_starts_jax_on_cpu_quietly():
  # libtpu (the test extra) makes JAX try its TPU backend on every machine; without chips
  # it prints discovery errors before the demo starts. The command lines leave it out.
  env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}
  run = lambda mode: _run(_PLATFORMS, mode, env=env)
  skip = run("skip")
  assert skip.stdout.split() == ["True", "cpu", "['cpu']"]
  assert "TPU" not in skip.stderr and "host bounds" not in skip.stderr, skip.stderr
  assert run("tpu").stdout.split() == ["False"]
  if importlib.util.find_spec("libtpu") is not None:   # what the call prevents
    assert "TPU_WORKER_HOSTNAMES" in run("plain").stderr


_MEMORY = textwrap.dedent("""
    import resource, statistics, sys
    import jax, jax.numpy as jnp
    from jaxclap import host
    kept = host.keep_freed_memory() if sys.argv[1] == "keep" else None
    # A program whose temporaries (two 64 MiB activations) are allocated and freed
    # in every call, as a train step's are.
    f = jax.jit(lambda x, w, v: jnp.tanh(x @ w) @ v)
    x, w, v = jnp.ones((16384, 64)), jnp.ones((64, 1024)) / 64, jnp.ones((1024, 8))
    faults = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    calls = []
    for _ in range(12):
      before = faults()
      f(x, w, v).block_until_ready()
      calls.append(faults() - before)
    print(kept, statistics.median(calls[3:]))
    """)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc only")
def test_freed_memory_is_kept_for_the_next_step():
  """With the setting, a jitted call reuses the pages an earlier one faulted in; by
  default each call faults its temporaries in again (16,384 pages per 64 MiB)."""
  kept, faults = _run(_MEMORY, "keep").stdout.split()
  default = float(_run(_MEMORY, "default").stdout.split()[1])
  assert kept == "True"
  assert default >= 16384, default           # what the setting prevents
  assert float(faults) < 1000, (faults, default)
