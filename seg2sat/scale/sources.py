"""The land cover of a mosaic, read a window at a time: rasters warped onto the grid, a vector layer burnt.

Inputs are a raster of any size, a folder or glob of rasters, a VRT, or one vector layer; each
file's legend is resolved once (`legend=auto` recognises each product) and sent to workers as
plain values. Memory is that of the window read, never of the whole input.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from affine import Affine

from seg2sat.errors import RasterError
from seg2sat.geo.inputs import VECTOR_SUFFIXES, find_inputs
from seg2sat.geo.landcover import read_vector
from seg2sat.geo.legends import Legend, map_values
from seg2sat.geo.recognise import resolve_legend
from seg2sat.labels import OTHER_CODE
from seg2sat.scale.grid import Grid


@dataclass
class Sources:
    """The land-cover inputs of a mosaic: rasters (a file, a folder, a glob, a VRT) or one vector layer."""

    paths: list[str]
    legends: list[dict[str, Any] | None]  # Legend fields per path, as plain values for workers
    kind: str  # "raster" | "vector"
    column: str = "class"
    unknown_to_other: bool = False


def find_sources(spec: str, legend: Any, column: str, unknown_to_other: bool) -> Sources:
    """Every input file, its legend resolved once (`legend=auto` recognises each product)."""
    paths = find_inputs(spec)
    vectors = [p for p in paths if p.suffix.lower() in VECTOR_SUFFIXES]
    if vectors and len(vectors) != len(paths):
        raise RasterError(f"{spec}: mixes rasters and vector layers; give one kind")
    if len(vectors) > 1:
        raise RasterError(f"{spec}: {len(vectors)} vector layers; merge them into one (e.g. ogrmerge)")
    legends = []
    for p in paths:
        lg = legend if vectors else resolve_legend(p, legend)
        legends.append(None if lg is None or isinstance(lg, str) else asdict(lg))
    return Sources(paths=[str(p) for p in paths], legends=legends, kind="vector" if vectors else "raster",
                   column=column, unknown_to_other=unknown_to_other)


def _legend(fields: dict[str, Any] | None) -> Legend | None:
    return None if fields is None else Legend(**fields)


def source_extent(sources: Sources, crs: str | None) -> tuple[str, tuple[float, float, float, float]]:
    """The CRS of the mosaic (`crs`, else the first input's) and the inputs' union bounds in it."""
    import pyogrio
    import rasterio
    from rasterio.crs import CRS
    from rasterio.warp import transform_bounds

    boxes, dst = [], CRS.from_user_input(crs) if crs else None
    for p in sources.paths:
        if sources.kind == "vector":
            info = pyogrio.read_info(p)
            src_crs, b = (CRS.from_user_input(info["crs"]) if info["crs"] else None), tuple(info["total_bounds"])
        else:
            with rasterio.open(p) as src:
                src_crs, b = src.crs, tuple(src.bounds)
        if src_crs is None:
            raise RasterError(f"{p}: no CRS; a mosaic needs georeferenced inputs")
        dst = dst or src_crs
        if dst.is_geographic:
            raise RasterError(f"{p}: CRS {dst.to_string()} is in degrees; pass a metric crs= (e.g. crs=EPSG:2154)")
        boxes.append(transform_bounds(src_crs, dst, *b) if src_crs != dst else b)
    arr = np.array(boxes, np.float64)
    return dst.to_wkt(), (float(arr[:, 0].min()), float(arr[:, 1].min()), float(arr[:, 2].max()), float(arr[:, 3].max()))


def read_codes(sources: Sources, grid: Grid, window: tuple[int, int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """FLAIR codes and validity on a (r0, c0, r1, c1) window of the grid."""
    r0, c0, r1, c1 = window
    return read_codes_at(sources, grid.crs, grid.window_transform(r0, c0), (r1 - r0, c1 - c0))


def read_codes_at(sources: Sources, crs: str, transform: Affine, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """FLAIR codes and validity on any north-up grid (nearest resampling; memory: that grid).

    Rasters are warped onto it one after the other (the first valid pixel wins); a vector
    layer is read within its bounds and burnt at its resolution.
    """
    h, w = shape
    codes = np.full((h, w), OTHER_CODE, np.uint8)
    valid = np.zeros((h, w), bool)
    if sources.kind == "vector":
        return _read_vector_window(sources, crs, transform, (h, w), codes, valid)
    import rasterio
    from rasterio.enums import Resampling
    from rasterio.vrt import WarpedVRT

    for p, lg_fields in zip(sources.paths, sources.legends, strict=True):
        legend = _legend(lg_fields)
        with rasterio.open(p) as src, WarpedVRT(src, crs=crs, transform=transform, width=w, height=h,
                                                resampling=Resampling.nearest, add_alpha=True) as vrt:
            if vrt.count != 2:
                raise RasterError(f"{p}: {src.count} bands; a mosaic input is one band of class values")
            values, inside = vrt.read(1), vrt.read(2) > 0
        if legend is not None and legend.nodata is not None:
            inside &= values != legend.nodata
        take = inside & ~valid
        if take.any():
            codes[take] = map_values(values, take, legend, Path(p), sources.unknown_to_other)[take]
            valid |= take
    return codes, valid


def _read_vector_window(sources: Sources, crs: str, transform: Affine, shape: tuple[int, int], codes: np.ndarray,
                        valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The part of the vector layer within the window, checked as `read_landcover` checks it, burnt."""
    import pyogrio
    from rasterio.crs import CRS
    from rasterio.warp import transform_bounds

    path = sources.paths[0]
    layer_crs = CRS.from_user_input(pyogrio.read_info(path)["crs"])
    x0, y1 = transform * (0, 0)
    x1, y0 = transform * (shape[1], shape[0])
    bbox = transform_bounds(CRS.from_user_input(crs), layer_crs, x0, y0, x1, y1)
    layer = read_vector(path, sources.column, _legend(sources.legends[0]), crs=crs,
                        unknown_to_other=sources.unknown_to_other, bbox=bbox)
    if not layer.codes:
        return codes, valid
    return layer.rasterize(transform, shape)


def overview_codes(sources: Sources, grid: Grid, max_side: int = 1024) -> tuple[np.ndarray, np.ndarray, Affine]:
    """The whole extent's codes decimated to <= max_side pixels (for the one prompt of the run)."""
    scale = max(1, math.ceil(max(grid.width, grid.height) / max_side))
    h, w = -(-grid.height // scale), -(-grid.width // scale)
    t = grid.transform * Affine.scale(scale)
    codes, valid = read_codes_at(sources, grid.crs, t, (h, w))
    return codes, valid, t


