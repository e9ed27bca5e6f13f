"""Mesh and sharding: configuration, never model code.

The mesh has three named axes, ``data``, ``fsdp`` and ``tensor`` (any may be 1, one may be
-1 to take the devices left over). Towers name their parameter and activation axes
logically (``embed``, ``mlp``, ``heads``, ``kv_heads``, ``kv``, ``vocab``, ``patch``,
``batch``, ``length``); ``config.sharding_rules`` is the ordered table from logical names
to mesh axes. Flax resolves each array left to right and never uses a mesh axis twice in
one array, so with the default table parameters are FSDP-sharded on ``embed`` and
tensor-sharded on ``mlp``/``heads``/``kv_heads``/``vocab``, while activations shard their
batch over ``data`` x ``fsdp``.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

DEFAULT_RULES = (
    ("batch", ("data", "fsdp")),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    # Grouped-query key/value heads (fewer than query heads): split like the query heads
    # they serve, so each tensor shard holds its queries' keys; a tensor axis that does
    # not divide num_kv_heads needs ("kv_heads", None) in config.sharding_rules.
    ("kv_heads", "tensor"),
    ("vocab", "tensor"),
    ("kv", None),
    ("length", None),
    ("patch", None),
    ("layers", None),   # the stacked axis of scanned layers (scan_layers): never split
)


def mesh_shape(cfg: Any, num_devices: int) -> tuple[int, ...]:
  """``config.mesh`` (data/fsdp/tensor, one may be -1) -> sizes that use every device."""
  sizes = [int(cfg.get(a, 1)) for a in MESH_AXES]
  unknown = set(cfg.keys()) - set(MESH_AXES)
  if unknown:
    raise ValueError(f"config.mesh: unknown axes {sorted(unknown)}; use {MESH_AXES}")
  fill = [i for i, s in enumerate(sizes) if s == -1]
  if len(fill) > 1:
    raise ValueError(f"config.mesh: only one axis may be -1, got {dict(zip(MESH_AXES, sizes))}")
  if any(s == 0 or s < -1 for s in sizes):
    raise ValueError(f"config.mesh: sizes must be positive or -1, got {dict(zip(MESH_AXES, sizes))}")
  known = math.prod(s for s in sizes if s != -1)
  if fill:
    if num_devices % known:
      raise ValueError(f"config.mesh {dict(zip(MESH_AXES, sizes))}: {num_devices} devices "
                       f"are not divisible by {known}")
    sizes[fill[0]] = num_devices // known
  if math.prod(sizes) != num_devices:
    raise ValueError(f"config.mesh {dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} "
                     f"devices; there are {num_devices}")
  return tuple(sizes)


def make_mesh(cfg: Any, devices: Sequence[jax.Device] | None = None) -> Mesh:
  devices = list(jax.devices() if devices is None else devices)
  shape = mesh_shape(cfg, len(devices))
  # Auto axes: GSPMD propagates shardings from the jit boundary and the logical
  # constraints, the model code stays free of per-op sharding annotations.
  return jax.make_mesh(shape, MESH_AXES, devices=devices,
                       axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES))


def rules(cfg_rules) -> tuple:
  return tuple((name, tuple(axes) if isinstance(axes, list) else axes)
               for name, axes in (cfg_rules or DEFAULT_RULES))


def logical_shardings(abstract_tree: Any, mesh: Mesh, rule_table) -> Any:
  """Shardings for a (boxed) tree of ``nn.LogicallyPartitioned`` leaves / plain arrays.

  A dimension the rules would split over mesh axes whose size does not divide it (a
  Zipformer stack of 4 layers' scalars under ``fsdp`` = 16) is kept whole on each device
  instead: GSPMD cannot split it, and the alternative is an error at the jit boundary.
  Those arrays are logged by name with the bytes they cost, so a large one is seen."""
  specs = nn.get_partition_spec(abstract_tree)
  shardings = nn.logical_to_mesh_sharding(specs, mesh, rules(rule_table))
  values = nn.meta.unbox(abstract_tree)
  whole = []

  def fit(path, s, v):
    shape = tuple(getattr(v, "shape", ()))
    # Optimiser statistics kept per parameter but of lower rank (ScaledAdam's scalar
    # parameter scale) inherit the parameter's box and names: those are replicated.
    if len(s.spec) > len(shape):
      return NamedSharding(mesh, P())
    spec = list(s.spec)
    for i, axes in enumerate(spec):
      names = (axes,) if isinstance(axes, str) else tuple(axes or ())
      if names and shape[i] % math.prod(mesh.shape[a] for a in names):
        spec[i] = None
    if spec == list(s.spec):
      return s
    whole.append((jax.tree_util.keystr(path), shape, v.dtype))
    return NamedSharding(mesh, P(*spec))

  out = jax.tree_util.tree_map_with_path(fit, shardings, values)
  if whole:
    nbytes = sum(math.prod(sh) * np.dtype(dt).itemsize for _, sh, dt in whole)
    logging.info("%d arrays (%.1f MiB) kept whole along a dimension the mesh %s does not "
                 "divide: %s", len(whole), nbytes / 2**20, dict(mesh.shape),
                 ", ".join(f"{n}{list(sh)}" for n, sh, _ in whole[:8])
                 + (" ..." if len(whole) > 8 else ""))
  return out


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) dimension split over the data-parallel axes."""
  return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def global_batch(local: dict, mesh: Mesh) -> dict:
  """This process's rows -> global arrays sharded over the batch axes (multi-host safe)."""
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in local.items()}
