r"""Ahead-of-time compilation of the train step for a TPU slice, from any host (no TPU).

  python -m jaxclap.aot --config=configs/slap.py --topology=v5e:16x16
  python -m jaxclap.aot --config=configs/clap.py --topology=v5e:4x4 --num_slices=2 \
      --config.global_batch_size=256
  python -m jaxclap.aot --config=configs/demo.py:runlocal --topology=v5e:2x2 \
      --serialize=/tmp/step.bin
  python -m jaxclap.aot --loss=info_nce --mode=chunked --topology=v5e:16x16 \
      --global_batch=32768 --embed_dim=1024

  --config       a config file as for jaxclap.main, with --config.X=Y overrides
  --topology     the slice: <chip>:<chips per axis>, e.g. v5e:2x2, v5e:4x4, v5e:16x16,
                 v4:4x4x4, v5p:4x4x8 (v5p is spelt v5: by libtpu; both are accepted),
                 v6e:16x16 (MaxText's accelerator table has the shapes of each slice)
  --num_slices   slices joined by DCN (default 1): the data axis spans them
  --serialize    write the compiled executable there (jax.experimental.serialize_executable,
                 pickled with its argument trees); nothing is written otherwise
  --json         write the figures printed below as JSON there
  --loss         instead of a config's step: the contrastive loss alone (info_nce,
                 multi_positive, sigmoid), value and gradient with respect to both towers'
                 embeddings, the batch split over every device of the slice; with
                 --mode (gather | chunked, as loss.mode), --global_batch, --embed_dim.
                 What a global batch costs per device in each mode, without any tower

What it does: ``libtpu`` (the ``tpu`` extra: ``pip install -e '.[tpu]'``) describes the
slice's chips as compile-only devices; the mesh is the config's ``mesh`` section over
them (``jaxclap.sharding.make_mesh``, as ``main`` builds it), the train state and the
global batch are shapes with the shardings the trainer gives them, and the step is the
Trainer's own jitted ``step``, ``.lower(state, batch).compile()``d: the very program
``main`` would run on that slice, never a copy. Nothing is downloaded and no weights are
read: ``model.*.init`` and ``init_from`` are only read by ``Trainer.init_state``, which
this never calls. Where main computes a frozen text tower once per caption
(``config.frozen_cache``, jaxclap/frozen_cache.py), the batch holds its pooled outputs
in place of the tokens, as main's does, and the tower is not in the step's figures.

It prints, per device: the compiled program's argument (train state + batch), output,
temporary and generated-code bytes and its peak against the HBM the chip gives a
program; the compiled FLOPs and bytes accessed per step (``cost_analysis()`` of the
partitioned, per-device program, which counts a loop's body once), the step's TFLOP over
all devices counted from the program (``jaxclap.perf.count_flops``: matmuls and
convolutions, loops such as gradient accumulation times their trip count: the figure the
table and the training log's MFU use); the roofline bound on the step time
``max(FLOPs / peak FLOP/s, bytes / HBM bandwidth)`` (collectives over ICI / DCN are not
in it) and the best MFU it allows, ``(FLOPs / peak) / bound`` with the compiled FLOPs
(the optimiser, masks and softmax included) as the work. It exits with status 1 and one
line naming the overflow when the program does not fit (the compiler's own refusal, or
a peak above the chip's HBM).

Run it with ``JAX_PLATFORMS=cpu`` semantics: the CLI sets ``jax_platforms=cpu`` so that
on a TPU VM it leaves the chips to whatever is training on them.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import re
import sys
import time
from typing import Any

# The compile-only client drives no chip, so libtpu's one-process-per-host lock (which
# guards the chips) is not needed, and it would refuse this process while any other
# JAX process on the host has loaded libtpu. Set before libtpu is first loaded.
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")

import jax
import numpy as np

from jaxclap import perf, sharding, train

# The chips, their HBM and peaks: one table, shared with the training log's MFU.
GiB, Chip, CHIPS = perf.GiB, perf.Chip, perf.CHIPS

# libtpu's names for the chips, and the chip config that gives one device per chip.
_ALIASES = {"v5p": "v5"}
_MEGACORE = {"v4"}


class DoesNotFit(Exception):
  """The step does not fit the slice: the message names what overflowed."""


def parse_topology(topology: str) -> tuple[str, dict]:
  """``v5e:16x16`` / ``v5p:4x4x8`` -> libtpu's topology name and keyword arguments."""
  m = re.fullmatch(r"(v\d+[a-z]*):(\d+(?:x\d+){1,2})", topology.strip())
  if not m:
    raise ValueError(f"--topology={topology!r}: expected <chip>:<chips per axis>, e.g. "
                     "v5e:2x2, v5e:16x16, v4:4x4x4, v5p:4x4x8, v6e:16x16")
  chip, shape = m.groups()
  chip = _ALIASES.get(chip, chip)
  kwargs = {"chip_config_name": "megacore"} if chip in _MEGACORE else {}
  return f"{chip}:{shape}", kwargs


