"""FLOPs per train step, what each device can do, and the utilisation the log reports.

**FLOPs** are counted from the traced step (its jaxpr): every matmul (``dot_general``) and
convolution, 2 FLOPs a multiply-add, each loop body as many times as it runs (a
``scan``'s length: gradient accumulation, scanned layers), a ``shard_map`` body once per
device it runs on, recomputation under remat included. Elementwise work (softmax, norms,
activations, the optimiser) is left out, as PaLM's and MaxText's MFU leave it out: it is a
few percent of a transformer's and the hardware's peak is a matmul figure. XLA's own
``cost_analysis()`` counts a loop's body once, so it undercounts an accumulated step by
the accumulation factor; ``jaxclap.aot`` prints both.

**Peaks** are the data sheet's dense bf16 FLOP/s per chip for TPUs and GPUs (sources in
``CHIPS``). A CPU has no data sheet figure: its peak is an assumption, stated wherever it
is used: cores x clock (``/proc/cpuinfo``) x f32 FLOP per cycle per core for its vector
ISA (2 FMA units x lanes x 2: 64 with AVX-512, 32 with AVX2), shared out over the
devices the process made of the cores. Parts that split AVX-512 into two 256-bit halves
(AMD Zen 4) reach half that, so read a CPU's MFU as a lower bound. ``config.peak_tflops``
replaces any of these with the user's own figure.

MFU = FLOPs per step / devices x steps/s / peak per device.
"""

from __future__ import annotations

import dataclasses
import math
import os

import jax

GiB = 2 ** 30


@dataclasses.dataclass(frozen=True)
class Chip:
  """One accelerator as a device of the mesh (v4 and v5p in megacore mode: one device per
  chip, both TensorCores). ``usable_hbm``: what the compiler lets a program have,
  measured with libtpu 0.0.42 (its "exceeds available HBM (X)" refusal); for GPUs the
  data sheet's memory."""
  name: str
  hbm: int              # bytes per chip (the data sheet)
  usable_hbm: int       # bytes a program may use (the compiler's limit)
  peak_flops: float     # dense bf16 FLOP/s per chip
  hbm_bandwidth: float  # bytes/s per chip


# Keyed by jax's device_kind (GPUs: a prefix of it). Sources:
#   v4:  https://cloud.google.com/tpu/docs/v4   275 TFLOP/s bf16, 32 GiB HBM2, 1,200 GB/s
#   v5e: https://cloud.google.com/tpu/docs/v5e  197 TFLOP/s bf16, 16 GB HBM2, 819 GB/s
#   v5p: https://cloud.google.com/tpu/docs/v5p  459 TFLOP/s bf16, 95 GB HBM2e, 2,765 GB/s
#   v6e: https://cloud.google.com/tpu/docs/v6e  918 TFLOP/s bf16, 32 GB HBM, 1,640 GB/s
#   A100 SXM: NVIDIA A100 data sheet, 312 TFLOP/s bf16 dense, 80 GB, 2,039 GB/s
#   H100 SXM: NVIDIA H100 data sheet, 989 TFLOP/s bf16 dense, 80 GB, 3.35 TB/s
#   H200 SXM: NVIDIA H200 data sheet, 989 TFLOP/s bf16 dense, 141 GB, 4.8 TB/s
# usable_hbm of the TPUs: 30.75, 15.75, 95.74 and 31.25 GiB, libtpu 0.0.42's limits.
CHIPS = {
    "TPU v4": Chip("v4", 32 * GiB, int(30.75 * GiB), 275e12, 1200e9),
    "TPU v5 lite": Chip("v5e", 16 * GiB, int(15.75 * GiB), 197e12, 819e9),
    "TPU v5": Chip("v5p", 95 * 10 ** 9, int(95.74 * GiB), 459e12, 2765e9),
    "TPU v6 lite": Chip("v6e", 32 * GiB, int(31.25 * GiB), 918e12, 1640e9),
    "NVIDIA A100": Chip("A100", 80 * 10 ** 9, 80 * 10 ** 9, 312e12, 2039e9),
    "NVIDIA H100": Chip("H100", 80 * 10 ** 9, 80 * 10 ** 9, 989e12, 3350e9),
    "NVIDIA H200": Chip("H200", 141 * 10 ** 9, 141 * 10 ** 9, 989e12, 4800e9),
}


def chip(device_kind: str) -> Chip | None:
  """The table's entry for a jax ``device_kind`` (GPUs by prefix: "NVIDIA H100 80GB
  HBM3" is an H100), or None."""
  if device_kind in CHIPS:
    return CHIPS[device_kind]
  return next((c for k, c in CHIPS.items() if k.startswith("NVIDIA")
               and device_kind.startswith(k)), None)


# ------------------------------------------------------------------------------ CPU


def cpu_flags(path: str = "/proc/cpuinfo") -> set[str]:
  """The first processor's feature flags (empty where the file is missing: not Linux)."""
  try:
    with open(path) as f:
      for line in f:
        if line.startswith("flags"):
          return set(line.split(":", 1)[1].split())
  except OSError:
    pass
  return set()


def _cpuinfo(key: str, path: str = "/proc/cpuinfo") -> str | None:
  try:
    with open(path) as f:
      for line in f:
        if line.startswith(key):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return None


def cpu_model(path: str = "/proc/cpuinfo") -> str:
  return _cpuinfo("model name", path) or "unknown CPU"


