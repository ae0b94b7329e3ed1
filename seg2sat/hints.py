"""Class codes <-> colour hints, and snapping hand-drawn hints to the legend.

The colour hint is what the ControlNet sees: every pixel is exactly one legend colour.
Everything here is vectorised numpy (one table lookup per conversion) instead of the
per-pixel Python loop of the research code; `benchmarks/bench_hints.py` measures the gap.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from seg2sat.errors import LegendError
from seg2sat.labels import CODES, OTHER_CODE, PALETTE, check_codes

# Colour -> code via a packed 24-bit key and a perfect hash: `key % _MOD` is distinct for the
# 19 legend colours, so two 87-entry tables give the code and confirm the colour. This is
# 2.3x faster than a sorted-key searchsorted and 16 MB smaller than a dense 2^24 table.
_KEYS = PALETTE[list(CODES)].astype(np.uint32) @ np.array([1 << 16, 1 << 8, 1], np.uint32)
_MOD = next(m for m in range(len(_KEYS), 1 << 16) if len(set((_KEYS % m).tolist())) == len(_KEYS))
_HASH_CODE = np.zeros(_MOD, np.uint8)
_HASH_KEY = np.full(_MOD, 0xFFFFFFFF, np.uint32)  # no 24-bit key equals this: empty slots never match
_HASH_CODE[_KEYS % _MOD] = CODES
_HASH_KEY[_KEYS % _MOD] = _KEYS
_LEGEND_RGB = PALETTE[list(CODES)].astype(np.int32)  # (19, 3), row i is CODES[i]


@dataclass(frozen=True)
class SnapResult:
    """A hand-drawn hint snapped to the legend."""

    hint: np.ndarray  # (H, W, 3) uint8, legend colours only
    codes: np.ndarray  # (H, W) uint8, 1..19
    changed: int  # pixels whose RGB changed (alpha ignored)


def _where(source: str | Path | None) -> str:
    return f"{source}: " if source is not None else ""


def codes_to_hint(codes: np.ndarray, source: str | Path | None = None) -> np.ndarray:
    """(H, W) class codes -> (H, W, 3) uint8 colour hint; codes must be in the legend."""
    codes = np.asarray(codes)
    if codes.ndim != 2:
        raise LegendError(f"{_where(source)}expected a 2-D code array, got shape {codes.shape}")
    return PALETTE[check_codes(codes, source)]


def _rgb_keys(rgb: np.ndarray) -> np.ndarray:
    return (rgb[..., 0].astype(np.uint32) << 16) | (rgb[..., 1].astype(np.uint32) << 8) | rgb[..., 2]


def _as_rgb(image: np.ndarray, source: str | Path | None) -> tuple[np.ndarray, np.ndarray | None]:
    """Split an (H, W, 3|4) uint8 image into RGB and alpha (None when opaque)."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] not in (3, 4):
        raise LegendError(f"{_where(source)}expected an (H, W, 3) or (H, W, 4) image, got {image.shape}")
    if image.dtype != np.uint8:
        raise LegendError(f"{_where(source)}expected uint8 colours, got dtype {image.dtype}")
    alpha = image[..., 3] if image.shape[-1] == 4 else None
    return image[..., :3], alpha


def hint_to_codes(hint: np.ndarray, source: str | Path | None = None) -> np.ndarray:
    """Exact legend colours -> (H, W) uint8 codes; any other colour is an error with counts."""
    rgb, alpha = _as_rgb(hint, source)
    if alpha is not None and (alpha < 255).any():
        raise LegendError(
            f"{_where(source)}{int((alpha < 255).sum())} pixels are transparent; snap the hint first"
        )
    keys = _rgb_keys(rgb)
    slot = keys % _MOD
    ok = _HASH_KEY[slot] == keys
    if not ok.all():
        colours, counts = np.unique(keys[~ok], return_counts=True)
        top = np.argsort(-counts)[:5]
        detail = ", ".join(f"#{colours[i]:06x}: {counts[i]} px" for i in top)
        raise LegendError(
            f"{_where(source)}{int((~ok).sum())} pixels in {len(colours)} colours are not legend "
            f"colours (most frequent: {detail}); pass snap=true for a hand-drawn map"
        )
    return _HASH_CODE[slot]