def topology_devices(topology: str, num_slices: int = 1) -> list:
  """The compile-only devices of ``num_slices`` slices of ``topology``."""
  import importlib.util
  if importlib.util.find_spec("libtpu") is None:
    raise RuntimeError("compiling for a TPU topology needs libtpu: pip install -e '.[tpu]' "
                       "(the libtpu jax's tpu extra pins)")
  from jax.experimental import topologies
  name, kwargs = parse_topology(topology)
  if num_slices < 1:
    raise ValueError(f"--num_slices={num_slices}: must be at least 1")
  if num_slices > 1:
    kwargs["num_slices"] = num_slices
  try:
    desc = topologies.get_topology_desc(platform="tpu", topology_name=name, **kwargs)
  except Exception as e:   # libtpu's JaxRuntimeError: an unknown chip or shape
    raise ValueError(f"--topology={topology!r} (libtpu {name!r}, {kwargs}): {e}") from e
  return list(desc.devices)


def make_mesh(mesh_cfg: Any, devices: list, num_slices: int = 1) -> jax.sharding.Mesh:
  """``main``'s mesh (``sharding.make_mesh``) over ``devices``; over several slices the
  data axis is split between them (data parallelism over DCN, the rest over ICI), since
  ``jax.make_mesh`` refuses multi-slice device lists."""
  if num_slices == 1:
    return sharding.make_mesh(mesh_cfg, devices)
  from jax.experimental import mesh_utils
  sizes = sharding.mesh_shape(mesh_cfg, len(devices))
  if sizes[0] % num_slices:
    raise ValueError(f"config.mesh {dict(zip(sharding.MESH_AXES, sizes))}: the data axis "
                     f"({sizes[0]}) must be a multiple of --num_slices={num_slices}: the "
                     "slices split it")
  ici = (sizes[0] // num_slices,) + tuple(sizes[1:])
  dcn = (num_slices,) + (1,) * (len(sizes) - 1)
  grid = mesh_utils.create_hybrid_device_mesh(ici, dcn, devices)
  return jax.sharding.Mesh(grid, sharding.MESH_AXES,
                           axis_types=(jax.sharding.AxisType.Auto,) * len(sizes))


def batch_spec(config: Any, batch_sharding) -> dict:
  """The global batch main feeds the step, as shapes: the fields and dtypes of
  ``jaxclap.input_pipeline``'s batches (its module docstring) at
  ``config.global_batch_size``, as ``sharding.global_batch`` places them (int64 fields
  become int32 without jax_enable_x64)."""
  c = config.input
  b = int(config.global_batch_size)
  samples = int(round(float(c.clip_seconds) * int(c.sample_rate)))
  k, length = int(c.captions_per_clip), int(c.max_text_len)
  fields = {"audio": ((b, samples), np.float32), "audio_len": ((b,), np.int32),
            "text_ids": ((b, k, length), np.int32), "text_mask": ((b, k, length), np.int32),
            "caption_pool": ((b, k), np.int32), "source": ((b,), np.int32),
            "record": ((b,), np.int64), "index": ((b,), np.int64)}
  return {name: jax.ShapeDtypeStruct(shape, jax.dtypes.canonicalize_dtype(dtype),
                                     sharding=batch_sharding)
          for name, (shape, dtype) in fields.items()}


def _device_bytes(tree) -> int:
  """Bytes one device holds of a tree of sharded ShapeDtypeStructs (the largest shard)."""
  total = 0
  for x in jax.tree_util.tree_leaves(tree):
    shard = x.sharding.shard_shape(x.shape)
    total += math.prod(shard) * np.dtype(x.dtype).itemsize
  return total


def _cost(compiled) -> dict:
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):   # older jax: one dict per computation
    cost = cost[0]
  return cost or {}


_OOM = re.compile(r"RESOURCE_EXHAUSTED|[Rr]an out of memory|exceeds available HBM")


