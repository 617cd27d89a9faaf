"""The house keeps its shape: imports only point down the layers, and nothing imports in a circle.

  launch.py                      the entry point
  mode_jax/stages/, explore.py   one module per stage (and the notebook helper)
  configs/                       experiment files (read the libraries' defaults)
  libraries, lowest first        models, text, data, clustering, ensemble, train, eval
  base                           constants, workdir, distributed, provenance, checkpoint,
                                 sections

Every import counts, the ones inside functions too: a local import that hid a
circle from Python would still be a circle for a reader.
"""

import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("mode_jax", "clustering", "configs")
LIBRARIES = ("mode_jax.models", "mode_jax.text", "mode_jax.data", "clustering",
             "mode_jax.ensemble", "mode_jax.train", "mode_jax.eval")
BASE = ("mode_jax.constants", "mode_jax.workdir", "mode_jax.distributed", "mode_jax.provenance",
        "mode_jax.checkpoint", "mode_jax.sections", "mode_jax")
# The stage modules that may call other stages' `run` (the pipeline is their list).
ORCHESTRATORS = ("mode_jax.stages.pipeline",)


def _modules() -> dict[str, str]:
  out = {"launch": os.path.join(ROOT, "launch.py")}
  for pkg in PACKAGES:
    for folder, _, names in os.walk(os.path.join(ROOT, pkg)):
      for name in names:
        if name.endswith(".py"):
          path = os.path.join(folder, name)
          mod = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
          out[mod.removesuffix(".__init__")] = path
  return out


MODULES = _modules()


def _imports(mod: str, path: str) -> set[str]:
  """Project modules `mod` imports, at any depth of its code."""
  pkg = mod if path.endswith("__init__.py") else mod.rpartition(".")[0]
  found = set()
  for node in ast.walk(ast.parse(open(path).read())):
    if isinstance(node, ast.Import):
      names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        parts = pkg.split(".")[:len(pkg.split(".")) - node.level + 1]
        base = ".".join(parts + ([base] if base else []))
      names = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base
               for a in node.names]
    else:
      continue
    for name in names:
      while name and name not in MODULES:
        name = name.rpartition(".")[0]
      if name and name != mod:
        found.add(name)
  return found


GRAPH = {m: _imports(m, p) for m, p in MODULES.items()}


def group(mod: str) -> str:
  """The layer's room a module lives in: a library, the stages, configs, base, launch."""
  for lib in LIBRARIES:
    if mod == lib or mod.startswith(lib + "."):
      return lib
  if mod.startswith("mode_jax.stages"):
    return "mode_jax.stages"
  if mod.startswith("configs"):
    return "configs"
  return "base" if mod in BASE else mod


def layer(mod: str) -> float:
  if mod == "launch":
    return 6
  if mod.startswith("mode_jax.stages") or mod == "mode_jax.explore":
    return 5
  if mod.startswith("configs"):
    return 4
  for i, lib in enumerate(LIBRARIES):
    if mod == lib or mod.startswith(lib + "."):
      return 2 + i / 10
  if mod in BASE:
    return 1
  raise AssertionError(f"{mod} is in no layer: add it to tests/test_layers.py")


def test_every_module_has_a_layer():
  for mod in MODULES:
    layer(mod)


def test_imports_only_point_down():
  up = []
  for mod, deps in GRAPH.items():
    for dep in deps:
      if layer(dep) > layer(mod) or (layer(dep) == layer(mod) and group(dep) != group(mod)):
        up.append(f"{mod} -> {dep}")
  assert not up, "imports that run up (or sideways) the layers:\n" + "\n".join(sorted(up))


def test_no_library_imports_a_stage_and_stages_import_no_other_stage():
  bad = []
  for mod, deps in GRAPH.items():
    for dep in deps:
      if not dep.startswith("mode_jax.stages.") or dep == mod:
        continue
      if mod != "launch" and mod not in ORCHESTRATORS:
        bad.append(f"{mod} -> {dep}")
  assert not bad, "\n".join(bad)


def _cycles() -> list[list[str]]:
  """Strongly connected components of more than one module (Tarjan)."""
  index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

  def visit(v):
    index[v] = low[v] = counter[0]
    counter[0] += 1
    stack.append(v)
    on.add(v)
    for w in GRAPH[v]:
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      comp = []
      while True:
        w = stack.pop()
        on.discard(w)
        comp.append(w)
        if w == v:
          break
      if len(comp) > 1:
        out.append(sorted(comp))

  for v in GRAPH:
    if v not in index:
      visit(v)
  return out


def test_no_import_circles():
  assert not _cycles(), _cycles()


@pytest.mark.parametrize("planted", ["circle", "upward"])
def test_the_checks_catch_what_they_look_for(planted, monkeypatch):
  """The checks are not vacuous: a planted circle or upward arrow is found."""
  graph = {k: set(v) for k, v in GRAPH.items()}
  if planted == "circle":
    graph["mode_jax.workdir"].add("mode_jax.distributed")
    graph["mode_jax.distributed"].add("mode_jax.workdir")
    monkeypatch.setattr(__import__(__name__), "GRAPH", graph)
    assert any("mode_jax.workdir" in c for c in _cycles())
  else:
    graph["mode_jax.models.clip"].add("mode_jax.eval.report")
    monkeypatch.setattr(__import__(__name__), "GRAPH", graph)
    with pytest.raises(AssertionError, match="models.clip -> mode_jax.eval.report"):
      test_imports_only_point_down()


def test_every_stage_is_a_run_function_and_nothing_else_public():
  from mode_jax import stages
  for name in stages.PIPELINE + stages.OTHERS + ("classify",):
    tree = ast.parse(open(MODULES[f"mode_jax.stages.{name}"]).read())
    public = [n.name for n in tree.body
              if isinstance(n, (ast.FunctionDef, ast.ClassDef)) and not n.name.startswith("_")]
    assert public == ["run"], (name, public)
