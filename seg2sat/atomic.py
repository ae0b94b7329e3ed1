"""Atomic, checked writes: an output appears under its final name only when it is complete.

Every stage writes through these helpers, so a killed run never leaves a file or folder
that looks finished, and a failed write never does either:
1. the data goes to a temp sibling (`.tmp-*`, swept on the next run);
2. a write that fails, whatever library made it (Python, PIL, GDAL, safetensors, torch,
   SQLite), becomes one `WriteError` naming the folder: `DiskFullError` with about how much the
   run needs when the disk is full, a read-only or I/O error otherwise (`guard_writes`);
3. an optional `check` reads the temp file back before the rename (GDAL does not raise when
   libtiff runs out of space on close: the check finds the truncated file);
4. completion marks (sidecars, indexes, checkpoints) are `durable`: fsynced before the rename;
5. the rename, and the temp file removed on any error.
`check_space` is the pre-flight: a run refuses to start on a folder it cannot write or that
clearly lacks the space its outputs need. `seg2sat.faults` injects full disks and kills here.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from seg2sat import faults
from seg2sat.errors import DiskFullError, Seg2SatError, WriteError

TMP_PREFIX = ".tmp-"
LOW_SPACE = 1 << 20  # free bytes under which a failed write is put down to a full disk
SHORT_FRACTION = 0.25  # the pre-flight refuses when less than this share of the estimate is free

# Output folder -> bytes its run expects to write (`check_space`): a disk that fills up anyway
# reports the run's need, under the run's folder, not the need of the one write that failed.
_EXPECTED: dict[Path, int] = {}
_FULL_TEXT = ("no space left on device", "storagefull", "os error 28", "database or disk is full",
              "disk quota exceeded")
_READ_ONLY_TEXT = ("read-only file system", "readonly database", "os error 30")


def _tmp_sibling(path: Path) -> Path:
    # Same folder (same filesystem) so os.replace is atomic; keep the suffix so that
    # libraries that pick a format from the extension (PIL, GDAL) still do.
    return path.with_name(f"{TMP_PREFIX}{uuid.uuid4().hex[:8]}-{path.name}")


# ---------------------------------------------------------------------------------------------
# Space and write errors
# ---------------------------------------------------------------------------------------------


def free_bytes(folder: str | Path) -> int:
    """Free bytes (for this user) on the file system that holds `folder` or its nearest existing parent."""
    folder = Path(folder).absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return shutil.disk_usage(folder).free


def size_of(path: str | Path) -> int:
    """Bytes of a file, or of every file under a folder (0 if absent)."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else 0


