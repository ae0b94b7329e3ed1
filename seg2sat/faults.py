"""Fault injection: fill the disk or SIGKILL the process at a chosen write or progress point.

The fault suite (`tests/faults/`, docs/reliability.md) makes every write meet a real full disk
and kills stages at moments taken from their own progress, the way SQLite tests its I/O. It is
off unless `SEG2SAT_FAULT` is set, and then costs a dictionary lookup per point.

`SEG2SAT_FAULT` holds comma-separated `<action>@<point>:<n>`:
- `fill@write:3`: when the 3rd checked write of this process starts (`seg2sat.atomic`), fill
  the file system of its folder, so the write meets a real "No space left on device". Only a
  small file system (a test tmpfs) is ever filled;
- `kill@write:3`: SIGKILL once the 3rd write's temp file is complete, just before its rename;
- `kill@<point>:<n>`: SIGKILL when a stage reports progress `n` (or more) at `point` (`progress`):
  `infer.window`, `infer.file`, `prepare.tile`, `train.step`, `cache.shard`, `judge.step`,
  `mosaic.block`, `mosaic.compose`, `synthesize.tile`.
`SEG2SAT_FAULT_LOG=<file>` appends every point reached, one per line (`write <n> <path>`,
`<point> <n>`), so the suite counts a stage's injection points from one clean run.
In-process tests register callbacks on progress points with `on_progress`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
from collections.abc import Callable, Iterator
from pathlib import Path

FAULT_ENV = "SEG2SAT_FAULT"
LOG_ENV = "SEG2SAT_FAULT_LOG"
FILLER_PREFIX = ".fault-fill-"
FILL_LIMIT = 256 << 20  # never fill a file system larger than this (a test tmpfs is ~1 MB)

_state: dict[str, object] = {"spec": None, "writes": 0}
_started: dict[str, int] = {}  # path -> the number its write started with
_callbacks: dict[str, list[Callable[[int], None]]] = {}


def _plan() -> dict[str, dict[str, int]]:
    """{action: {point: n}} from the environment; the write counter restarts when the spec changes."""
    spec = os.environ.get(FAULT_ENV, "")
    if spec != _state["spec"]:
        _state.update(spec=spec, writes=0)
    plan: dict[str, dict[str, int]] = {}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        action, _, where = item.partition("@")
        point, _, n = where.rpartition(":")
        plan.setdefault(action, {})[point] = int(n)
    return plan


def reset() -> None:
    """Restart the write counter (an in-process test running a stage twice with one spec)."""
    _state["writes"] = 0
    _started.clear()


def _log(line: str) -> None:
    path = os.environ.get(LOG_ENV)
    if path:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(line + "\n")


def kill() -> None:
    """SIGKILL this process: no cleanup, no `finally`, exactly what a crash or the OOM killer does."""
    os.kill(os.getpid(), signal.SIGKILL)


def fill_disk(folder: Path) -> Path:
    """Fill the file system holding `folder` with a `.fault-fill-<pid>` file; returns it.

    Refuses a file system over `FILL_LIMIT`: the suite mounts a small tmpfs for this.
    """
    folder.mkdir(parents=True, exist_ok=True)
    total = shutil.disk_usage(folder).total
    if total > FILL_LIMIT:
        raise RuntimeError(f"{folder}: refusing to fill a {total >> 20} MiB file system (faults fill a small tmpfs only)")
    filler = folder / f"{FILLER_PREFIX}{os.getpid()}"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        for size in (1 << 16, 1 << 12, 1):  # big chunks, then the last pages and bytes
            with contextlib.suppress(OSError):
                while os.write(fd, b"\0" * size):
                    pass
    finally:
        os.close(fd)
    return filler


def write_point(path: Path, phase: str) -> None:
    """A checked write of `path` reaches `phase` ("start", or "commit" just before the rename)."""
    plan = _plan()
    if not plan and not os.environ.get(LOG_ENV):
        return
    if phase == "start":
        _state["writes"] = n = int(_state["writes"]) + 1  # type: ignore[call-overload]
        _started[str(path)] = n  # a folder's commit comes after the writes inside it
        _log(f"write {n} {path}")
        if plan.get("fill", {}).get("write") == n:
            fill_disk(path.parent)
    elif plan.get("kill", {}).get("write") == _started.get(str(path), _state["writes"]):
        kill()


def progress(point: str, n: int) -> None:
    """A stage reached progress `n` at `point` (n counts from 1): log, call back, or be killed there."""
    for callback in _callbacks.get(point, []):
        callback(n)
    plan = _plan()
    if not plan and not os.environ.get(LOG_ENV):
        return
    _log(f"{point} {n}")
    at = plan.get("kill", {}).get(point)
    if at is not None and n >= at:  # progress may move by more than one (windows go in batches)
        kill()


@contextlib.contextmanager
def on_progress(point: str, callback: Callable[[int], None]) -> Iterator[None]:
    """Call `callback(n)` at every progress report of `point` inside the block (in-process tests)."""
    _callbacks.setdefault(point, []).append(callback)
    try:
        yield
    finally:
        _callbacks[point].remove(callback)