def compile_step(config: Any, topology: str, num_slices: int = 1,
                 progress=lambda message: None) -> dict:
  """Lowers and compiles the Trainer's step for the slice; returns the figures (see
  ``report``), the ``trainer`` and the ``compiled`` executable. Raises ``DoesNotFit``
  naming the overflow. ``progress(message)`` hears of each stage (a full-size compile
  takes minutes)."""
  t0 = time.time()
  devices = topology_devices(topology, num_slices)
  kind = devices[0].device_kind
  if kind not in CHIPS:
    raise ValueError(f"--topology={topology!r}: no peak figures for device kind {kind!r}; "
                     f"known: {sorted(CHIPS)}")
  chip = CHIPS[kind]
  mesh = make_mesh(config.mesh, devices, num_slices)
  shards = mesh.shape["data"] * mesh.shape["fsdp"]
  if int(config.global_batch_size) % shards:
    raise ValueError(f"config.global_batch_size={config.global_batch_size} is not divisible "
                     f"by the {shards} batch shards of mesh {dict(mesh.shape)} (data x fsdp)")
  trainer = train.Trainer(config, mesh)
  state = trainer.abstract_state()
  batch = batch_spec(config, trainer.batch_sharding)
  # Where main computes a frozen text tower once per caption (config.frozen_cache), its
  # step takes the pooled outputs instead of tokens: compile that step.
  from jaxclap import frozen_cache
  not_cached = frozen_cache.reason_not_cached(config, state.params, state.model_state)
  if not_cached is None:
    batch = frozen_cache.TextCache(trainer).spec(state.params["text"], batch)
  counts = trainer.param_counts()
  params = sum(counts.values())
  frozen = _frozen_params(trainer, state.params)
  figures = dict(
      topology=topology, num_slices=num_slices, devices=len(devices), chip=chip.name,
      mesh=dict(mesh.shape), global_batch=int(config.global_batch_size),
      grad_accum=int(config.optim.grad_accum), params=params, trained_params=params - frozen,
      params_by_part=counts,
      state_bytes=_device_bytes(state), params_bytes=_device_bytes(state.params),
      opt_state_bytes=_device_bytes(state.opt_state), batch_bytes=_device_bytes(batch),
      hbm=chip.usable_hbm, text_cached=not_cached is None)
  t1 = time.time()
  progress(f"{_label(figures)}: {params / 1e6:.1f}M parameters; lowering")
  traced = trainer.step.trace(state, batch)   # the step main runs, not a copy
  counted = perf.count_flops(traced.jaxpr)
  lowered = traced.lower()
  t2 = time.time()
  progress(f"lowered in {t2 - t1:.1f} s; compiling")
  figures.update(setup_s=t1 - t0, lower_s=t2 - t1)
  try:
    compiled = lowered.compile()
  except Exception as e:   # the compiler's refusal to over-allocate HBM
    if not _OOM.search(str(e)):
      raise
    line = next((l for l in str(e).splitlines() if _OOM.search(l)), str(e)).strip()
    raise DoesNotFit(
        f"{_label(figures)} does not fit: the TPU compiler says: {line} (per device: "
        f"train state {_gib(figures['state_bytes'])}, batch {_gib(figures['batch_bytes'])})"
    ) from e
  figures["compile_s"] = time.time() - t2
  mem = compiled.memory_analysis()
  figures.update(
      argument_bytes=int(mem.argument_size_in_bytes), output_bytes=int(mem.output_size_in_bytes),
      alias_bytes=int(mem.alias_size_in_bytes), temp_bytes=int(mem.temp_size_in_bytes),
      code_bytes=int(mem.generated_code_size_in_bytes))
  # arguments + outputs not aliased to them (the donated state) + temporaries + code
  figures["peak_bytes"] = (int(mem.peak_memory_in_bytes) if hasattr(mem, "peak_memory_in_bytes")
                           else figures["argument_bytes"] + figures["output_bytes"]
                           - figures["alias_bytes"] + figures["temp_bytes"]) \
      + figures["code_bytes"]
  cost = _cost(compiled)
  flops, accessed = float(cost.get("flops", 0.0)), float(cost.get("bytes accessed", 0.0))
  # The compute bound takes the counted FLOPs: XLA's cost analysis counts a loop's body
  # once, so under model.scan_layers its FLOPs are a fraction of the step's. Its bytes
  # are counted the same way: under scan the HBM bound is a lower bound, as the
  # roofline is anyway.
  t_flops = counted / len(devices) / chip.peak_flops
  t_bytes = accessed / chip.hbm_bandwidth
  bound = max(t_flops, t_bytes)
  figures.update(
      flops=flops, bytes_accessed=accessed, counted_flops=counted,
      tflop_per_step=counted / 1e12,
      compute_s=t_flops, memory_s=t_bytes, bound_s=bound,
      bound_by="compute" if t_flops >= t_bytes else "HBM bandwidth",
      mfu_bound=t_flops / bound if bound > 0 else 0.0)
  figures["fits"] = figures["peak_bytes"] <= chip.usable_hbm
  result = dict(figures=figures, trainer=trainer, compiled=compiled)
  if not figures["fits"]:
    raise DoesNotFit(f"{_label(figures)} does not fit: " + _overflow(figures))
  return result


