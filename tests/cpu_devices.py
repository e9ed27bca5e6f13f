"""Runs a test file's ``__main__`` part in a child process that sees 8 CPU devices.

XLA fixes its device count when JAX starts, so the multi-device halves of the sharding
tests run in a fresh interpreter with ``--xla_force_host_platform_device_count=8``; they
print one JSON line of results, which the parent's assertions read.
"""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_on_cpu_devices(script: str, count: int = 8, timeout: int = 600) -> dict:
  env = dict(os.environ)
  flags = [f for f in env.get("XLA_FLAGS", "").split()
           if not f.startswith("--xla_force_host_platform_device_count")]
  env["XLA_FLAGS"] = " ".join(flags + [f"--xla_force_host_platform_device_count={count}"])
  env["JAX_PLATFORMS"] = "cpu"
  env["PYTHONPATH"] = os.pathsep.join([ROOT] + [p for p in [env.get("PYTHONPATH")] if p])
  proc = subprocess.run([sys.executable, os.path.abspath(script)], env=env, cwd=ROOT,
                        capture_output=True, text=True, timeout=timeout)
  assert proc.returncode == 0, proc.stderr[-4000:]
  return json.loads(proc.stdout.strip().splitlines()[-1])
