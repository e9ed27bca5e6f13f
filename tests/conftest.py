"""Tests run JAX on the CPU. With libtpu installed (the test extra has it, for
tests/test_aot.py), a JAX process that is not told otherwise first tries to open a TPU
and takes /tmp/libtpu_lockfile, which concurrent test processes would contend for; the
children tests start inherit this setting."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
