r"""Runs one command as N JAX processes on this machine (CPU devices, 127.0.0.1).

  python launch/local.py --processes=2 --devices_per_process=4 -- \
      python -m jaxclap.main --config=configs/demo.py:runlocal --workdir=/tmp/demo2 \
      --config.mesh.data=4 --config.mesh.fsdp=2

What a pod does, on a laptop: every process runs the same command and sees
``--devices_per_process`` CPU devices (``XLA_FLAGS=--xla_force_host_platform_device_count``,
``JAX_PLATFORMS=cpu``); ``jax.distributed.initialize`` joins them through a coordinator on
127.0.0.1 (``JAX_COORDINATOR_ADDRESS`` / ``JAX_NUM_PROCESSES`` / ``JAX_PROCESS_ID``, which
``jaxclap.distributed`` reads), and cross-process collectives go through gloo. The tests
(tests/test_multiprocess.py) use it, as a user does to try multi-process without a pod.

  --processes N            processes to start (default 2)
  --devices_per_process M  CPU devices each sees (default 4)
  --port P                 coordinator port (default: a free one)
  --log_dir DIR            also write process i's output to DIR/process_<i>.log
  --grace S                seconds the others get to exit after one fails or a signal
                           arrives, before they are killed (default 30)

Every output line is prefixed ``[i]`` (stdout and stderr of process i, merged). When a
process fails the others get SIGTERM (then SIGKILL after ``--grace``) and this launcher
exits with the failing process's status; SIGTERM / SIGINT sent to the launcher are
forwarded to every process (jaxclap's trainer then saves a checkpoint and stops where it
handles them), and it exits with the first non-zero status. Only the standard library
is used, so it runs before any environment is set up.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import threading
import time


def free_port() -> int:
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def child_env(base: dict, *, process_id: int, processes: int, devices: int,
              port: int) -> dict:
  """The environment of process ``process_id``: the coordinator, its rank, CPU devices."""
  env = dict(base)
  flags = [f for f in env.get("XLA_FLAGS", "").split()
           if not f.startswith("--xla_force_host_platform_device_count")]
  env["XLA_FLAGS"] = " ".join(flags + [f"--xla_force_host_platform_device_count={devices}"])
  env["JAX_PLATFORMS"] = "cpu"
  env["JAX_COORDINATOR_ADDRESS"] = f"127.0.0.1:{port}"
  env["JAX_NUM_PROCESSES"] = str(processes)
  env["JAX_PROCESS_ID"] = str(process_id)
  env["PYTHONUNBUFFERED"] = "1"   # lines arrive as they are printed, not at exit
  return env


def _pump(i: int, stream, log, lock: threading.Lock):
  for line in iter(stream.readline, ""):
    with lock:
      sys.stdout.write(f"[{i}] {line}" if line.endswith("\n") else f"[{i}] {line}\n")
      sys.stdout.flush()
    if log:
      log.write(line)
      log.flush()
  stream.close()


def _status(rc: int) -> int:
  return 128 - rc if rc < 0 else rc   # killed by signal s: 128 + s, as a shell reports


def run(command: list[str], *, processes: int, devices_per_process: int,
        port: int | None = None, log_dir: str | None = None, grace: float = 30.0) -> int:
  """Starts the processes, streams their output, returns the launcher's exit status."""
  if not command:
    raise SystemExit("launch/local.py: no command given; put it after --, e.g. "
                     "-- python -m jaxclap.main --config=configs/demo.py:runlocal")
  if processes < 1 or devices_per_process < 1:
    raise SystemExit(f"launch/local.py: --processes={processes} and --devices_per_process="
                     f"{devices_per_process} must be >= 1")
  port = port or free_port()
  if log_dir:
    os.makedirs(log_dir, exist_ok=True)
  lock = threading.Lock()
  procs, pumps, logs = [], [], []
  for i in range(processes):
    log = open(os.path.join(log_dir, f"process_{i}.log"), "w") if log_dir else None
    # A session of its own: a terminal's Ctrl-C reaches the launcher once, which forwards
    # it, instead of every process twice.
    p = subprocess.Popen(command, env=child_env(os.environ, process_id=i,
                                                processes=processes,
                                                devices=devices_per_process, port=port),
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         start_new_session=True)
    t = threading.Thread(target=_pump, args=(i, p.stdout, log, lock), daemon=True)
    t.start()
    procs.append(p)
    pumps.append(t)
    logs.append(log)

  stopping = {"since": None, "signal": None}

  def stop_all(sig=signal.SIGTERM):
    if stopping["since"] is None:
      stopping["since"] = time.time()
    for p in procs:
      if p.poll() is None:
        p.send_signal(sig)

  def on_signal(sig, _frame):
    stopping["signal"] = sig
    with lock:
      print(f"launch/local.py: got {signal.Signals(sig).name}, forwarding to "
            f"{processes} processes", file=sys.stderr, flush=True)
    stop_all(sig)

  old = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
  status = 0
  try:
    while any(p.poll() is None for p in procs):
      for i, p in enumerate(procs):
        rc = p.poll()
        if rc not in (None, 0) and status == 0:
          status = _status(rc)
          with lock:
            print(f"launch/local.py: process {i} exited with status {status}; stopping "
                  "the others", file=sys.stderr, flush=True)
          stop_all()
      if stopping["since"] is not None and time.time() - stopping["since"] > grace:
        for p in procs:
          if p.poll() is None:
            p.kill()
      time.sleep(0.1)
  finally:
    for s, h in old.items():
      signal.signal(s, h)
  for t in pumps:
    t.join(timeout=5)
  for log in logs:
    if log:
      log.close()
  for p in procs:
    if status == 0 and p.returncode != 0:
      status = _status(p.returncode)
  return status


def main(argv: list[str] | None = None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  if "--" in argv:
    at = argv.index("--")
    own, command = argv[:at], argv[at + 1:]
  else:
    own, command = argv, []
  parser = argparse.ArgumentParser(
      prog="launch/local.py", description=__doc__.split("\n\n")[0],
      formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--processes", type=int, default=2, help="processes to start")
  parser.add_argument("--devices_per_process", type=int, default=4,
                      help="CPU devices each process sees")
  parser.add_argument("--port", type=int, default=None,
                      help="coordinator port on 127.0.0.1 (default: a free one)")
  parser.add_argument("--log_dir", default=None,
                      help="also write process i's output to LOG_DIR/process_<i>.log")
  parser.add_argument("--grace", type=float, default=30.0,
                      help="seconds before the others are killed once one fails")
  args = parser.parse_args(own)
  return run(command, processes=args.processes,
             devices_per_process=args.devices_per_process, port=args.port,
             log_dir=args.log_dir, grace=args.grace)


if __name__ == "__main__":
  sys.exit(main())