# The contrastive losses --loss compiles: (audio, text) -> scalar, with the paper's
# scalars at their initial values (CLIP's temperature 0.07; SigLIP's scale 10, bias -10).
def _loss_fns(mesh, mode):
  from jaxclap import losses
  kw = dict(mesh=mesh, batch_axes=("data",), mode=mode)
  log_scale = math.log(1 / 0.07)
  return {
      "info_nce": lambda a, t: losses.info_nce(a, t, log_scale, **kw)[0],
      "multi_positive": lambda a, t: losses.multi_positive_info_nce(
          a, t.reshape(t.shape[0], 2, -1), log_scale, **kw)[0],
      "sigmoid": lambda a, t: losses.sigmoid_loss(a, t, math.log(10.0), -10.0, **kw)[0],
  }


LOSSES = ("info_nce", "multi_positive", "sigmoid")


def compile_loss(topology: str, loss: str = "info_nce", mode: str = "chunked",
                 global_batch: int = 32768, embed_dim: int = 1024,
                 num_slices: int = 1) -> dict:
  """Compiles the contrastive ``loss`` alone (value and gradients with respect to both
  [global_batch, embed_dim] float32 embedding matrices, split over all devices of the
  slice) in ``mode``; returns per-device memory figures and the compiled FLOPs.

  The FLOPs are ``cost_analysis()``'s, which counts the body of a loop the compiler keeps
  rolled once: for ``chunked`` (a ring of one step per device, unrolled only on small
  slices) the figure is a lower bound. Temporaries are what the program keeps in HBM:
  a TPU keeps small ones in its on-chip VMEM, so a block of a few MiB may count 0."""
  if loss not in LOSSES:
    raise ValueError(f"--loss={loss!r}; use one of {LOSSES}")
  devices = topology_devices(topology, num_slices)
  mesh = jax.sharding.Mesh(np.asarray(devices), ("data",))
  if global_batch % len(devices):
    raise ValueError(f"--global_batch={global_batch} is not divisible by the {len(devices)} "
                     f"devices of {topology}")
  width = embed_dim * (2 if loss == "multi_positive" else 1)   # two captions per clip
  split = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
  audio = jax.ShapeDtypeStruct((global_batch, embed_dim), np.float32, sharding=split)
  text = jax.ShapeDtypeStruct((global_batch, width), np.float32, sharding=split)
  fn = _loss_fns(mesh, mode)[loss]
  t0 = time.time()
  compiled = jax.jit(jax.value_and_grad(fn, argnums=(0, 1))).lower(audio, text).compile()
  mem = compiled.memory_analysis()
  kind = devices[0].device_kind
  return dict(topology=topology, devices=len(devices), loss=loss, mode=mode,
              global_batch=global_batch, embed_dim=embed_dim, compile_s=time.time() - t0,
              argument_bytes=int(mem.argument_size_in_bytes),
              temp_bytes=int(mem.temp_size_in_bytes),
              output_bytes=int(mem.output_size_in_bytes),
              hbm=CHIPS[kind].usable_hbm if kind in CHIPS else None,
              flops=float(_cost(compiled).get("flops", 0.0)))


