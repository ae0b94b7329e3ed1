"""The manifest of a mosaic (SQLite): one row per block with its state, attempts, outputs and checksums.

Written at planning; the driver is its only writer (workers return records). A rerun verifies
finished blocks by checksum and does only the rest. A write the disk refuses is a one-line
`WriteError` (SQLite rolls the transaction back: the file stays whole); a manifest file that is
no longer a sound database is set aside and planned again (`opened`), and a row whose state
makes no sense is redone (`verify`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from seg2sat import faults
from seg2sat.atomic import guard_writes, sha256_of
from seg2sat.scale.grid import Grid, block_id

log = logging.getLogger(__name__)
MANIFEST_NAME = "manifest.sqlite"
STATES = ("pending", "running", "generated", "empty", "done", "failed")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS blocks (
    id TEXT PRIMARY KEY, row INTEGER NOT NULL, col INTEGER NOT NULL,
    xmin REAL, ymin REAL, xmax REAL, ymax REAL,
    state TEXT NOT NULL DEFAULT 'pending', attempts INTEGER NOT NULL DEFAULT 0, seconds REAL,
    windows INTEGER, raw TEXT, raw_sha256 TEXT, output TEXT, sha256 TEXT, error TEXT);
CREATE INDEX IF NOT EXISTS blocks_state ON blocks(state);
"""


class Manifest:
    """One row per block; the driver is its only writer (workers return records)."""

    rebuilt = False  # set by `opened` when a damaged manifest was set aside for this one

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        with self.writing():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, timeout=60)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.executescript(_SCHEMA)

    @contextlib.contextmanager
    def writing(self) -> Iterator[None]:
        """A transaction's failed write (full disk, read-only folder) as a one-line `WriteError`.

        Each transaction is a write point of the fault suite (`seg2sat.faults`): a kill there
        is a driver dying before it records what it did.
        """
        with guard_writes(self.path.parent):
            faults.write_point(self.path, "start")
            faults.write_point(self.path, "commit")
            yield

    def sound(self) -> bool:
        """True when SQLite finds the database file whole and every row reads (damaged text does not decode)."""
        try:
            if self._db.execute("PRAGMA integrity_check(1)").fetchone()[0] != "ok":  # indexes too
                return False
            self._db.execute("SELECT * FROM meta").fetchall()
            self._db.execute("SELECT * FROM blocks").fetchall()
            return True
        except (sqlite3.DatabaseError, UnicodeDecodeError):  # damaged pages, or damaged text in them
            return False

    def close(self) -> None:
        """Close the database."""
        self._db.close()

    def get_meta(self, key: str) -> Any:
        """A JSON value stored at planning (None if absent)."""
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    def set_meta(self, **values: Any) -> None:
        """Store JSON values."""
        with self.writing(), self._db:
            self._db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)",
                                 [(k, json.dumps(v, default=str)) for k, v in values.items()])

    def add_blocks(self, grid: Grid, chunk: int = 50_000) -> int:
        """Insert every block of `grid` (streamed in chunks: memory stays bounded)."""
        def rows() -> Iterator[tuple[Any, ...]]:
            for r in range(grid.rows):
                for c in range(grid.cols):
                    yield (block_id(r, c), r, c, *grid.bounds(grid.core(r, c)))

        n = 0
        it = rows()
        while True:
            batch = [row for _, row in zip(range(chunk), it, strict=False)]
            if not batch:
                return n
            with self.writing(), self._db:
                self._db.executemany("INSERT OR IGNORE INTO blocks (id, row, col, xmin, ymin, xmax, ymax) "
                                     "VALUES (?, ?, ?, ?, ?, ?, ?)", batch)
            n += len(batch)

    def blocks(self, states: Iterable[str] | None = None, columns: str = "*") -> list[dict[str, Any]]:
        """Rows (as dicts), row-major, optionally only in `states` and only some `columns`."""
        cur = self._db.execute(f"SELECT {columns} FROM blocks" + (
            f" WHERE state IN ({','.join('?' * len(s))})" if (s := list(states or [])) else "") + " ORDER BY row, col",
            s)
        names = [d[0] for d in cur.description]
        return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]

    def counts(self) -> dict[str, int]:
        """Blocks per state."""
        return dict(self._db.execute("SELECT state, COUNT(*) FROM blocks GROUP BY state").fetchall())

    def update(self, bid: str, **fields: Any) -> None:
        """Set some columns of one block."""
        cols = ", ".join(f"{k} = ?" for k in fields)
        with self.writing(), self._db:
            self._db.execute(f"UPDATE blocks SET {cols} WHERE id = ?", [*fields.values(), bid])

    def bump_attempts(self, bid: str) -> None:
        """Count one more attempt at a block and mark it running."""
        with self.writing(), self._db:
            self._db.execute("UPDATE blocks SET attempts = attempts + 1, state = 'running' WHERE id = ?", (bid,))

    def release(self, bid: str, state: str) -> None:
        """Give a block back in `state` without counting the attempt (it stopped on a fault of the run, not its own)."""
        with self.writing(), self._db:
            self._db.execute("UPDATE blocks SET attempts = MAX(0, attempts - 1), state = ? WHERE id = ?", (state, bid))


def verify(manifest: Manifest, out_dir: Path) -> dict[str, int]:
    """Check finished blocks by checksum; anything missing, changed or half-done is redone.

    A block killed while running goes back to pending; a composed block whose COG is gone or
    differs goes back to `generated` (or pending if its raw block is bad too).
    """
    fixed = {"kept": 0, "redo": 0}
    for row in manifest.blocks(columns="id, state"):
        if row["state"] not in STATES:  # a damaged row: redo the block
            manifest.update(row["id"], state="pending", raw=None, raw_sha256=None, output=None, sha256=None)
            fixed["redo"] += 1
    for row in manifest.blocks(["running", "generated", "done"]):
        raw_ok = bool(row["raw"]) and _same(out_dir / row["raw"], row["raw_sha256"])
        if row["state"] == "done" and _same(out_dir / str(row["output"]), row["sha256"]) and raw_ok:
            fixed["kept"] += 1
            continue
        state = "generated" if raw_ok and row["state"] != "running" else "pending"
        if state == "pending":
            manifest.update(row["id"], state=state, raw=None, raw_sha256=None, output=None, sha256=None)
        else:
            manifest.update(row["id"], state=state, output=None, sha256=None)
        fixed["redo"] += 1
    return fixed


def _same(path: Path, sha: str | None) -> bool:
    return bool(sha) and path.is_file() and sha256_of(path) == sha


def _set_aside(path: Path) -> Path:
    """Move a damaged manifest (and its WAL files) out of the way; returns its new name."""
    aside = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}")
    for suffix in ("", "-wal", "-shm"):
        src = path.with_name(path.name + suffix)
        if src.exists():
            src.replace(aside.with_name(aside.name + suffix))
    return aside


@contextlib.contextmanager
def opened(path: Path) -> Iterator[Manifest]:
    """A manifest, closed after use; a damaged one is set aside and a new one started (`rebuilt`)."""
    try:
        m = Manifest(path)
        rebuilt = not m.sound()
    except (sqlite3.DatabaseError, UnicodeDecodeError):  # not a database at all (its header or schema is gone)
        m, rebuilt = None, True
    if rebuilt:
        if m is not None:
            m.close()
        log.warning("mosaic: %s is damaged; set aside as %s, planning again", path, _set_aside(path))
        m = Manifest(path)
    m.rebuilt = rebuilt
    try:
        yield m
    finally:
        m.close()
