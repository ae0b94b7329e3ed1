"""The window grid of tiled generation: where windows sit, how they blend, what noise each block draws.

Windows of `tile` pixels overlap by `overlap`; their predictions are blended with weights that
ramp down across the overlap (`ramp`). Initial noise is drawn per block of the latent grid from
a generator seeded by (seed, block row, block column), so a rerun, or a larger raster holding
the same area at the same offsets, draws the same noise. `seam_ratio` measures what the overlap
is for. The generation itself is `seg2sat.generation.tiling`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch

from seg2sat.errors import TilingError


@dataclass(frozen=True)
class Window:
    """A window in pixels of the (padded) work grid."""

    row: int
    col: int
    size: int


def window_starts(length: int, tile: int, stride: int) -> list[int]:
    """Starts of windows of `tile` covering [0, length) with at most `stride` between them."""
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile, stride)) + [length - tile]
    return sorted(set(starts))


def windows_for(height: int, width: int, tile: int, overlap: int) -> list[Window]:
    """Row-major windows over a (height, width) grid; both sides must be >= tile."""
    if overlap < 0 or overlap >= tile:
        raise TilingError(f"overlap {overlap} must be in [0, {tile}) for tile {tile}")
    stride = tile - overlap
    return [Window(r, c, tile) for r in window_starts(height, tile, stride)
            for c in window_starts(width, tile, stride)]


def ramp(size: int, overlap: int) -> np.ndarray:
    """(size, size) blending weights: 1 inside, ramping to ~0 across `overlap` at each side."""
    w = np.ones(size, np.float32)
    if overlap > 0:
        edge = (np.arange(overlap, dtype=np.float32) + 0.5) / overlap
        w[:overlap] = np.minimum(w[:overlap], edge)
        w[-overlap:] = np.minimum(w[-overlap:], edge[::-1])
    return np.outer(w, w)


def block_seed(seed: int, row: int, col: int) -> int:
    """A 63-bit seed for the noise block at (row, col) of the latent grid."""
    h = hashlib.sha256(f"{seed}:{row}:{col}".encode()).digest()
    return int.from_bytes(h[:8], "little") & ((1 << 63) - 1)


def initial_noise(seed: int, lat_h: int, lat_w: int, block: int, channels: int = 4,
                  offset: tuple[int, int] = (0, 0)) -> torch.Tensor:
    """(1, C, lat_h, lat_w) standard normal noise, drawn per `block` x `block` cell.

    `offset` (block rows, block columns) is where this latent starts in a larger grid, so a
    piece of a mosaic draws the noise of its global position.
    """
    noise = torch.empty(1, channels, lat_h, lat_w)
    for r in range(0, lat_h, block):
        for c in range(0, lat_w, block):
            g = torch.Generator().manual_seed(block_seed(seed, offset[0] + r // block, offset[1] + c // block))
            cell = torch.randn(1, channels, block, block, generator=g)
            h, w = min(block, lat_h - r), min(block, lat_w - c)
            noise[:, :, r:r + h, c:c + w] = cell[:, :, :h, :w]
    return noise


def seam_ratio(image: np.ndarray, tile: int) -> float:
    """Mean absolute gradient across tile borders (multiples of `tile`) over the mean inside.

    About 1 for a seamless image; naive tiling gives visibly more. Borders are those of
    non-overlapping tiling, the worst case for the naive method.
    """
    img = image.astype(np.float32).mean(-1) if image.ndim == 3 else image.astype(np.float32)
    gx = np.abs(np.diff(img, axis=1))  # gx[:, j] is between columns j and j+1
    gy = np.abs(np.diff(img, axis=0))
    cols = np.arange(gx.shape[1])
    rows = np.arange(gy.shape[0])
    at_x = (cols + 1) % tile == 0
    at_y = (rows + 1) % tile == 0
    if not at_x.any() and not at_y.any():
        raise TilingError(f"image {img.shape} has no tile border for tile {tile}: it needs a side > {tile}")
    border = np.concatenate([gx[:, at_x].ravel(), gy[at_y, :].ravel()])
    inside = np.concatenate([gx[:, ~at_x].ravel(), gy[~at_y, :].ravel()])
    return float(border.mean() / max(inside.mean(), 1e-6))


def balanced_batches(items: list[Window], n: int) -> list[list[Window]]:
    """`items` in consecutive batches of at most `n`, their sizes differing by at most one.

    9 windows at n=8 make calls of 5 and 4, not 8 and 1: a one-window call costs nearly as
    much as a full one on a GPU, so the last call of every step would waste most of a batch.
    """
    if not items:
        return []
    k = -(-len(items) // max(1, n))
    q, r = divmod(len(items), k)
    out, start = [], 0
    for i in range(k):
        size = q + (i < r)
        out.append(items[start:start + size])
        start += size
    return out