def loss_report(f: dict) -> str:
  per = f["global_batch"] // f["devices"]
  return (f"{f['loss']} ({f['mode']}) at global batch {f['global_batch']} x {f['embed_dim']} "
          f"on {f['topology']} ({f['devices']} devices, {per} rows each): per device "
          f"arguments {_gib(f['argument_bytes'])}, temporaries {_gib(f['temp_bytes'])}, "
          f"outputs {_gib(f['output_bytes'])}; compiled {f['flops'] / 1e9:.3g} GFLOP"
          + (" (a lower bound: a rolled ring loop counts once)" if f["mode"] == "chunked"
             else "")
          + f"; compile {f['compile_s']:.1f} s\n"
          f"row: | {f['loss']} | {f['mode']} | {f['global_batch']} x {f['embed_dim']} | "
          f"{f['topology']} ({f['devices']}) | {_gib(f['temp_bytes'])} |")


def _frozen_params(trainer, params) -> int:
  frozen = list(trainer.config.optim.frozen or [])
  if not frozen:
    return 0
  labels = train._path_labels(params, {p: "frozen" for p in frozen}, "trained")
  return sum(int(np.prod(x.shape)) for lab, x in zip(jax.tree_util.tree_leaves(labels),
                                                     jax.tree_util.tree_leaves(params))
             if lab == "frozen")


def _gib(n: float) -> str:
  return f"{n / GiB:.2f} GiB" if abs(n) >= GiB / 10 else f"{n / 2 ** 20:.1f} MiB"


def _label(f: dict) -> str:
  slices = f" x {f['num_slices']} slices" if f["num_slices"] > 1 else ""
  return (f"the train step at global batch {f['global_batch']} on {f['topology']}{slices} "
          f"(mesh {f['mesh']})")


def _overflow(f: dict) -> str:
  parts = {"train state (arguments)": f["state_bytes"], "batch": f["batch_bytes"],
           "temporaries": f["temp_bytes"],
           "outputs not aliased": f["output_bytes"] - f["alias_bytes"],
           "generated code": f["code_bytes"]}
  biggest = max(parts, key=parts.get)
  return (f"per-device peak {_gib(f['peak_bytes'])} exceeds the {_gib(f['hbm'])} of HBM a "
          f"{f['chip']} chip gives a program, by {_gib(f['peak_bytes'] - f['hbm'])}; "
          + ", ".join(f"{k} {_gib(v)}" for k, v in parts.items())
          + f"; the largest is the {biggest}: "
          + ("shard it further (config.mesh.fsdp) or freeze more" if "state" in biggest
             else "lower config.global_batch_size or raise config.optim.grad_accum"))


def report(f: dict) -> str:
  """The figures as the CLI prints them, ending with the pod-fit table row."""
  slices = f" x {f['num_slices']} slices" if f["num_slices"] > 1 else ""
  lines = [
      f"{f['topology']}{slices}: {f['devices']} {f['chip']} devices, mesh {f['mesh']}",
      f"parameters {f['params'] / 1e6:.1f}M ({f['trained_params'] / 1e6:.1f}M trained), "
      f"global batch {f['global_batch']} (grad_accum {f['grad_accum']})"
      + ("; the frozen text tower computed once per caption, outside the step "
         "(config.frozen_cache)" if f.get("text_cached") else ""),
      f"lower {f['lower_s']:.1f} s, compile {f['compile_s']:.1f} s",
      "per device:",
      f"  arguments   {_gib(f['argument_bytes']):>12}  (train state {_gib(f['state_bytes'])}:"
      f" params {_gib(f['params_bytes'])}, optimiser {_gib(f['opt_state_bytes'])}; "
      f"batch {_gib(f['batch_bytes'])})",
      f"  outputs     {_gib(f['output_bytes']):>12}  ({_gib(f['alias_bytes'])} aliased to "
      "the donated state)",
      f"  temporaries {_gib(f['temp_bytes']):>12}",
      f"  code        {_gib(f['code_bytes']):>12}",
      f"  peak        {_gib(f['peak_bytes']):>12}  of {_gib(f['hbm'])} HBM "
      f"({100 * f['peak_bytes'] / f['hbm']:.0f}%)",
      f"  compiled FLOPs {f['flops'] / 1e12:.4g} TFLOP, bytes accessed "
      f"{f['bytes_accessed'] / 1e9:.2f} GB per step (XLA's cost analysis: a loop's body "
      "counted once)",
      f"step: {f['tflop_per_step']:.4g} TFLOP over all devices (matmuls and convolutions "
      "counted from the program, loops times their trip count); roofline "
      f"{f['bound_s'] * 1e3:.2f} ms ({f['bound_by']} bound: compute "
      f"{f['compute_s'] * 1e3:.2f} ms, HBM {f['memory_s'] * 1e3:.2f} ms), best MFU "
      f"{100 * f['mfu_bound']:.0f}%",
      "row: " + table_row(f),
  ]
  return "\n".join(lines)


