"""The host process, set up before JAX starts: which backends it tries, and how freed
memory goes back to the kernel. The command lines (``jaxclap.main``, ``.evaluate``,
``.export``) call these first; a program that imports jaxclap as a library keeps its own
settings unless it calls them.
"""

from __future__ import annotations

import ctypes
import os
import sys
from typing import Mapping


def skip_absent_accelerators(env: Mapping[str, str] | None = None) -> bool:
  """On a machine with no accelerator, start JAX on its CPU backend alone; returns
  whether it did.

  The test extra installs libtpu (``jaxclap.aot`` compiles for TPU meshes with it), and
  JAX then tries its TPU backend wherever it starts: on a machine without TPU chips
  libtpu prints five lines of discovery errors (``TPU_ACCELERATOR_TYPE``,
  ``TPU_WORKER_HOSTNAMES``) before it gives up, the first thing the README's demo would
  show. JAX already skips CUDA when it sees no NVIDIA GPU; this does the same for TPU,
  and only where nothing but the CPU could run: ``JAX_PLATFORMS`` unset, no TPU chip,
  no NVIDIA GPU, no ROCm device (``/dev/kfd``). Anything else keeps JAX's own choice.
  """
  env = os.environ if env is None else env
  import jax
  if env.get("JAX_PLATFORMS") or jax.config.jax_platforms:
    return False
  try:
    from jax._src import hardware_utils
    chips, _ = hardware_utils.num_available_tpu_chips_and_device_id()
    accelerator = (chips > 0 or hardware_utils.has_visible_nvidia_gpu()
                   or os.path.exists("/dev/kfd"))
  except (ImportError, AttributeError, OSError):   # JAX moved them: keep its own choice
    return False
  if accelerator:
    return False
  jax.config.update("jax_platforms", "cpu")
  return True


# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8


def keep_freed_memory() -> bool:
  """Keep the memory a process frees for its next allocations, instead of handing it
  back to the kernel; returns whether it could (glibc's malloc only). Call it before
  JAX starts its threads.

  XLA:CPU allocates each step's temporaries (207 MiB in the demo) and frees them when
  the step ends. glibc serves blocks that large with their own ``mmap`` and
  ``munmap``s them on ``free``, so every step faults them in again, 4 KiB at a time,
  each page zeroed by the kernel: in the demo 111 million page faults and 294 s of
  system time in 18 minutes (docs/benchmarks.md). Three settings keep them instead:
  ``M_MMAP_MAX=0`` serves large blocks from malloc's heap; ``M_ARENA_MAX=1`` keeps
  every thread on the main heap (a thread's own arena maps any block over 64 MiB
  whatever ``M_MMAP_MAX`` says); ``M_TRIM_THRESHOLD`` at its maximum keeps freed heap
  memory mapped. A step then reuses the pages an earlier one touched
  (tests/test_host.py). What is freed is not returned to the kernel until the process
  ends; the peak stays that of the largest step.
  """
  if not sys.platform.startswith("linux"):
    return False
  try:
    libc = ctypes.CDLL("libc.so.6")
    mallopt = libc.mallopt
  except (OSError, AttributeError):   # musl or another libc: nothing to set
    return False
  return all(mallopt(k, v) for k, v in ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0),
                                         (_M_TRIM_THRESHOLD, 2 ** 31 - 1)))
