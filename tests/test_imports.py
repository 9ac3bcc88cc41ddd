"""The package's import graph: every module imports on its own, and no chain of imports comes back to
where it started (importing a.b.c also runs a/__init__.py and a/b/__init__.py, so those count too)."""

import ast
import importlib
import os

import pytest

from helpers.paths import REPO

PACKAGE = os.path.join(REPO, "glide_jax")


def module_files() -> dict[str, str]:
  modules = {}
  for dirpath, _, filenames in os.walk(PACKAGE):
    for name in filenames:
      if name.endswith(".py"):
        path = os.path.join(dirpath, name)
        parts = os.path.relpath(path, REPO)[:-3].split(os.sep)
        if parts[-1] == "__init__":
          parts = parts[:-1]
        modules[".".join(parts)] = path
  return modules


def import_graph() -> dict[str, set[str]]:
  """Module → the package's modules its execution runs: what it imports and their parent packages.

  (A module's own parent packages are already being imported when it runs, so they are not edges.)"""
  modules = module_files()

  def with_parents(name):
    parts = name.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts) + 1)} & modules.keys()

  graph = {}
  for name, path in modules.items():
    with open(path, encoding="utf-8") as f:
      tree = ast.parse(f.read(), path)
    deps = set()
    for node in ast.walk(tree):
      if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
        deps |= with_parents(node.module)
        deps |= {d for a in node.names for d in with_parents(f"{node.module}.{a.name}")}
      elif isinstance(node, ast.Import):
        deps |= {d for a in node.names for d in with_parents(a.name)}
    graph[name] = deps - with_parents(name)
  return graph


def find_cycle(graph: dict[str, set[str]]):
  """One cycle as a list of modules, or None."""
  state, stack = {}, []

  def visit(node):
    state[node] = "open"
    stack.append(node)
    for dep in sorted(graph[node]):
      if state.get(dep) == "open":
        return stack[stack.index(dep):] + [dep]
      if dep not in state:
        found = visit(dep)
        if found:
          return found
    stack.pop()
    state[node] = "done"
    return None

  for node in sorted(graph):
    if node not in state:
      found = visit(node)
      if found:
        return found
  return None


def test_the_package_has_no_import_cycle():
  cycle = find_cycle(import_graph())
  assert cycle is None, " -> ".join(cycle)


def test_the_cycle_finder_finds_cycles():
  assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
  assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_the_graph_sees_imports_inside_functions_and_parent_packages():
  graph = import_graph()
  assert "glide_jax.train" in graph["glide_jax.experiment"]  # Importing train.step runs train/__init__.py.
  assert "glide_jax.experiment" in graph["glide_jax.modes.train"]
  assert "glide_jax.errors" in graph["glide_jax.runtime"]  # Imported inside a function.


# Layers, bottom to top: the libraries (every folder but modes/, and the top-level modules), the Experiment
# that builds them from a config, the modes that drive an Experiment, the command line that picks a mode.
DRIVERS = ("glide_jax.experiment", "glide_jax.modes", "glide_jax.cli")


def layering_violations(graph: dict[str, set[str]]) -> list[str]:
  """"a -> b" for each library module that imports the Experiment, a mode or the command line, and each mode
  that imports the command line."""
  def is_under(name, prefix):
    return name == prefix or name.startswith(prefix + ".")

  bad = []
  for name, deps in sorted(graph.items()):
    if is_under(name, "glide_jax.cli") or name in ("glide_jax.convert", "glide_jax.benchmark"):
      continue  # The command line and its two aliases are the top.
    above = DRIVERS[2:] if is_under(name, "glide_jax.modes") else DRIVERS[1:] if name == DRIVERS[0] else DRIVERS
    bad += [f"{name} -> {d}" for d in sorted(deps) if any(is_under(d, a) for a in above)]
  return bad


def test_libraries_import_no_driver():
  """Only modes/ (and scripts/, main.py) may build an Experiment; no library reaches up to a mode."""
  assert layering_violations(import_graph()) == []


def test_the_layering_check_catches_a_library_importing_a_driver():
  graph = {"glide_jax.sampling.guided": {"glide_jax.experiment"}, "glide_jax.modes.sample": {"glide_jax.experiment"},
           "glide_jax.editing.inputs": {"glide_jax.modes.edit", "glide_jax.modes"}, "glide_jax.experiment": set(),
           "glide_jax.modes.eval": {"glide_jax.modes.eval_edit", "glide_jax.cli"}}
  assert layering_violations(graph) == [
      "glide_jax.editing.inputs -> glide_jax.modes", "glide_jax.editing.inputs -> glide_jax.modes.edit",
      "glide_jax.modes.eval -> glide_jax.cli", "glide_jax.sampling.guided -> glide_jax.experiment"]


@pytest.mark.parametrize("name", sorted(module_files()))
def test_every_module_imports(name):
  importlib.import_module(name)