def sha256_of(path: str | Path) -> str:
    """Hex SHA-256 of a file (read in 1 MiB chunks): the checksum every completion record holds."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _megabytes(n: int) -> str:
    return f"{n / 1e6:.1f}" if n < 10e6 else f"{n / 1e6:.0f}"


def _run_folder(folder: Path) -> tuple[Path, int]:
    """The output folder of the run `folder` belongs to, and the bytes that run expects (0 if none)."""
    folder = folder.absolute()
    for root in (folder, *folder.parents):
        if root in _EXPECTED:
            return root, _EXPECTED[root]
    return folder, 0


def disk_full(folder: str | Path, needed: int | None = None) -> DiskFullError:
    """The one-line error of a full disk: `<output folder>: no space left on device (needs about N MB)`.

    N is the run's estimate (`check_space`) or the write's; with neither, the `LOW_SPACE` a write needs.
    """
    root, expected = _run_folder(Path(folder))
    need = max(needed or 0, expected) or LOW_SPACE
    return DiskFullError(f"{root}: no space left on device (needs about {_megabytes(need)} MB)")


def write_failure(exc: BaseException, folder: Path, needed: int | None = None) -> WriteError | None:
    """The one-line `WriteError` a failed write stands for, or None when `exc` is no write failure.

    Libraries report a full disk in their own words (an errno, "StorageFull", "database or
    disk is full", "file write failed"): an OSError's errno decides where there is one, the
    text otherwise; an I/O error that gives no reason
    (GDAL's "Failed to create mask") on a nearly full disk is a full disk.
    """
    if isinstance(exc, Seg2SatError) or not isinstance(exc, Exception):
        return None
    text, code = str(exc).lower(), getattr(exc, "errno", None)
    if code in (errno.ENOSPC, errno.EDQUOT) or any(t in text for t in _FULL_TEXT):
        return disk_full(folder, needed)
    if code == errno.EROFS or any(t in text for t in _READ_ONLY_TEXT):
        return WriteError(f"{folder}: read-only file system; cannot write there")
    if code in (errno.EACCES, errno.EPERM):
        return WriteError(f"{folder}: permission denied; cannot write there")
    vague = "write" in text or "i/o error" in text or type(exc).__name__.lower().endswith("ioerror")
    if vague and free_bytes(folder) < LOW_SPACE:
        return disk_full(folder, needed)
    if code == errno.EIO or "disk i/o error" in text:
        return WriteError(f"{folder}: I/O error while writing ({exc})")
    return None


@contextlib.contextmanager
def guard_writes(folder: str | Path, needed: int | None = None) -> Iterator[None]:
    """Turn a failed write inside the block into a one-line `WriteError` naming `folder`.

    For writes that are not a file of ours (a SQLite database, accelerate's checkpoint files,
    an appended record); `atomic_path` and `atomic_dir` guard their writes themselves.
    """
    try:
        yield
    except Exception as exc:
        failure = write_failure(exc, Path(folder), needed)
        if failure is None:
            raise
        raise failure from exc


def check_space(folder: str | Path, needed: int, probe: bool = True) -> int:
    """Pre-flight of a run: refuse a folder it cannot write or that clearly lacks space; returns free bytes.

    `needed` is the run's estimate of what it will write (uncompressed sizes: an upper bound),
    remembered so that a disk that fills up anyway reports it. "Clearly" lacking is less than
    `SHORT_FRACTION` of it free: compression makes the real need smaller, never larger.
    `probe` creates the folder and a file in it to prove it writable (a dry run writes nothing).

    Raises:
        DiskFullError: too little free space. WriteError: a read-only or unwritable folder.
    """
    folder = Path(folder)
    if probe:
        marker = folder / f"{TMP_PREFIX}probe-{uuid.uuid4().hex[:8]}"
        with guard_writes(folder, needed):
            folder.mkdir(parents=True, exist_ok=True)
            marker.write_bytes(b"")
            marker.unlink()
    if needed:
        _EXPECTED[folder.absolute()] = int(needed)
    return _room_for(folder, needed)


def _room_for(folder: Path, needed: int) -> int:
    """Free bytes of `folder`; `DiskFullError` when clearly less than `needed` (see `SHORT_FRACTION`)."""
    free = free_bytes(folder)
    if free < needed * SHORT_FRACTION:
        raise disk_full(folder, needed)
    return free


def space_line(folder: str | Path, needed: int) -> str:
    """The dry run's line about space: what the outputs need and what the folder has free."""
    free = free_bytes(folder)
    verdict = "clearly too little: the run would refuse to start" if free < needed * SHORT_FRACTION else (
        "may be short (the estimate is uncompressed)" if free < needed else "enough")
    return f"output    about {_megabytes(needed)} MB to write in {folder}; {_megabytes(free)} MB free ({verdict})"


# ---------------------------------------------------------------------------------------------
# Atomic writes
# ---------------------------------------------------------------------------------------------


def fsync_path(path: Path) -> None:
    """Flush a file, or every file of a folder and the folder itself, to the disk."""
    paths = [path] if path.is_file() else [*sorted(p for p in path.rglob("*") if p.is_file()), path]
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _check_written(path: Path, tmp: Path, check: Callable[[Path], None], needed: int | None) -> None:
    """Run `check` on a temp file; a failure is a full disk when the disk is (nearly) full."""
    try:
        check(tmp)
    except Exception as exc:
        if free_bytes(path.parent) < LOW_SPACE:
            raise disk_full(path.parent, needed) from exc
        raise WriteError(f"{path}: not written whole ({exc})") from exc


@contextlib.contextmanager
def atomic_path(path: str | Path, *, needed: int | None = None, check: Callable[[Path], None] | None = None,
                durable: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling path; on success check it and rename it to `path`, on error delete it.

    Args:
        path: the final name.
        needed: about how many bytes the write takes (for the full-disk message).
        check: reads the temp file back and raises if it is incomplete (before the rename).
        durable: fsync the file before the rename and the folder after (a completion mark).
    """
    path = Path(path)
    tmp = _tmp_sibling(path)
    try:
        with guard_writes(path.parent, needed):
            path.parent.mkdir(parents=True, exist_ok=True)
            faults.write_point(path, "start")
            # Refuse a write that clearly cannot fit before a library starts it: libtiff meeting
            # ENOSPC mid-file can corrupt its heap and abort the process (the fault suite's
            # strata.tif case), so the one-line error must come first.
            if needed:
                _room_for(path.parent, needed)
            yield tmp
            if check is not None:
                _check_written(path, tmp, check, needed)
            if durable:
                fsync_path(tmp)
            faults.write_point(path, "commit")
            os.replace(tmp, path)
            if durable:
                fsync_path(path.parent)
    except BaseException:
        with contextlib.suppress(OSError):  # gone already, or a read-only folder: the error above is the one to tell
            tmp.unlink()
        raise


def _swap_in(tmp: Path, path: Path, overwrite: bool) -> None:
    if not path.exists():
        os.replace(tmp, path)
        return
    if not overwrite:
        raise FileExistsError(f"{path}: already exists (pass overwrite=True to replace it)")
    old = _tmp_sibling(path)
    os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_dir(path: str | Path, overwrite: bool = False, *, needed: int | None = None,
               durable: bool = False) -> Iterator[Path]:
    """Yield a temporary folder; on success rename it to `path` (a checkpoint, a model folder).

    A failed write inside becomes a `WriteError` as in `atomic_path`; `durable` fsyncs every
    file and the folder before the rename.
    """
    path = Path(path)
    tmp = _tmp_sibling(path)
    try:
        with guard_writes(path.parent, needed):
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp.mkdir()
            faults.write_point(path, "start")
            yield tmp
            if durable:
                fsync_path(tmp)
            faults.write_point(path, "commit")
            _swap_in(tmp, path, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def append_line(fh: BinaryIO, path: Path, line: bytes) -> None:
    """Append one whole line to a log opened unbuffered (`open(path, "ab", buffering=0)`).

    A line is a completion mark (a prepared tile's record): if the write fails part way (a full
    disk), the part written is cut off again, so the log never holds half a line it could show.
    """
    start = fh.seek(0, os.SEEK_END)
    try:
        with guard_writes(path.parent, len(line)):
            faults.write_point(path, "start")
            faults.write_point(path, "commit")  # a kill here: the line not written at all
            view = memoryview(line)
            while view:
                view = view[fh.write(view):]
    except BaseException:
        with contextlib.suppress(OSError):
            os.ftruncate(fh.fileno(), start)
        raise


def write_bytes(path: str | Path, data: bytes, durable: bool = False) -> Path:
    """Write bytes atomically."""
    with atomic_path(path, needed=len(data), durable=durable) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: str | Path, text: str, durable: bool = False) -> Path:
    """Write text atomically (`durable`: fsynced, for a file that marks something finished)."""
    return write_bytes(path, text.encode("utf-8"), durable)


def write_json(path: str | Path, obj: Any, durable: bool = False) -> Path:
    """Write JSON atomically (UTF-8, indented, keys in insertion order)."""
    return write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n", durable)


def sweep_tmp(folder: str | Path, name: str | None = None) -> int:
    """Delete leftovers of killed runs (`.tmp-*`) directly under `folder`; returns how many.

    `name` sweeps only the leftovers of that one output (safe beside other processes writing theirs).
    """
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    n = 0
    for p in folder.glob(f"{TMP_PREFIX}*" if name is None else f"{TMP_PREFIX}*-{name}"):
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
        n += 1
    return n
