"""The package's layers: a module's folder says what it may import, and imports run only downward.

Every import is read with `ast` (top-level and inside functions, absolute and relative), nothing
is imported. The rule, stated in docs/architecture.md:
- each folder of `seg2sat/` is a layer with a rank (LAYERS); the modules directly in `seg2sat/`
  are the ground (rank 0);
- a module imports only modules of its own layer or of a lower rank, and no import circle exists;
- the course imports the product; nothing outside `seg2sat/course/` imports the course;
- at most 10 modules directly in `seg2sat/`, and no function longer than 60 lines.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "seg2sat"
# Lowest first. evaluation sits under training: the reward fine-tune trains against a frozen
# segmenter. serving (the app's functions) sits over the stages it runs (the Batch page runs
# `infer`, the build button runs `demo`), as the command line does. The course is on top.
LAYERS = ("", "geo", "data", "generation", "evaluation", "training", "scale", "synthesis", "search", "stages", "serving",
          "course")
RANK = {name: i for i, name in enumerate(LAYERS)}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path, name: str, known: set[str]) -> set[str]:
    """The package modules `path` imports anywhere in it (a `from x import y` of a module counts y)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names}
    return {m for m in found if m in known and m != name}


def _graph() -> dict[str, set[str]]:
    paths = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    known = set(paths)
    return {name: _imports(path, name, known) for name, path in paths.items()}


def layer_of(module: str) -> str:
    """'' for a ground module (and the package itself), else the folder under seg2sat/."""
    parts = module.split(".")
    return parts[1] if len(parts) > 2 else ""


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """Imports from a lower layer to a higher one, and any import of the course from outside it."""
    bad = []
    for module, deps in graph.items():
        for dep in deps:
            if RANK[layer_of(dep)] > RANK[layer_of(module)]:
                bad.append(f"{module} -> {dep}")
            elif layer_of(dep) == "course" and layer_of(module) != "course":
                bad.append(f"{module} -> {dep} (the product never imports the course)")
    return sorted(bad)


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def long_functions(limit: int = 60) -> list[str]:
    out = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > limit:
                out.append(f"{_module_name(path)}.{node.name} ({node.end_lineno - node.lineno + 1} lines)")
    return sorted(out)


def test_every_folder_is_a_layer():
    folders = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert folders <= set(LAYERS), f"place these folders in LAYERS: {sorted(folders - set(LAYERS))}"


def test_imports_run_only_downward_and_never_into_the_course():
    assert upward_imports(_graph()) == []


def test_no_import_circle():
    assert cycles(_graph()) == []


def test_at_most_ten_modules_on_the_ground_and_no_long_function():
    ground = sorted(p.name for p in PACKAGE.glob("*.py") if p.name != "__init__.py")
    assert len(ground) <= 10, ground
    assert long_functions() == []


@pytest.mark.parametrize(("graph", "expected"), [
    ({"seg2sat.labels": {"seg2sat.geo.raster"}, "seg2sat.geo.raster": set()}, ["seg2sat.labels -> seg2sat.geo.raster"]),
    ({"seg2sat.scale.plan": {"seg2sat.course.deps"}, "seg2sat.course.deps": set()},
     ["seg2sat.scale.plan -> seg2sat.course.deps"]),
    ({"seg2sat.course.agent": {"seg2sat.search.index"}, "seg2sat.search.index": set()}, []),
])
def test_the_rule_sees_an_upward_import(graph, expected):
    assert upward_imports(graph) == expected


def test_the_rule_sees_a_circle_through_a_function_level_import(tmp_path):
    a = tmp_path / "seg2sat" / "data" / "a.py"
    a.parent.mkdir(parents=True)
    a.write_text("def f():\n    from seg2sat.data.b import g\n")
    (a.parent / "b.py").write_text("from .a import f\n")
    known = {"seg2sat.data.a", "seg2sat.data.b"}
    graph = {m: _imports(tmp_path / (m.replace(".", "/") + ".py"), m, known) for m in known}
    assert graph == {"seg2sat.data.a": {"seg2sat.data.b"}, "seg2sat.data.b": {"seg2sat.data.a"}}
    assert cycles(graph) == [["seg2sat.data.a", "seg2sat.data.b"]]
