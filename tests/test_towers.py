"""The tower registry: every tower is one record in its own model file, and nothing
outside that file dispatches on the tower's name."""

import functools
import inspect
import os
import re

import pytest

from jaxclap.models import towers

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "jaxclap")


def _file(fn):
  while isinstance(fn, functools.partial):
    fn = fn.func
  return os.path.abspath(inspect.getsourcefile(fn))


def _own_files(t: towers.Tower) -> set[str]:
  """The files a tower lives in: its module's, and the one holding its mappings."""
  return {_file(t.module), _file(t.import_torch), _file(t.export_torch)}


def _dispatch(name: str) -> re.Pattern:
  """A tower-name literal compared with, or looked up by, a name: ``a.name == "htsat"``,
  ``name in ("qwen3", ...)``, a table keyed by it (``{"cnn14": ...}``)."""
  q = rf"""["']{re.escape(name)}["']"""
  return re.compile(rf"name\s*(==|!=)\s*{q}|{q}\s*(==|!=)\s*[\w.]*name"
                    rf"|name\s+(not\s+)?in\s*[(\[{{][^)\]}}]*{q}|^\s*{q}\s*:|{{\s*{q}\s*:")


def test_every_tower_has_a_complete_record():
  registered = towers.all_towers()
  assert set(registered) == {"vit", "htsat", "cnn14", "zipformer", "bert", "roberta", "qwen3",
                              "gemma3"}
  for name, t in registered.items():
    assert t.side in towers.SIDES and t.name == name
    assert callable(t.module) and callable(t.import_torch), name
    assert callable(t.export_torch) and callable(t.import_export), name
    assert isinstance(t.torch_class, str) and t.torch_class, name
    assert t.presets and set(t.runlocal) <= set(t.presets), name
    for preset, fields in t.presets.items():
      # Presets are plain data that build the tower's module.
      assert all(not callable(v) for v in fields.values()), (name, preset)
      towers.module({"name": name, "preset": preset})
    for preset, small in t.runlocal.items():
      towers.module({**t.presets[preset], **small, "name": name})


def test_no_module_outside_a_towers_own_files_names_it():
  registered = towers.all_towers()
  sources = [os.path.join(d, f) for d, _, fs in os.walk(PACKAGE) for f in fs
             if f.endswith(".py")]
  # jaxclap.tokenizers keys its own table by tokenizer kind ("qwen3", "bert", ...), which
  # names a vocabulary, not a tower.
  exempt = {os.path.abspath(towers.__file__), os.path.join(PACKAGE, "tokenizers.py")}
  hits = []
  for name, t in registered.items():
    pattern, own = _dispatch(name), _own_files(t) | exempt
    for path in sources:
      if os.path.abspath(path) in own:
        continue
      with open(path) as f:
        for i, line in enumerate(f, 1):
          if pattern.search(line.split("#")[0]):
            hits.append(f"{os.path.relpath(path, PACKAGE)}:{i}: {line.strip()}")
  assert not hits, "\n".join(hits)


def test_no_module_dispatches_on_a_towers_pytorch_class():
  """``jaxclap.torch_model`` serves an export by the calling convention its metadata
  names (``inputs``), never by the class: no string literal of a tower's ``torch_class``
  is compared with or keyed by outside the tower's own files (and the file defining a
  class of jaxclap's own, ``models/cnn14_torch.py``)."""
  sources = [os.path.join(d, f) for d, _, fs in os.walk(PACKAGE) for f in fs
             if f.endswith(".py")]
  hits = []
  for t in towers.all_towers().values():
    q = rf"""["']{re.escape(t.torch_class)}["']"""
    pattern = re.compile(rf"(==|!=)\s*{q}|{q}\s*(==|!=)|\bin\s*[(\[{{][^)\]}}]*{q}"
                         rf"|^\s*{q}\s*:|{{\s*{q}\s*:")
    own = _own_files(t)
    for path in sources:
      text = open(path).read()
      if os.path.abspath(path) in own or re.search(rf"^class {t.torch_class}\b", text, re.M):
        continue
      for i, line in enumerate(text.splitlines(), 1):
        if pattern.search(line.split("#")[0]):
          hits.append(f"{os.path.relpath(path, PACKAGE)}:{i}: {line.strip()}")
  assert not hits, "\n".join(hits)
  from jaxclap import torch_model
  assert set(torch_model.AUDIO_INPUTS) >= {"tiles", "input_features", "spec_frames"}


def test_the_pattern_catches_the_dispatch_it_forbids():
  p = _dispatch("htsat")
  for line in ('if a.name == "htsat":', 'if "htsat" != config.model.audio.name:',
               'if t.name in ("qwen3", "htsat"):', '    "htsat": (dict(name="htsat"), {}),',
               'X = {"htsat": "ClapAudioModel"}'):
    assert p.search(line), line
  assert not p.search('raise ValueError("an HTS-AT tower (\'htsat\') only")')


def test_the_registry_finds_the_tower_files_itself():
  """No hand-kept list: every module of jaxclap.models that calls towers.register is
  imported, and only those (adding a tower touches its own file only)."""
  folder = os.path.dirname(towers.__file__)
  registering = sorted(f"jaxclap.models.{f[:-3]}" for f in os.listdir(folder)
                       if f.endswith(".py") and re.search(r"^\s*towers\.register\(",
                                                          open(os.path.join(folder, f)).read(), re.M))
  assert list(towers.tower_modules()) == registering and len(registering) == 6
  homes = {t.export_torch.__module__ for t in towers.all_towers().values()}
  assert homes == set(registering)
  assert not hasattr(towers, "MODULES")


def test_lookups_name_the_field_and_the_known_towers():
  with pytest.raises(ValueError, match=r"model\.audio\.name='bert'; known: \['cnn14', 'htsat', 'vit', 'zipformer'\]"):
    towers.get("bert", "audio")
  with pytest.raises(ValueError, match=r"model\.text\.preset='nope'"):
    towers.module({"name": "qwen3", "preset": "nope"})
  assert towers.checkpoint_kinds()["audiomae"] is towers.get("vit")
  assert towers.checkpoint_kinds()["minilm"] is towers.get("bert")


def test_config_tables_and_presets_come_from_the_registry():
  from jaxclap import configs
  # The order of the tower files' names (audiomae, ..., cnn14, ..., htsat, zipformer):
  # deterministic.
  assert list(configs.AUDIO) == ["vit", "cnn14", "htsat", "zipformer"]
  assert list(configs.TEXT) == ["minilm", "bert", "roberta", "qwen3", "gemma3"]
  c = configs.preset_tower("gemma3", "medgemma-4b")
  assert towers.fields(c)["depth"] == 34 and towers.fields(c)["family"] == "gemma3"
  with pytest.raises(ValueError, match="medgemma-4b"):
    configs.preset_tower("qwen3", "medgemma-4b")   # a preset of another tower
