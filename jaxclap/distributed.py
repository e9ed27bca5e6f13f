"""Joining the processes of a multi-host run: when to call ``jax.distributed.initialize``,
and with what.

Every process of a pod or cluster job runs the same ``python -m jaxclap.main`` command;
``initialize_kwargs`` decides what main.py passes to ``jax.distributed.initialize``
(before anything touches a device):

1. **Explicit**: the flags ``--coordinator_address`` / ``--num_processes`` /
   ``--process_id`` (a flag wins over its variable), else the environment variables
   ``JAX_COORDINATOR_ADDRESS`` / ``JAX_NUM_PROCESSES`` / ``JAX_PROCESS_ID``. All three
   given: they are used. Some given: the rest must come from a cluster JAX detects (say
   ``JAX_COORDINATOR_ADDRESS`` to move the coordinator of a SLURM job), or the run stops
   with an error naming each missing flag and variable (JAX itself would say only
   "Number of processes must be defined").
2. **Detected**: none given, and one of JAX's own cluster environments
   (``jax._src.clusters``: SLURM job steps, Open MPI's mpirun, GKE TPU slices through
   ``TPU_WORKER_HOSTNAMES``, GCE TPU VM pods through the metadata server, Kubernetes
   indexed Jobs with ``jax[k8s]``) reports more than one process: ``initialize()`` with
   no arguments, and JAX reads the coordinator, count and rank from that environment.
3. Otherwise one process, and no coordinator is started.

``--distributed`` makes the call on a detected cluster of one process too (a one-task
SLURM step) and ``--nodistributed`` forbids it; ``--local_device_ids`` (or
``JAX_LOCAL_DEVICE_IDS``, which JAX reads) restricts the devices a process uses: on
SLURM, JAX gives each task only the GPU of its ``SLURM_LOCALID``, so a run with one task
per node must list them.
This module holds no rendezvous of its own: JAX's coordinator does it.
"""

from __future__ import annotations

import os
from typing import Mapping, Sequence

# name of the flag, its environment variable, what it means (for the errors)
EXPLICIT = (
    ("coordinator_address", "JAX_COORDINATOR_ADDRESS",
     "host:port of process 0, the same in every process"),
    ("num_processes", "JAX_NUM_PROCESSES", "processes in the job"),
    ("process_id", "JAX_PROCESS_ID", "this process's rank, 0-based"),
)


class SetupError(ValueError):
  """The multi-process settings are incomplete or contradictory; the message says how."""


def detected_cluster() -> tuple[str, int] | None:
  """``(name, process count)`` of the cluster environment JAX would use for
  ``initialize()`` with no arguments, or None. JAX's own detectors, in JAX's order
  (opt-in ones such as mpi4py excluded, as JAX does); they read ``os.environ`` (and, on a
  Cloud TPU VM, the metadata server)."""
  from jax._src import clusters
  for env in clusters.ClusterEnv._cluster_types:
    if env.opt_in_only_method or not env.is_env_present():
      continue
    try:
      return env.name or env.__name__, int(env.get_process_count())
    except Exception as e:   # a broken environment: say which, and how to opt out
      raise SetupError(f"JAX detected a {env.name or env.__name__} cluster but could not "
                       f"read its process count ({type(e).__name__}: {e}); pass "
                       "--coordinator_address/--num_processes/--process_id, or "
                       "--nodistributed for one process") from e
  return None


def _parse_ids(value: str | Sequence[int] | None, where: str) -> list[int] | None:
  if value is None or value == "" or value == []:
    return None
  if isinstance(value, str):
    try:
      return [int(v) for v in value.split(",")]
    except ValueError:
      raise SetupError(f"{where}={value!r}: expected comma-separated device ids, "
                       "e.g. 0,1,2,3") from None
  return [int(v) for v in value]


def initialize_kwargs(env: Mapping[str, str] | None = None, *,
                      coordinator_address: str | None = None,
                      num_processes: int | None = None, process_id: int | None = None,
                      local_device_ids: str | Sequence[int] | None = None,
                      distributed: bool | None = None,
                      detect=detected_cluster) -> dict | None:
  """The keyword arguments for ``jax.distributed.initialize``, or None: one process.

  ``env``: the environment (default ``os.environ``); the flags' values override it.
  ``distributed``: None decides as the module docstring says, True always initialises,
  False never. ``detect``: returns ``(cluster name, process count)`` or None (tests
  replace it)."""
  env = os.environ if env is None else env
  if distributed is False:
    return None
  given = {"coordinator_address": coordinator_address, "num_processes": num_processes,
           "process_id": process_id}
  for name, var, _ in EXPLICIT:
    if given[name] is None and env.get(var):
      given[name] = env[var]
  for name, var, _ in EXPLICIT[1:]:
    if given[name] is not None:
      try:
        given[name] = int(given[name])
      except ValueError:
        raise SetupError(f"--{name} / {var}={given[name]!r}: expected an integer") from None
  if given["num_processes"] is not None and given["num_processes"] < 1:
    raise SetupError(f"--num_processes / JAX_NUM_PROCESSES={given['num_processes']}: "
                     "must be >= 1")
  if (given["process_id"] is not None and given["num_processes"] is not None
      and not 0 <= given["process_id"] < given["num_processes"]):
    raise SetupError(f"--process_id / JAX_PROCESS_ID={given['process_id']} is not in "
                     f"[0, {given['num_processes']}) (--num_processes / "
                     f"JAX_NUM_PROCESSES={given['num_processes']})")
  kwargs = {k: v for k, v in given.items() if v is not None}
  ids = _parse_ids(local_device_ids, "--local_device_ids")
  if ids is not None:
    kwargs["local_device_ids"] = ids

  explicit = {k for k in given if given[k] is not None}
  if explicit == {n for n, _, _ in EXPLICIT}:
    return kwargs
  cluster = detect()
  if explicit:
    if cluster is not None:   # JAX completes the rest from the cluster
      return kwargs
    have = ", ".join(f"--{n} / {v}" for n, v, _ in EXPLICIT if n in explicit)
    missing = [(n, v, what) for n, v, what in EXPLICIT if n not in explicit]
    raise SetupError(
        f"multi-process setup is half set: {have} given, but "
        + " and ".join(f"--{n} / {v} ({what})" for n, v, what in missing)
        + " not, and JAX detects no cluster (SLURM, Open MPI, Kubernetes, Cloud TPU) to "
        "complete them. Set " + " and ".join(v for _, v, _ in missing)
        + " in every process (launch/local.py does it on one machine), or unset "
        + " and ".join(v for n, v, _ in EXPLICIT if n in explicit) + " for one process.")
  if cluster is not None and (cluster[1] > 1 or distributed):
    return kwargs
  if distributed:
    raise SetupError("--distributed: jax.distributed.initialize needs a cluster JAX "
                     "detects (SLURM, Open MPI, Kubernetes, Cloud TPU) or --"
                     "coordinator_address, --num_processes and --process_id (or "
                     "JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID); "
                     "none is set")
  return None