def is_legend_hint(hint: np.ndarray) -> bool:
    """True when every pixel of an (H, W, 3) uint8 image is a legend colour."""
    rgb = np.asarray(hint)[..., :3]
    keys = _rgb_keys(rgb)
    return bool((_HASH_KEY[keys % _MOD] == keys).all())


def nearest_codes(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nearest legend code of each pixel and its squared RGB distance."""
    flat = rgb.reshape(-1, 3).astype(np.int32)
    # Work on the distinct colours only: drawings hold few of them, so this is fast.
    uniq, inverse = np.unique(flat, axis=0, return_inverse=True)
    d2 = ((uniq[:, None, :] - _LEGEND_RGB[None, :, :]) ** 2).sum(-1)
    best = d2.argmin(1)
    codes = np.asarray(CODES, dtype=np.uint8)[best][inverse.ravel()]
    dist = d2[np.arange(len(uniq)), best][inverse.ravel()]
    return codes.reshape(rgb.shape[:2]), dist.reshape(rgb.shape[:2])


def _neighbour_support(codes: np.ndarray, near: np.ndarray) -> np.ndarray:
    """How many of the 3x3 neighbours (self included) are near the same legend colour."""
    support = np.zeros(codes.shape, np.int16)
    for code in np.unique(codes[near]):
        same = (near & (codes == code)).astype(np.float32)
        count = np.rint(ndimage.uniform_filter(same, size=3, mode="nearest") * 9).astype(np.int16)
        support = np.where(codes == code, count, support)
    return support


def snap_hint(
    image: np.ndarray,
    tolerance: float = 24.0,
    alpha_threshold: int = 128,
    background_code: int = OTHER_CODE,
    min_support: int = 6,
    source: str | Path | None = None,
) -> SnapResult:
    """Snap a hand-drawn map to legend colours while keeping its shapes.

    1. Pixels within `tolerance` (RGB distance) of a legend colour, with at least
       `min_support` of their 3x3 neighbourhood near the same colour, take that colour: this
       absorbs JPEG noise and colour drift but not thin blended edges.
    2. The remaining pixels are anti-aliased edges or off-legend colours. The nearest legend
       colour of a blend of two classes is often a third class (magenta + blue -> vineyard
       purple), which would draw false outlines, so they take instead the code of the nearest
       confidently-coloured pixel (a Euclidean distance transform): edges stay where they were.
    3. Transparent pixels (alpha < `alpha_threshold`) are filled the same way; a fully
       transparent or fully off-legend drawing falls back to nearest colours / `background_code`.
    """
    rgb, alpha = _as_rgb(image, source)
    # 1. Confident pixels: exact legend colours, or near ones backed by their neighbourhood
    #    (a 1-2 px anti-aliased strip between red and green lands near "bare soil" brown).
    codes, dist2 = nearest_codes(rgb)
    near = dist2 <= tolerance**2
    confident = (dist2 == 0) | (near & (_neighbour_support(codes, near) >= min_support))
    opaque = np.ones(rgb.shape[:2], bool) if alpha is None else alpha >= alpha_threshold
    confident &= opaque
    # 2-3. Fill the others from their nearest confident neighbour.
    if confident.all():
        pass
    elif confident.any():
        _, (iy, ix) = ndimage.distance_transform_edt(~confident, return_indices=True)
        codes = codes[iy, ix]
    elif opaque.any():
        codes = np.where(opaque, codes, background_code).astype(np.uint8)
    else:
        codes = np.full(rgb.shape[:2], background_code, np.uint8)
    hint = PALETTE[codes]
    changed = int((hint != rgb).any(-1).sum())
    return SnapResult(hint=hint, codes=codes.astype(np.uint8), changed=changed)
