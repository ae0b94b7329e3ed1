"""The output grid of a mosaic: a global lattice of blocks, so a place always falls in the same block.

The grid is fixed by CRS, resolution and an origin snapped to a lattice of `block` pixels
(pixel (0, 0) of the lattice is the CRS origin): the same place always falls in the same block
and draws the same noise, whatever the extent of the run. Each block is generated over its core
plus a `halo` on every side.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from affine import Affine

from seg2sat.errors import ConfigError


@dataclass(frozen=True)
class Grid:
    """The output grid on a global lattice: pixel (row, col) has its top-left at (col*res, -row*res).

    `row0`, `col0` are the lattice indices of the grid's top-left pixel (multiples of `block`);
    `width` and `height` are whole blocks.
    """

    crs: str
    res: float
    row0: int
    col0: int
    width: int
    height: int
    block: int
    halo: int

    @property
    def transform(self) -> Affine:
        """North-up transform of the whole grid."""
        return Affine(self.res, 0, self.col0 * self.res, 0, -self.res, -self.row0 * self.res)

    @property
    def rows(self) -> int:
        """Blocks down."""
        return self.height // self.block

    @property
    def cols(self) -> int:
        """Blocks across."""
        return self.width // self.block

    def window_transform(self, r0: int, c0: int) -> Affine:
        """Transform of a window whose top-left is grid pixel (r0, c0)."""
        return self.transform * Affine.translation(c0, r0)

    def core(self, row: int, col: int) -> tuple[int, int, int, int]:
        """(r0, c0, r1, c1) grid pixels of a block's core."""
        b = self.block
        return row * b, col * b, (row + 1) * b, (col + 1) * b

    def ext(self, row: int, col: int) -> tuple[int, int, int, int]:
        """The core grown by the halo, clipped to the grid."""
        r0, c0, r1, c1 = self.core(row, col)
        h = self.halo
        return max(0, r0 - h), max(0, c0 - h), min(self.height, r1 + h), min(self.width, c1 + h)

    def bounds(self, window: tuple[int, int, int, int]) -> tuple[float, float, float, float]:
        """(xmin, ymin, xmax, ymax) of a (r0, c0, r1, c1) window."""
        r0, c0, r1, c1 = window
        x0, y0 = self.transform * (c0, r0)
        x1, y1 = self.transform * (c1, r1)
        return x0, y1, x1, y0

    def to_dict(self) -> dict[str, Any]:
        """Plain values (stored in the manifest, sent to workers)."""
        return asdict(self)


def block_id(row: int, col: int) -> str:
    """Stable block name: `r00012_c00034`."""
    return f"r{row:05d}_c{col:05d}"


def plan_grid(bounds: tuple[float, float, float, float], crs: str, res: float, block: int, halo: int,
              tile: int) -> Grid:
    """The grid of whole blocks on the global lattice covering `bounds` (CRS units).

    Raises:
        ConfigError: a block or halo that is not a multiple of the tile, or empty bounds.
    """
    if block % tile or halo % tile or block < tile:
        raise ConfigError(f"block={block} and halo={halo} must be multiples of the tile {tile} (block >= tile): "
                          "the noise is drawn per tile at global positions")
    if halo > block:
        raise ConfigError(f"halo={halo} is larger than block={block}: a halo reaches one neighbour only")
    xmin, ymin, xmax, ymax = bounds
    if not (xmax > xmin and ymax > ymin):
        raise ConfigError(f"empty extent {bounds}")
    size = res * block
    bc0, bc1 = math.floor(xmin / size + 1e-9), math.ceil(xmax / size - 1e-9)
    br0, br1 = math.floor(-ymax / size + 1e-9), math.ceil(-ymin / size - 1e-9)
    return Grid(crs=crs, res=float(res), row0=br0 * block, col0=bc0 * block, width=(bc1 - bc0) * block,
                height=(br1 - br0) * block, block=int(block), halo=int(halo))


def neighbour_ids(grid: Grid, row: int, col: int) -> list[str]:
    """This block and the up to 8 around it."""
    return [block_id(row + dr, col + dc) for dr in (-1, 0, 1) for dc in (-1, 0, 1)
            if 0 <= row + dr < grid.rows and 0 <= col + dc < grid.cols]
