"""Optional dependencies of the course modules, imported lazily with a clear message."""

from __future__ import annotations

from types import ModuleType

from seg2sat import deps

CourseDependencyError = deps.DependencyError


def need(module: str, package: str | None = None) -> ModuleType:
    """Import `module`, or raise naming the package and the course extra."""
    return deps.need(module, package, extra="course", what="this lesson", extras="dev,course")
