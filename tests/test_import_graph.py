"""The package's layering, read from its modules' imports (function-local ones too): no cycle between modules,
and no import running back up a layer.

Layers, bottom up (docs/design.md): errors; core (the math) and storage; models, samplers, data and interop; objectives;
engine (an experiment's compiled functions, checkpoints, metrics); evals; run (the command line's modes and the
loop). A package may import its own modules and any lower layer's.
"""

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "md4_jax"
LAYERS = (("errors", "parts"), ("core", "storage", "schedules"), ("models", "samplers", "data", "interop"), ("objectives",),
          ("engine",), ("evals",), ("run",))
LAYER_OF = {part: level for level, parts in enumerate(LAYERS) for part in parts}


def module_name(path: pathlib.Path, root: pathlib.Path = PACKAGE) -> str:
  parts = ("md4_jax", *path.relative_to(root).with_suffix("").parts)
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(root: pathlib.Path = PACKAGE) -> dict[str, set[str]]:
  """{module: the md4_jax modules it imports}; `from md4_jax.x import y` imports x.y when y is a module, else x."""
  modules = {module_name(path, root): path for path in root.rglob("*.py")}
  graph = {}
  for name, path in modules.items():
    targets = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
      if isinstance(node, ast.Import):
        targets.update(alias.name for alias in node.names if alias.name.startswith("md4_jax"))
      elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("md4_jax"):
        for alias in node.names:
          child = f"{node.module}.{alias.name}"
          targets.add(child if child in modules else node.module)
    graph[name] = {target for target in targets if target in modules and target != name}
  return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
  """Every strongly connected group of more than one module (Tarjan), each sorted."""
  index, low, stack, on_stack, found, counter = {}, {}, [], set(), [], [0]

  def visit(node):
    index[node] = low[node] = counter[0]
    counter[0] += 1
    stack.append(node)
    on_stack.add(node)
    for target in sorted(graph.get(node, ())):
      if target not in index:
        visit(target)
        low[node] = min(low[node], low[target])
      elif target in on_stack:
        low[node] = min(low[node], index[target])
    if low[node] == index[node]:
      group = []
      while True:
        member = stack.pop()
        on_stack.discard(member)
        group.append(member)
        if member == node:
          break
      if len(group) > 1:
        found.append(sorted(group))

  for node in sorted(graph):
    if node not in index:
      visit(node)
  return found


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
  """'a -> b' for each import of a higher layer's module (the package root and its shims are exempt as targets)."""
  def layer(module):
    parts = module.split(".")
    return LAYER_OF.get(parts[1]) if len(parts) > 1 else None

  return sorted(f"{source} -> {target}" for source, targets in graph.items() for target in targets
                if layer(source) is not None and layer(target) is not None and layer(target) > layer(source))


def test_every_package_has_a_layer():
  names = {path.stem if path.is_file() else path.name for path in PACKAGE.iterdir()
           if path.suffix == ".py" and path.stem != "__init__" or path.is_dir() and (path / "__init__.py").exists()}
  assert names == set(LAYER_OF), "place a new package in LAYERS (and in docs/design.md's picture)"


def test_the_package_has_no_import_cycle():
  assert cycles(import_graph()) == []


def test_no_module_imports_a_higher_layer():
  assert upward_imports(import_graph()) == []


def test_the_checks_find_a_cycle_and_an_upward_import():
  graph = {"md4_jax.core.a": {"md4_jax.core.b"}, "md4_jax.core.b": {"md4_jax.core.a"},
           "md4_jax.models.c": {"md4_jax.run.d", "md4_jax.core.a"}, "md4_jax.run.d": set()}
  assert cycles(graph) == [["md4_jax.core.a", "md4_jax.core.b"]]
  assert upward_imports(graph) == ["md4_jax.models.c -> md4_jax.run.d"]


@pytest.mark.parametrize("source", ["from md4_jax.engine import pictures", "import md4_jax.engine.pictures"])
def test_the_graph_reads_both_import_forms(tmp_path, source):
  root = tmp_path / "md4_jax"
  for folder in ("data", "engine"):
    (root / folder).mkdir(parents=True)
    (root / folder / "__init__.py").write_text("")
  (root / "__init__.py").write_text("")
  (root / "engine" / "pictures.py").write_text("")
  (root / "data" / "modality.py").write_text(f"def late():\n  {source}\n")  # a function-local import counts
  graph = {module: targets for module, targets in import_graph(root).items() if targets}
  assert graph == {"md4_jax.data.modality": {"md4_jax.engine.pictures"}}