def hardware_isa(flags: set[str] | None = None) -> str:
  """'AVX-512', 'AVX2' (with FMA), 'AVX', 'SSE4.2' or 'unknown' (no /proc/cpuinfo)."""
  flags = cpu_flags() if flags is None else flags
  if not flags:
    return "unknown"
  if "avx512f" in flags:
    return "AVX-512"
  if "avx2" in flags and "fma" in flags:
    return "AVX2"
  if "avx" in flags:
    return "AVX"
  return "SSE4.2" if "sse4_2" in flags else "older than SSE4.2"


# f32 FLOP per cycle per core: 2 FMA units x lanes x 2 FLOPs a fused multiply-add.
_FLOP_PER_CYCLE = {"AVX-512": 64, "AVX2": 32, "AVX": 16, "SSE4.2": 8}


def cpu_peak(cores: int | None = None, ghz: float | None = None,
             isa: str | None = None) -> tuple[float, str]:
  """The assumed peak f32 FLOP/s of this machine's cores and the sentence that says how
  it was assumed."""
  cores = len(os.sched_getaffinity(0)) if cores is None else cores
  if ghz is None:
    mhz = _cpuinfo("cpu MHz")
    ghz = float(mhz) / 1000 if mhz else 2.0
  isa = hardware_isa() if isa is None else isa
  per_cycle = _FLOP_PER_CYCLE.get(isa, 8)
  peak = cores * ghz * 1e9 * per_cycle
  return peak, (f"assumed CPU peak {cores} cores x {ghz:.2f} GHz x {per_cycle} f32 "
                f"FLOP/cycle ({isa}) = {peak / 1e9:.0f} GFLOP/s")


def device_peak(devices=None, override_tflops: float = 0.0) -> tuple[float, str]:
  """Peak FLOP/s per device of ``devices`` (default: every jax device) and where the
  figure comes from. ``override_tflops`` > 0 (config.peak_tflops) wins."""
  devices = jax.devices() if devices is None else devices
  if override_tflops > 0:
    return override_tflops * 1e12, f"peak {override_tflops:g} TFLOP/s per device (config.peak_tflops)"
  kind = devices[0].device_kind
  if devices[0].platform == "cpu":
    # The cores are shared by the CPU devices of every process on this host.
    local = sum(1 for d in devices if d.process_index == devices[0].process_index)
    peak, how = cpu_peak()
    return peak / local, f"{how}, over {local} CPU device{'s' * (local > 1)}"
  found = chip(kind)
  if found is None:
    return 0.0, f"no peak known for {kind!r}: set config.peak_tflops for an MFU"
  return found.peak_flops, f"{found.name} peak {found.peak_flops / 1e12:g} TFLOP/s bf16 (data sheet)"


# ---------------------------------------------------------------------------- FLOPs


def _dot_flops(eqn) -> int:
  lhs = eqn.invars[0].aval
  (contract, _), _ = eqn.params["dimension_numbers"]
  out = eqn.outvars[0].aval
  return 2 * math.prod(out.shape) * math.prod(lhs.shape[d] for d in contract)


def _conv_flops(eqn) -> int:
  # Each output element sums over the kernel's input features and window: the kernel's
  # size over its output features.
  rhs, out = eqn.invars[1].aval, eqn.outvars[0].aval
  spec = eqn.params["dimension_numbers"].rhs_spec   # (out features, in features, spatial...)
  return 2 * math.prod(out.shape) * (math.prod(rhs.shape) // rhs.shape[spec[0]])


def _jaxprs(params):
  for v in params.values():
    for x in (v if isinstance(v, (tuple, list)) else (v,)):
      j = getattr(x, "jaxpr", x)   # a ClosedJaxpr's jaxpr, or a Jaxpr
      if hasattr(j, "eqns"):
        yield j


def count_flops(jaxpr) -> int:
  """Matmul and convolution FLOPs of a (closed) jaxpr over every device (see the module
  docstring): loops times their trip count, the costlier branch of a ``cond``, a
  ``while`` body once (its trip count is not known when traced)."""
  jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
  total = 0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == "dot_general":
      total += _dot_flops(eqn)
    elif name == "conv_general_dilated":
      total += _conv_flops(eqn)
    elif name == "cond":
      total += max(count_flops(b) for b in eqn.params["branches"])
    else:
      inner = sum(count_flops(j) for j in _jaxprs(eqn.params))
      if name == "scan":
        inner *= int(eqn.params["length"])
      elif name == "shard_map":   # the body sees one device's shard, on each device
        mesh = eqn.params["mesh"]
        inner *= math.prod(mesh.shape[a] for a in eqn.params.get("newly_manual_axes", ()))
      total += inner
  return total


def flop_text(n: float) -> str:
  return f"{n / 1e12:.4g} TFLOP" if n >= 1e11 else f"{n / 1e9:.4g} GFLOP"


def memory_line(compiled) -> str:
  """The compiled program's memory per device, in one line."""
  mem = compiled.memory_analysis()
  if mem is None:
    return "compiled step: no memory analysis on this backend"
  mib = lambda n: f"{n / 2 ** 20:.1f} MiB"
  return (f"compiled step per device: arguments {mib(mem.argument_size_in_bytes)} (train "
          f"state and batch), outputs {mib(mem.output_size_in_bytes)} "
          f"({mib(mem.alias_size_in_bytes)} of them in the donated state's buffers), "
          f"temporaries {mib(mem.temp_size_in_bytes)}, code "
          f"{mib(mem.generated_code_size_in_bytes)}")
