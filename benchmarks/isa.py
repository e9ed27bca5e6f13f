"""The CPU's instruction set, and what this process lets the compilers and kernels use.

  python benchmarks/isa.py          # one line, e.g. "ISA: AVX-512 (avx512f ...) ..."

Every benchmark prints ``describe()`` beside its figures: a step time means little without
the vector width it ran at. Two things are reported:

* the hardware: AVX-512 (``avx512f`` in /proc/cpuinfo), else AVX2 (+FMA), else older;
* the restrictions set in this process's environment, and what each one reaches:
    XLA_FLAGS=--xla_cpu_max_isa=AVX2   XLA's LLVM code generation (the fused elementwise,
                                       transpose and reduction loops it emits). NOT the
                                       dot / convolution kernels: YNNPACK (XLA:CPU's
                                       default for dots in jax 0.10, ``__ynn_fusion``)
                                       picks its kernels by CPUID at run time, and Eigen
                                       (the fallback) is fixed when jaxlib is compiled.
                                       LLVM also prefers 256-bit vectors on AVX-512 parts
                                       (``prefer-vector-width=256``), so the flag changes
                                       little of what XLA emits.
    ATEN_CPU_CAPABILITY=avx2           ATen's own vectorised kernels (elementwise,
                                       softmax, norms, ...: ``torch.backends.cpu.
                                       get_cpu_capability()`` reports it). NOT MKL's GEMM
                                       (``MKL_ENABLE_INSTRUCTIONS=AVX2`` restricts that) nor
                                       oneDNN (``ONEDNN_MAX_CPU_ISA=AVX2``).
  None of them emulates another microarchitecture (cache sizes, FMA ports, MKL's code
  paths on AMD): a restricted run on an AVX-512 Xeon is not a measurement on an AVX2 EPYC.
"""

from __future__ import annotations

import os
import re
import sys

# The hardware half lives in the package: the training log states the ISA its CPU MFU
# assumes from the same reading.
from jaxclap.perf import cpu_flags, cpu_model, hardware_isa  # noqa: F401 (re-exported)

# Environment variables that restrict a library's vector ISA in this process.
RESTRICTIONS = ("ATEN_CPU_CAPABILITY", "MKL_ENABLE_INSTRUCTIONS", "ONEDNN_MAX_CPU_ISA",
                "DNNL_MAX_CPU_ISA")


def xla_max_isa(xla_flags: str | None = None) -> str | None:
  """The value of ``--xla_cpu_max_isa`` in XLA_FLAGS (the last one wins), or None."""
  xla_flags = os.environ.get("XLA_FLAGS", "") if xla_flags is None else xla_flags
  found = re.findall(r"--xla_cpu_max_isa=(\S+)", xla_flags)
  return found[-1] if found else None


def torch_capability() -> str | None:
  """The ISA ATen dispatches its kernels to, if torch is already imported (not imported
  here: importing it would start its thread pools before the caller sets them)."""
  torch = sys.modules.get("torch")
  if torch is None:
    return None
  try:
    return str(torch.backends.cpu.get_cpu_capability())
  except AttributeError:   # torch < 2.1
    return None


def describe() -> str:
  """One line: hardware ISA, CPU model and every restriction in effect."""
  flags = cpu_flags()
  hw = hardware_isa(flags)
  extra = [f for f in ("avx512_bf16", "avx512_vnni", "amx_tile") if f in flags]
  parts = [f"ISA: {hw}" + (f" (+{', '.join(extra)})" if extra else ""), cpu_model()]
  xla = xla_max_isa()
  parts.append(f"XLA codegen max ISA {xla} (dot kernels not restricted)" if xla else
               "XLA codegen unrestricted")
  restricted = {k: os.environ[k] for k in RESTRICTIONS if os.environ.get(k)}
  parts.append("torch/MKL/oneDNN env " + (" ".join(f"{k}={v}" for k, v in restricted.items())
                                          if restricted else "unrestricted"))
  cap = torch_capability()
  if cap is not None:
    parts.append(f"ATen kernels {cap}")
  return "; ".join(parts)


def effective_isa() -> str:
  """What a figure measured in this process should be labelled with: the hardware ISA,
  or e.g. 'AVX2 codegen on AVX-512' when a restriction is set."""
  hw = hardware_isa()
  xla = xla_max_isa()
  aten = os.environ.get("ATEN_CPU_CAPABILITY")
  if not xla and not aten:
    return hw
  limits = "/".join(filter(None, (f"XLA {xla}" if xla else None,
                                  f"ATen {aten}" if aten else None)))
  return f"{hw} restricted to {limits}"


if __name__ == "__main__":
  print(describe())
