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
  --grace S                seconds the processes get to exit after one fails or stops, or
                           after a signal, before they are killed (default 30)

Every output line is prefixed ``[i]`` (stdout and stderr of process i, merged); the
launcher's own lines (the pids at the start, each process's exit status at the end) go
to stderr. Signals and failures:

* SIGTERM or SIGINT (Ctrl-C) to the launcher sends SIGTERM to every process: jaxclap's
  trainer takes SIGTERM on any process as a preemption (JAX's preemption sync point), so
  all save a checkpoint at the same step and exit with status 143 (the trainer turns a
  SIGINT that reaches one of its processes directly into the same SIGTERM). A second
  signal kills them (SIGKILL).
* A process that exits with 143 was preempted: the others stop at the same step on their
  own, and get ``--grace`` seconds for it before they are killed.
* A process that fails otherwise: the others get SIGTERM at once (then SIGKILL after
  ``--grace``).

The launcher exits with the first non-zero status (a shell's 128 + s for a process
killed by signal s), else 0. Only the standard library is used, so it runs before any
environment is set up.
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


# jaxclap's trainer exits with this after saving on SIGTERM (128 + SIGTERM, as a shell
# reports a process the signal ended).
PREEMPTED = 128 + signal.SIGTERM


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
    # A session of its own: a terminal's Ctrl-C reaches the launcher alone, which turns
    # it into SIGTERM for every process (see the module docstring).
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

  with lock:
    print(f"launch/local.py: {processes} processes, pids "
          + " ".join(str(p.pid) for p in procs) + f", coordinator 127.0.0.1:{port}",
          file=sys.stderr, flush=True)
  stopping = {"since": None, "signals": 0}

  def stop_all(sig=signal.SIGTERM):
    if stopping["since"] is None:
      stopping["since"] = time.time()
    for p in procs:
      if p.poll() is None and sig is not None:
        p.send_signal(sig)

  def on_signal(sig, _frame):
    stopping["signals"] += 1
    again = stopping["signals"] > 1
    with lock:
      print(f"launch/local.py: got {signal.Signals(sig).name}, "
            + ("killing" if again else "sending SIGTERM to") + f" the {processes} "
            "processes" + ("" if again else " (again to kill them)"),
            file=sys.stderr, flush=True)
    stop_all(signal.SIGKILL if again else signal.SIGTERM)

  old = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
  status, seen, killed = 0, set(), set()
  try:
    while any(p.poll() is None for p in procs):
      for i, p in enumerate(procs):
        rc = p.poll()
        if rc in (None, 0) or i in seen:
          continue
        seen.add(i)
        if status == 0:
          status = _status(rc)
        if _status(rc) == PREEMPTED:   # the others stop at the same step by themselves
          stop_all(None)
        elif stopping["since"] is None:
          with lock:
            print(f"launch/local.py: process {i} exited with status {_status(rc)}; "
                  "stopping the others", file=sys.stderr, flush=True)
          stop_all()
      if stopping["since"] is not None and time.time() - stopping["since"] > grace:
        for i, p in enumerate(procs):
          if p.poll() is None and i not in killed:
            killed.add(i)
            with lock:
              print(f"launch/local.py: process {i} still running {grace:g} s later; "
                    "killing it", file=sys.stderr, flush=True)
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
  print("launch/local.py: exit status " + " ".join(
      f"[{i}] {_status(p.returncode)}" for i, p in enumerate(procs)),
      file=sys.stderr, flush=True)
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
                      help="seconds the processes get to exit after one fails or stops, "
                      "or after a signal, before they are killed")
  args = parser.parse_args(own)
  return run(command, processes=args.processes,
             devices_per_process=args.devices_per_process, port=args.port,
             log_dir=args.log_dir, grace=args.grace)


if __name__ == "__main__":
  sys.exit(main())
