"""Fixtures of the fault suite (small disks, fault specs) and the tally printed at the end of a run."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from faultkit import TALLY

from seg2sat import faults


def pytest_terminal_summary(terminalreporter) -> None:
    """The counts of this run: injection points survived / tried per fault and stage."""
    if not TALLY:
        return
    terminalreporter.section("fault suite: injection points survived / tried")
    for (fault, stage), (tried, survived) in sorted(TALLY.items()):
        terminalreporter.write_line(f"{fault:<16} {stage:<10} {survived:>4} / {tried}")


# ---------------------------------------------------------------------------------------------
# Small disks and fault specs
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path) -> Iterator[Callable[[str], Path]]:
    """mount(size) -> a fresh tmpfs of that size (e.g. "4m"), unmounted after the test (root only)."""
    if os.geteuid() != 0:
        pytest.skip("a real full disk needs a tmpfs, and mounting one needs root (CI runs as root)")
    mounted: list[Path] = []

    def mount(size: str) -> Path:
        point = tmp_path / f"disk{len(mounted)}"
        point.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(point)],
                              capture_output=True, text=True)
        if done.returncode:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
        mounted.append(point)
        return point

    try:
        yield mount
    finally:
        for point in reversed(mounted):
            subprocess.run(["umount", "-l", str(point)], check=False)


@pytest.fixture
def inject(monkeypatch) -> Callable[[str | None], None]:
    """inject(spec) sets SEG2SAT_FAULT for this process (None clears it) and restarts the counter."""

    def set_spec(spec: str | None) -> None:
        if spec is None:
            monkeypatch.delenv(faults.FAULT_ENV, raising=False)
        else:
            monkeypatch.setenv(faults.FAULT_ENV, spec)
        faults.reset()

    yield set_spec
    faults.reset()


