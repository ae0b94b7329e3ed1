"""docs/architecture.md's module table is generated from the tree; this test keeps it true.

Refresh it after adding, removing or re-describing a module: `python tests/test_docs.py`.
Each row is a module of `seg2sat/`, the first line of its docstring, and the package modules
it imports (read with `ast`, nothing is imported).
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "architecture.md"
START, END = "<!-- modules:start -->", "<!-- modules:end -->"


def _imports(tree: ast.Module) -> list[str]:
    """The `seg2sat` modules a module imports (anywhere in it), as short dotted names."""
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("seg2sat"):
            base = node.module.removeprefix("seg2sat").lstrip(".")
            names = [base] if base else [alias.name for alias in node.names]
            found.update(n for n in names if n)
        elif isinstance(node, ast.Import):
            found.update(a.name.removeprefix("seg2sat.") for a in node.names if a.name.startswith("seg2sat."))
    return sorted(found)


def module_table() -> str:
    """The Markdown table of every documented module of the package."""
    rows = ["| module | what it is for | imports from seg2sat |", "| --- | --- | --- |"]
    for path in sorted((ROOT / "seg2sat").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        doc = ast.get_docstring(tree)
        if not doc:  # empty package markers
            continue
        name = path.relative_to(ROOT).as_posix()
        own = name.removeprefix("seg2sat/").removesuffix(".py").replace("/", ".")
        deps = ", ".join(d for d in _imports(tree) if d != own) or "-"
        rows.append(f"| `{name}` | {doc.splitlines()[0].replace('|', '/')} | {deps} |")
    return "\n".join(rows)


def _current() -> str:
    text = DOC.read_text(encoding="utf-8")
    return text[text.index(START) + len(START):text.index(END)].strip()


def test_architecture_lists_every_module_as_it_is():
    assert _current() == module_table(), "docs/architecture.md is stale: run `python tests/test_docs.py`"


def test_the_table_sees_a_module_and_its_imports():
    table = module_table()
    assert "| `seg2sat/generation/sampling.py` | One sampling contract for `infer`, `mosaic`, the app and evaluation. |" \
        in table
    row = next(r for r in table.splitlines() if r.startswith("| `seg2sat/hints.py`"))
    assert row.endswith("| errors, labels |")
    row = next(r for r in table.splitlines() if r.startswith("| `seg2sat/geo/geotiff.py`"))
    assert row.endswith("| atomic, errors, geo.raster, geo.tiff |")


if __name__ == "__main__":
    text = DOC.read_text(encoding="utf-8")
    new = text[:text.index(START) + len(START)] + "\n" + module_table() + "\n" + text[text.index(END):]
    DOC.write_text(new, encoding="utf-8")
    print(f"{DOC}: {len(module_table().splitlines()) - 2} modules", file=sys.stderr)