def table_row(f: dict) -> str:
  """``| slice | mesh | global batch | parameters | peak HBM / device | TFLOP/step |
  roofline MFU |`` for docs/pod_fit.md."""
  chips = f["devices"] // f["num_slices"]
  name = f"{f['chip']}-{chips * (2 if f['chip'] in ('v4', 'v5p') else 1)}"
  if f["num_slices"] > 1:
    name = f"{f['num_slices']} x {name}"
  mesh = "x".join(str(v) for v in f["mesh"].values())
  batch = str(f["global_batch"]) + (f" (accum {f['grad_accum']})" if f["grad_accum"] > 1
                                    else "")
  return (f"| {name} (`{f['topology']}`) | {mesh} | {batch} | {f['params'] / 1e6:.1f}M "
          f"({f['trained_params'] / 1e6:.1f}M trained) | {_gib(f['peak_bytes'])} | "
          f"{f['tflop_per_step']:.3g} | {100 * f['mfu_bound']:.0f}% |")


def serialize(compiled, path: str) -> None:
  from jax.experimental import serialize_executable
  payload, in_tree, out_tree = serialize_executable.serialize(compiled)
  with open(path, "wb") as fh:
    pickle.dump((payload, in_tree, out_tree), fh)


# ----------------------------------------------------------------------------------- CLI


def _define_flags():
  from absl import flags
  from ml_collections import config_flags
  config_flags.DEFINE_config_file("config", None, "Training config file (as jaxclap.main).",
                                  lock_config=False)
  flags.DEFINE_string("topology", None, "TPU slice: v5e:2x2, v5e:4x4, v5e:16x16, v4:4x4x4, "
                      "v5p:4x4x8 (libtpu's v5:), v6e:16x16, ...")
  flags.DEFINE_integer("num_slices", 1, "Slices joined by DCN; the data axis spans them.")
  flags.DEFINE_string("serialize", None, "Write the compiled executable to this file.")
  flags.DEFINE_string("json", None, "Write the printed figures as JSON to this file.")
  flags.DEFINE_enum("loss", None, list(LOSSES), "Compile this contrastive loss alone "
                    "instead of a config's train step.")
  flags.DEFINE_enum("mode", "chunked", ["gather", "chunked"], "--loss: as loss.mode.")
  flags.DEFINE_integer("global_batch", 32768, "--loss: rows of each tower's embeddings.")
  flags.DEFINE_integer("embed_dim", 1024, "--loss: width of the shared space.")


def main(argv):
  from absl import app, flags
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  FLAGS = flags.FLAGS
  if not FLAGS.topology:
    raise app.UsageError("--topology is required, e.g. --topology=v5e:16x16")
  # The host's own accelerators (a TPU VM's chips) stay with whoever uses them.
  jax.config.update("jax_platforms", "cpu")
  if FLAGS.loss:
    try:
      f = compile_loss(FLAGS.topology, FLAGS.loss, FLAGS.mode, FLAGS.global_batch,
                       FLAGS.embed_dim, FLAGS.num_slices)
    except ValueError as e:
      print(str(e), file=sys.stderr, flush=True)
      return 2
    print(loss_report(f), flush=True)
    if FLAGS.json:
      with open(FLAGS.json, "w") as fh:
        json.dump(f, fh, indent=2)
    return 0
  if FLAGS.config is None:
    raise app.UsageError("--config (or --loss) is required, e.g. --config=configs/slap.py")
  try:
    result = compile_step(FLAGS.config, FLAGS.topology, FLAGS.num_slices,
                          progress=lambda m: print(m, file=sys.stderr, flush=True))
  except DoesNotFit as e:
    print(str(e), file=sys.stderr, flush=True)
    return 1
  except ValueError as e:
    print(str(e), file=sys.stderr, flush=True)
    return 2
  f = result["figures"]
  print(report(f), flush=True)
  if FLAGS.json:
    with open(FLAGS.json, "w") as fh:
      json.dump(f, fh, indent=2)
  if FLAGS.serialize:
    serialize(result["compiled"], FLAGS.serialize)
    print(f"executable written to {FLAGS.serialize}", flush=True)
  return 0


if __name__ == "__main__":
  from absl import app, flags
  _define_flags()
  flags.mark_flags_as_required(["topology"])
  app.run(lambda argv: sys.exit(main(argv)))
