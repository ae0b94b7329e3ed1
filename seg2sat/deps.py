"""Optional dependencies, imported when first needed, with an error that says which extra installs them."""

from __future__ import annotations

import importlib
from types import ModuleType

from seg2sat.errors import Seg2SatError


class DependencyError(Seg2SatError):
    """An optional package is missing."""


def install_command(extras: str) -> str:
    """The install command of the README with these extras (CPU torch pinned)."""
    return f'pip install -c constraints-cpu.txt -e ".[{extras}]"'


def need(module: str, package: str | None = None, extra: str = "search", what: str = "this feature",
         extras: str | None = None) -> ModuleType:
    """Import `module`, or raise naming the package and the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise DependencyError(f"{what} needs `{package or module}`; install the {extra} extra: "
                              f"{install_command(extras or extra)}") from exc
