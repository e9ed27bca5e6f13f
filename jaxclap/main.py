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

Multi-host: with ``--distributed`` (or when JAX_COORDINATOR_ADDRESS, a SLURM job step or
a TPU pod is detected) ``jax.distributed.initialize()`` joins the processes; every
process runs this same command. With JAX_COORDINATOR_ADDRESS=host:port outside a cluster
JAX detects, also set JAX_NUM_PROCESSES and JAX_PROCESS_ID in each process.
"""

import os

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Training config file.",
                                          lock_config=False)
_WORKDIR = flags.DEFINE_string("workdir", None,
                               "Run folder (default workdirs/<config name>[_<its "
                               "arguments>]); resumes if it "
                               "holds checkpoints.")
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", None, "Call jax.distributed.initialize() (default: when a multi-process "
    "environment is detected).")


def _multi_process_env(env=os.environ) -> bool:
  return bool(env.get("JAX_COORDINATOR_ADDRESS") or int(env.get("SLURM_NTASKS", "1")) > 1
              or env.get("TPU_WORKER_HOSTNAMES", "").count(",") > 0)


def _initialize_kwargs(env=os.environ) -> dict:
  """Arguments for ``jax.distributed.initialize``. On a cluster JAX detects (SLURM, a TPU
  pod) none are needed. A bare ``JAX_COORDINATOR_ADDRESS`` gives JAX the coordinator
  only: the process count and this process's rank come from ``JAX_NUM_PROCESSES`` and
  ``JAX_PROCESS_ID``, which must then be set (JAX itself would fail with "Number of
  processes must be defined" and no hint)."""
  detected = (int(env.get("SLURM_NTASKS", "1")) > 1
              or env.get("TPU_WORKER_HOSTNAMES", "").count(",") > 0)
  if not env.get("JAX_COORDINATOR_ADDRESS") or detected:
    return {}
  missing = [k for k in ("JAX_NUM_PROCESSES", "JAX_PROCESS_ID") if not env.get(k)]
  if missing:
    raise app.UsageError(
        f"JAX_COORDINATOR_ADDRESS={env['JAX_COORDINATOR_ADDRESS']} is set but "
        f"{' and '.join(missing)} not: set JAX_NUM_PROCESSES (processes in the job) and JAX_PROCESS_ID (this one's "
        "rank, 0-based) in every process, or unset JAX_COORDINATOR_ADDRESS")
  return dict(coordinator_address=env["JAX_COORDINATOR_ADDRESS"],
              num_processes=int(env["JAX_NUM_PROCESSES"]),
              process_id=int(env["JAX_PROCESS_ID"]))


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from absl import logging
  if not flags.FLAGS["verbosity"].present:   # Orbax and grain log every save at INFO
    logging.set_verbosity(logging.WARNING)
  import jax
  if _DISTRIBUTED.value or (_DISTRIBUTED.value is None and _multi_process_env()):
    jax.distributed.initialize(**_initialize_kwargs())
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
  train.train_and_evaluate(config, workdir)


if __name__ == "__main__":
  flags.mark_flag_as_required("config")
  app.run(main)
