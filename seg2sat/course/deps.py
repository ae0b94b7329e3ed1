"""Optional dependencies of the course modules, imported lazily with a clear message."""

from __future__ import annotations

import importlib
from types import ModuleType

from seg2sat.errors import Seg2SatError

EXTRA = 'pip install -c constraints-cpu.txt -e ".[dev,course]"'


class CourseDependencyError(Seg2SatError):
    """An optional course package is missing."""


def need(module: str, package: str | None = None) -> ModuleType:
    """Import `module`, or raise naming the package and the install extra."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise CourseDependencyError(f"this lesson needs `{package or module}`; install the course extra: "
                                    f"{EXTRA}") from exc
