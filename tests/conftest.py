"""Tests run JAX on the CPU. With libtpu installed (the test extra has it, for
tests/test_aot.py), a JAX process that is not told otherwise first tries to open a TPU
and takes /tmp/libtpu_lockfile, which concurrent test processes would contend for; the
children tests start inherit this setting.

One persistent compilation cache serves the whole session: this process and every run
a test starts (they inherit the environment; ``runs.clean_env(cache)`` may still name
its own). Dozens of tests train the same runlocal demo in a fresh process, and each
would otherwise compile the same step, evaluation and report programs again: on 2 AVX2
cores a warm start is 95 s against 134-147 s. A cached executable is the very program a
compile would give, so no number changes; the folder is removed when the session ends.
JAXCLAP_TEST_NO_JIT_CACHE=1 turns it off.

The README's command runs the modules in 2 processes (pytest-xdist, ``-n 2 --dist
loadfile``: a module's fixtures stay in one process). Each process first runs librosa's
numba-compiled YIN under a file lock: two processes compiling it at once for the first
time can leave numba's cache corrupt, and every later corpus build would segfault."""

import atexit
import fcntl
import os
import shutil
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")

if not os.environ.get("JAXCLAP_TEST_NO_JIT_CACHE") and "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _cache = tempfile.mkdtemp(prefix="jaxclap-tests-jit-")
  atexit.register(shutil.rmtree, _cache, ignore_errors=True)
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")


def _warm_numba_cache():
  with open(os.path.join(tempfile.gettempdir(), "jaxclap-tests-numba.lock"), "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
      from jaxclap.corpus import render
    except ImportError:   # an environment without the corpus's dependencies
      return
    render.warm_up()


_warm_numba_cache()
