"""A TIFF's directories and block offsets read from its header: is a written file whole?

libtiff may run out of space on close without GDAL raising, leaving a file whose directories
or blocks point past its end; reading the header's offsets (struct, no GDAL) finds that.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

from seg2sat.errors import RasterError

_TIFF_TYPES = {3: "H", 4: "I", 16: "Q"}  # SHORT, LONG, LONG8: the types of offsets and byte counts


_TIFF_BLOCK_TAGS = ((273, 279), (324, 325))  # (StripOffsets, StripByteCounts), (TileOffsets, TileByteCounts)


def _tiff_values(fh: Any, end: str, big: bool, entry: bytes) -> list[int]:
    """The integers of one IFD entry (inline, or at the offset it points to)."""
    kind, count = struct.unpack(end + ("HQ" if big else "HI"), entry[2:12 if big else 8])[0:2]
    if kind not in _TIFF_TYPES or count > 1 << 24:
        raise ValueError(f"unexpected type {kind} or count {count} for block offsets")
    fmt = end + _TIFF_TYPES[kind] * count
    size, inline = struct.calcsize(fmt), entry[12:20] if big else entry[8:12]
    if size <= len(inline):
        return list(struct.unpack(fmt, inline[:size]))
    fh.seek(struct.unpack(end + ("Q" if big else "I"), inline)[0])
    data = fh.read(size)
    if len(data) != size:
        raise ValueError("block offsets past the end of the file")
    return list(struct.unpack(fmt, data))


def _tiff_ifd_blocks(fh: Any, end: str, big: bool, offset: int) -> tuple[list[tuple[int, int]], int]:
    """The (offset, byte count) of every block of the IFD at `offset`, and the next IFD's offset."""
    fh.seek(offset)
    head = fh.read(8 if big else 2)
    n = struct.unpack(end + ("Q" if big else "H"), head)[0]
    width = 20 if big else 12
    raw = fh.read(n * width + (8 if big else 4))
    if len(head) < (8 if big else 2) or len(raw) != n * width + (8 if big else 4) or n > 4096:
        raise ValueError(f"directory at byte {offset} is cut short")
    entries = {struct.unpack(end + "H", raw[i:i + 2])[0]: raw[i:i + width] for i in range(0, n * width, width)}
    blocks: list[tuple[int, int]] = []
    for offsets_tag, counts_tag in _TIFF_BLOCK_TAGS:
        if offsets_tag in entries and counts_tag in entries:
            blocks += zip(_tiff_values(fh, end, big, entries[offsets_tag]),
                          _tiff_values(fh, end, big, entries[counts_tag]), strict=True)
    return blocks, struct.unpack(end + ("Q" if big else "I"), raw[-(8 if big else 4):])[0]


def check_tiff_blocks(path: str | Path) -> None:
    """Refuse a TIFF whose directories or blocks (every level, masks included) lie past its end.

    Raises:
        RasterError: not a TIFF, a directory cut short, or a block beyond the end of the file.
    """
    path = Path(path)
    size = path.stat().st_size
    try:
        with open(path, "rb") as fh:
            head = fh.read(16)
            end = {b"II": "<", b"MM": ">"}.get(head[:2])
            if end is None or len(head) < 8:
                raise ValueError("not a TIFF header")
            big = struct.unpack(end + "H", head[2:4])[0] == 43
            offset = struct.unpack(end + "Q", head[8:16])[0] if big else struct.unpack(end + "I", head[4:8])[0]
            seen: set[int] = set()
            while offset:
                if offset in seen or offset >= size or len(seen) > 4096:
                    raise ValueError(f"directory at byte {offset} of a {size}-byte file")
                seen.add(offset)
                blocks, offset = _tiff_ifd_blocks(fh, end, big, offset)
                cut = [o + n for o, n in blocks if n and o + n > size]
                if cut:
                    raise ValueError(f"a block ends at byte {max(cut)} of a {size}-byte file")
    except (ValueError, struct.error) as exc:
        raise RasterError(f"{path}: truncated or corrupt TIFF: {exc}") from exc
