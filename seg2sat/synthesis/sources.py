"""Mask sources: the land-cover maps a synthetic dataset is rendered from, each with its place on Earth.

- `prepared` (and `edited`, which edits the same maps): the maps of a prepared dataset (its
  colour hints read back to codes), georeferenced by their records' CRS and bounds;
- `landcover`: a raster (`legend=auto` recognises NLCD, CORINE, OSO, OCS GE, ...) or a vector
  layer with a class column, moved to the work resolution and cut into tile-size patches; a
  patch with too little valid land cover is skipped.
Every map is a `MaskItem` of exactly the model's tile size; nothing here touches a model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from affine import Affine

from seg2sat.data.dataset import load_rgb, read_manifest
from seg2sat.errors import DatasetError
from seg2sat.geo.landcover import nearest_resize, read_landcover, to_resolution
from seg2sat.hints import hint_to_codes
from seg2sat.synthesis.spec import SourceSpec


@dataclass
class MaskItem:
    """One map of a source: FLAIR codes on a georeferenced tile, and where it came from."""

    codes: np.ndarray  # (tile, tile) uint8
    valid: np.ndarray  # (tile, tile) bool
    crs: str
    transform: Affine
    ref: str  # "prepared:<id>" or "landcover:<file>:<row>,<col>"
    meta: dict[str, Any] = field(default_factory=dict)  # domain, zone, date, place


def _on_tile(codes: np.ndarray, valid: np.ndarray, transform: Affine, tile: int
             ) -> tuple[np.ndarray, np.ndarray, Affine]:
    """A map moved to the model's tile size (nearest: codes are never blended)."""
    h, w = codes.shape
    if (h, w) == (tile, tile):
        return codes, valid, transform
    t = transform * Affine.scale(w / tile, h / tile)
    return nearest_resize(codes, tile, tile), nearest_resize(valid, tile, tile), t


def prepared_items(spec: SourceSpec, tile: int) -> list[MaskItem]:
    """Every map of a prepared dataset's split, at the tile size, with its record's place."""
    from rasterio.transform import from_bounds

    prepared = spec.path
    items = []
    for r in read_manifest(prepared, spec.split):
        hint = load_rgb(prepared / r["hint"])
        codes = hint_to_codes(hint, source=prepared / r["hint"])
        valid = load_rgb(prepared / r["valid"])[..., 0] > 0 if r.get("valid") else np.ones(codes.shape, bool)
        transform = from_bounds(*r["bounds"], codes.shape[1], codes.shape[0])
        codes, valid, transform = _on_tile(codes, valid, transform, tile)
        items.append(MaskItem(codes, valid, str(r["crs"]), transform, f"prepared:{r['id']}",
                              {"domain": r.get("domain"), "zone": r.get("zone"), "date": r.get("date"),
                               "caption": r.get("caption")}))
    return items


def landcover_items(spec: SourceSpec, tile: int, resolution: float | None) -> list[MaskItem]:
    """Tile-size patches of a land-cover raster or vector layer at the work resolution (None: its own)."""
    lc = read_landcover(spec.path, legend=spec.legend, column=spec.column, vector_resolution=resolution,
                        unknown_to_other=True)
    lc = to_resolution(lc, resolution)
    if lc.crs is None:
        raise DatasetError(f"{spec.path}: a landcover source needs a CRS (its tiles are written georeferenced)")
    items = []
    h, w = lc.codes.shape
    for r in range(0, h - tile + 1, tile):
        for c in range(0, w - tile + 1, tile):
            valid = lc.valid[r:r + tile, c:c + tile]
            if valid.mean() < spec.min_valid:
                continue
            items.append(MaskItem(lc.codes[r:r + tile, c:c + tile].copy(), valid.copy(), lc.crs.to_string(),
                                  lc.transform * Affine.translation(c, r), f"landcover:{spec.path.name}:{r},{c}",
                                  {"domain": None, "zone": None, "date": None}))
    return items


def source_items(spec: SourceSpec, index: int, tile: int, resolution: float | None) -> list[MaskItem]:
    """The maps of one source; an empty source is an error that names it."""
    items = (landcover_items(spec, tile, resolution) if spec.kind == "landcover"
             else prepared_items(spec, tile))
    if not items:
        what = f"split {spec.split!r}" if spec.kind != "landcover" else f"tiles of {tile} px with enough land cover"
        raise DatasetError(f"sources[{index}] ({spec.kind}, {spec.path}): no maps ({what}); check the source")
    return items

