r"""Train and evaluate one recipe:

  python -m jaxclap.main --config=configs/demo.py [--workdir=DIR] [--config.key=value ...]

  --config      a config file, optionally with arguments after a colon
                (``configs/demo.py:steps=50,batch=32``); see the file's docstring.
                The recipes: configs/clap.py, slap.py, speech_clap.py, clsp.py
                (stage=1|2), acula.py; each has a small ``:runlocal`` variant. Every
                field is documented in jaxclap/configs.py.
  --workdir     where checkpoints, TensorBoard logs, metrics.jsonl and results.json go;
                default ``workdirs/<config name>[_<its arguments>]``. Re-running the
                same command resumes from the latest checkpoint there (delete the
                folder to start afresh).
  --config.X=Y  override any config field, e.g. ``--config.optim.lr=1e-4``
  --noreuse_host_memory  leave glibc's malloc at its defaults; by default the process
                keeps the memory it frees for its next allocations, so that XLA:CPU's
                per-step temporaries are not faulted in again every step (jaxclap/host.py)

Multi-host (README, "Running on a pod / cluster"; launch/ has a script per kind of
cluster): every process runs this same command. On a cluster JAX detects (a SLURM job
step, Open MPI, a GKE or GCE TPU VM pod, a Kubernetes indexed Job)
``jax.distributed.initialize()`` finds the coordinator, the process count and this
process's rank itself; elsewhere give all three:
  --coordinator_address=HOST:PORT --num_processes=N --process_id=I
  (or JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID; launch/local.py sets
  them for N CPU processes on one machine). jaxclap/distributed.py says what decides.

Exit status: 0 when the run finished; 143 after SIGTERM or Ctrl-C (SIGINT; with several
processes it is turned into the SIGTERM JAX's preemption sync point takes) (a preemption: the current step was saved, re-run the same command to resume; schedulers
should requeue on 143); 1 with
a one-line message when the run stopped on its own (non-finite steps, a failed save, a
folder another run holds, a config that does not match the checkpoints).
"""

import os
import sys

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Training config file.",
                                          lock_config=False)
_WORKDIR = flags.DEFINE_string("workdir", None,
                               "Run folder (default workdirs/<config name>[_<its "
                               "arguments>]); resumes if it "
                               "holds checkpoints.")
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", None, "Call jax.distributed.initialize(): default when --coordinator_address"
    " / --num_processes / --process_id, their JAX_* variables or a cluster JAX detects (SLURM, Open MPI, Kubernetes, Cloud "
    "TPU pod) say there are several processes; --nodistributed: never.")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "host:port of process 0, the same in every process "
    "(default $JAX_COORDINATOR_ADDRESS, else the detected cluster's).")
_NUM_PROCESSES = flags.DEFINE_integer(
    "num_processes", None, "Processes in the job (default $JAX_NUM_PROCESSES, else the "
    "detected cluster's).")
_PROCESS_ID = flags.DEFINE_integer(
    "process_id", None, "This process's rank, 0-based (default $JAX_PROCESS_ID, else the "
    "detected cluster's).")
_LOCAL_DEVICE_IDS = flags.DEFINE_string(
    "local_device_ids", None, "Comma-separated local devices this process uses (default "
    "$JAX_LOCAL_DEVICE_IDS; on SLURM JAX gives a task only its SLURM_LOCALID's GPU, so a "
    "run with one task per node lists them all, e.g. 0,1,2,3,4,5,6,7).")

_REUSE_MEMORY = flags.DEFINE_bool(
    "reuse_host_memory", True, "Keep memory the process frees for its next allocations "
    "(glibc's malloc, jaxclap/host.py): XLA:CPU's per-step temporaries are then not "
    "faulted in again every step; --noreuse_host_memory: malloc's defaults.")


def _initialize_kwargs(env=os.environ, **flag_values) -> dict | None:
  """``jax.distributed.initialize``'s arguments for these flag values and environment,
  or None (one process); half-set settings are a UsageError naming what is missing."""
  from jaxclap import distributed
  try:
    return distributed.initialize_kwargs(env, **flag_values)
  except distributed.SetupError as e:
    raise app.UsageError(str(e)) from e


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from absl import logging
  if not flags.FLAGS["verbosity"].present:   # Orbax and grain log every save at INFO
    logging.set_verbosity(logging.WARNING)
  kwargs = _initialize_kwargs(
      coordinator_address=_COORDINATOR.value, num_processes=_NUM_PROCESSES.value,
      process_id=_PROCESS_ID.value, local_device_ids=_LOCAL_DEVICE_IDS.value,
      distributed=_DISTRIBUTED.value)
  from jaxclap import host
  host.skip_absent_accelerators()   # before anything creates a backend
  if _REUSE_MEMORY.value:
    host.keep_freed_memory()
  if kwargs is not None:
    import jax
    jax.distributed.initialize(**kwargs)
  from jaxclap import train
  config = _CONFIG.value
  if config is None:
    raise app.UsageError("--config is required, e.g. --config=configs/demo.py")
  # workdirs/<file>[_<its arguments>]: clsp.py:stage=1 and :stage=2 must not share one
  # (the second would resume from the first's checkpoints).
  path, _, arg = flags.FLAGS["config"].config_filename.partition(":")
  name = os.path.splitext(os.path.basename(path))[0]
  if arg:
    name += "_" + arg.replace(",", "_").replace("/", "_")
  workdir = _WORKDIR.value or os.path.join("workdirs", name)
  try:
    _, results = train.train_and_evaluate(config, workdir)
  except train.Stopped as e:
    if getattr(e, "write_failed", False):
      # A failed checkpoint write (disk full) leaves Orbax's background callbacks in
      # flight, and as the interpreter shuts down they print tracebacks into the event
      # loop Orbax closed, after our one line. Nothing is left to save or release (the
      # folder's lock is released, the logs flushed), so the process ends here.
      sys.stdout.flush()
      sys.stderr.flush()
      os._exit(e.code)
    raise
  import jax
  if results and jax.process_index() == 0 and jax.process_count() == 1:
    # <workdir>/report/: results.json, plots, report.md (jaxclap.evaluate.report_run);
    # one process only: it reloads the model from the checkpoint on its own device.
    from jaxclap import evaluate
    print(f"report: {evaluate.report_run(workdir, config, results)}", flush=True)


if __name__ == "__main__":
  flags.mark_flag_as_required("config")
  app.run(main)
