"""The tower registry: one record per tower, registered in the tower's own model file.

A ``Tower`` holds everything the rest of jaxclap needs to know about one tower kind:
the Flax module built from ``model.<side>`` fields, its presets (plain field dicts), its
PyTorch import mapping (what ``convert.import_tower`` runs for ``init_kind``), its way out
to PyTorch (what ``jaxclap.export`` runs for the towers format) and the PyTorch class it
exports to. ``two_towers``, ``convert``, ``jaxclap.export`` and ``jaxclap.configs`` look
towers up here and name none of them, so adding a tower touches its own file only: the
registry imports every module of ``jaxclap.models`` that registers a tower
(``tower_modules``).

Presets: ``presets[name]`` is a complete set of ``model.<side>`` fields; ``runlocal[name]``
(where present) is the laptop miniature's overrides of that preset. The presets with a
miniature are the demo-sized ones ``jaxclap.configs.AUDIO`` / ``TEXT`` offer; the others
are published sizes, picked with ``model.<side>.preset``.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import os
import pkgutil
import re
from typing import Any, Callable, Mapping

SIDES = ("audio", "text")


@functools.cache
def tower_modules() -> tuple[str, ...]:
  """The modules of ``jaxclap.models`` whose source registers a tower, in name order;
  imported on the first lookup (a model file imports this module, so this one cannot
  import them at the top). Read as text first: a module that registers nothing (and
  the PyTorch-only twins) is not imported."""
  here = os.path.dirname(os.path.abspath(__file__))
  found = []
  for info in sorted(pkgutil.iter_modules([here]), key=lambda m: m.name):
    with open(os.path.join(here, info.name + ".py")) as f:
      if re.search(r"^\s*towers\.register\(", f.read(), re.M):
        found.append(f"{__package__}.{info.name}")
  return tuple(found)


# Our activation names -> transformers' ACT2FN names computing the same function.
HF_ACT = {"relu": "relu", "gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh", "silu": "silu"}


class NotExportable(ValueError):
  """The run's model or features have no exact PyTorch / transformers equivalent."""


def window_frames(config: Any) -> tuple[int, int, int]:
  """(samples per input window, its real frames, frames after the frames_multiple crop):
  the fixed input size of an exported audio tower."""
  f = config.features
  window = int(round(float(config.input.clip_seconds) * int(config.input.sample_rate)))
  frames = window // int(f.hop_length) + 1
  multiple = int(f.frames_multiple or 1)
  return window, frames, frames // multiple * multiple


@dataclasses.dataclass(frozen=True)
class Tower:
  """One tower kind. ``name`` is ``model.<side>.name`` and the checkpoint kind of
  ``convert.import_tower``; ``aliases`` are further checkpoint kinds the same importer
  reads (an AudioMAE checkpoint for the ViT, a MiniLM one for BERT).

  ``export_torch(config, variables, folder) -> metadata`` writes the tower (its
  ``{"params", ...}`` in the run) to ``folder`` as ``torch_class`` and returns the
  ``jaxclap_export.json`` entry ``jaxclap.torch_model`` reads; ``import_export(config,
  folder, target) -> variables`` reads it back (``target``: the tower's variable shapes);
  ``check_export(config)`` raises ``NotExportable`` naming the field the export cannot
  reproduce. ``export_files`` are files beside the tower folder that ``export_torch``
  may write (the ViT's MAE decoder)."""
  name: str
  side: str
  module: type
  import_torch: Callable[..., Any]
  torch_class: str
  export_torch: Callable[..., dict]
  import_export: Callable[..., dict]
  check_export: Callable[[Any], None] = lambda config: None
  fixed: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  presets: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)
  runlocal: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)
  aliases: tuple[str, ...] = ()


_TOWERS: dict[str, Tower] = {}


def register(tower: Tower) -> Tower:
  if tower.side not in SIDES:
    raise ValueError(f"tower {tower.name!r}: side must be one of {SIDES}")
  if tower.name in _TOWERS and _TOWERS[tower.name] is not tower:
    raise ValueError(f"tower {tower.name!r} registered twice")
  unknown = set(tower.runlocal) - set(tower.presets)
  if unknown:
    raise ValueError(f"tower {tower.name!r}: runlocal miniatures of no preset {unknown}")
  _TOWERS[tower.name] = tower
  return tower


def all_towers() -> dict[str, Tower]:
  """Every tower, in ``tower_modules`` order (then registration order): whichever model
  file was imported first, the config tables list the towers the same way."""
  modules = tower_modules()
  for module in modules:
    importlib.import_module(module)
  home = lambda t: modules.index(t.export_torch.__module__)
  return {t.name: t for t in sorted(_TOWERS.values(), key=home)}


def get(name: str, side: str | None = None) -> Tower:
  """The tower called ``name`` (``side``: it must be an audio / text tower)."""
  towers = all_towers()
  known = sorted(n for n, t in towers.items() if side in (None, t.side))
  if name not in known:
    where = f"model.{side}.name" if side else "tower"
    raise ValueError(f"{where}={name!r}; known: {known}")
  return towers[name]


def checkpoint_kinds() -> dict[str, Tower]:
  """Checkpoint kind (a tower's name or alias) -> its tower."""
  out = {}
  for t in all_towers().values():
    out.update({k: t for k in (t.name, *t.aliases)})
  return out


def table(side: str) -> dict[str, tuple[dict, dict]]:
  """The demo-sized presets of ``side``'s towers: preset -> (fields, runlocal overrides),
  the shape of ``jaxclap.configs.AUDIO`` / ``TEXT``."""
  out = {}
  for t in all_towers().values():
    if t.side == side:
      for preset, small in t.runlocal.items():
        out[preset] = (dict(t.presets[preset]), dict(small))
  return out


def fields(tower_cfg: Any) -> dict:
  """``model.<side>`` -> the module's fields: ``name``, ``init`` / ``init_kind``
  (pretrained weights, read by the trainer) and ``dtype`` (``module``'s argument) left
  out, ``preset`` expanded under the explicit fields, and the tower's fixed fields."""
  kw = dict(tower_cfg.to_dict() if hasattr(tower_cfg, "to_dict") else tower_cfg)
  tower = get(kw.pop("name"))
  for k in ("init", "init_kind", "dtype"):
    kw.pop(k, None)
  preset = kw.pop("preset", None)
  if preset is not None:
    if preset not in tower.presets:
      raise ValueError(f"model.{tower.side}.preset={preset!r}; known: {sorted(tower.presets)}")
    base = {k: v for k, v in tower.presets[preset].items() if k not in ("name", "init")}
    kw = {**base, **kw}
  return {**kw, **tower.fixed}


def module(tower_cfg: Any, **kw):
  """``model.<side>`` -> the tower's Flax module (``kw``: e.g. ``dtype``)."""
  return get(tower_cfg["name"]).module(**fields(tower_cfg), **kw)
