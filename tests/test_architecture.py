"""The package's shape: data flows one way, and the layer above the units names no recipe.

Read from the source (no imports run), so a lazy import inside a function counts as
much as one at the top of a module: ``inference`` importing ``train`` inside ``load``
was a cycle all the same.
"""

import ast
import os

import pytest

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
PACKAGE = os.path.join(ROOT, "jaxclap")
# The recipes live in configs/; no module of the package may dispatch on their names.
RECIPES = ("clsp", "acula", "slap", "speech_clap")


def _modules() -> dict[str, str]:
  out = {}
  for folder, _, files in os.walk(PACKAGE):
    for f in files:
      if f.endswith(".py"):
        path = os.path.join(folder, f)
        rel = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
        out[rel.removesuffix(".__init__")] = path
  return out


def _imports(path: str, name: str, modules: set[str]) -> set[str]:
  """The package's modules that ``path`` imports, anywhere in the file."""
  tree = ast.parse(open(path).read(), path)
  package = name if path.endswith("__init__.py") else name.rpartition(".")[0]
  got = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      targets = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:   # relative: from . import x / from .y import z
        parts = package.split(".")
        base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
      targets = [base] + [f"{base}.{a.name}" for a in node.names]
    else:
      continue
    for t in targets:
      # "import jaxclap.models.vit" imports jaxclap.models.vit (and its packages).
      while t and t not in modules:
        t = t.rpartition(".")[0]
      if t and t != name and t.startswith("jaxclap"):
        got.add(t)
  # A package's __init__ is imported with each of its modules: not an edge of ours.
  return {t for t in got if t != "jaxclap" or name == "jaxclap"}


def _graph() -> dict[str, set[str]]:
  mods = _modules()
  return {name: _imports(path, name, set(mods)) for name, path in mods.items()}


def _reachable(graph, start) -> set[str]:
  seen, todo = set(), [start]
  while todo:
    for nxt in graph.get(todo.pop(), ()):
      if nxt not in seen:
        seen.add(nxt)
        todo.append(nxt)
  return seen


def test_the_import_graph_has_no_cycle():
  graph = _graph()
  assert "jaxclap.train" in graph and "jaxclap.inference" in graph
  cycles = sorted({tuple(sorted((a, b))) for a in graph for b in graph[a]
                   if a in _reachable(graph, b)})
  assert not cycles, f"modules that import each other (directly or through others): {cycles}"


@pytest.mark.parametrize("user", ["jaxclap.inference", "jaxclap.checkpoints",
                                  "jaxclap.export", "jaxclap.torch_model"])
def test_inference_and_export_never_reach_the_trainer(user):
  graph = _graph()
  if user not in graph:
    pytest.skip(f"{user} is not a module of this tree")
  reached = _reachable(graph, user)
  assert not reached & {"jaxclap.train", "jaxclap.optim"}, (
      f"{user} depends on the trainer: {sorted(reached)}")


def test_no_module_names_a_recipe():
  """Recipes are configuration: a string literal equal to a recipe's name in the package
  is a recipe leaking into the code (CLSP's caption sampler is "task_pairs", its
  required starting point ``config.required``)."""
  found = []
  for name, path in _modules().items():
    if name == "jaxclap.configs":   # the config loader resolves recipe names to files
      continue
    for node in ast.walk(ast.parse(open(path).read(), path)):
      if isinstance(node, ast.Constant) and isinstance(node.value, str):
        if node.value.lower() in RECIPES:
          found.append(f"{name}:{node.lineno}: {node.value!r}")
  assert not found, found


def test_benchmark_profile_parts_run():
  """``benchmarks/train_step.py --profile`` times jitted parts of the library's step; the
  loss part had called ``loss_fn`` with an old signature (TypeError)."""
  import importlib.util
  import jax
  from jaxclap import configs
  spec = importlib.util.spec_from_file_location(
      "train_step_bench", os.path.join(ROOT, "benchmarks", "train_step.py"))
  bench = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(bench)
  c = configs.load("demo", "runlocal")
  c.model.text.init = None
  c.global_batch_size = 2
  side = bench.JaxSide(c, bench.make_batch(c, 2))
  for name, part in side.parts().items():
    part()   # each runs one jitted part to completion
