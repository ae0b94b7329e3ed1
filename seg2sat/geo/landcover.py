"""Land-cover inputs for inference -> FLAIR codes on a georeferenced grid.

Accepted inputs (each with a specific error that names the file when it is wrong):
- FLAIR MSK rasters (one integer band, codes 1..19);
- colour-hint images (PNG or GeoTIFF, 3 or 4 uint8 bands in legend colours; hand-drawn ones
  are snapped with `snap=true`);
- other land-cover rasters (integer or float, with nodata) through a legend mapping
  (`conf/legend/*.yaml`: source value -> FLAIR code), named or recognised with legend="auto"
  from the raster's colour table or values; without a legend, a raster that is recognisably
  another product (NLCD, CORINE, WorldCover, ...) is refused rather than read as FLAIR codes;
- vector layers (GeoPackage, GeoJSON, Shapefile) with a class column, rasterized at a chosen
  resolution, reprojected when asked.
Resampling to the model's working resolution is nearest-neighbour (codes are never blended).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from affine import Affine
from rasterio.crs import CRS

from seg2sat.errors import GeoreferenceError, LegendError, RasterError, VectorError
from seg2sat.geo.inputs import VECTOR_SUFFIXES
from seg2sat.geo.legends import Legend, map_values
from seg2sat.geo.raster import (
    FLAIR_RESOLUTION,
    RasterData,
    check_transform,
    is_plain_image,
    local_transform,
    read_plain_image,
    read_raster,
)
from seg2sat.geo.recognise import not_flair, recognise, resolve_legend, valid_values
from seg2sat.hints import hint_to_codes, snap_hint
from seg2sat.labels import OTHER_CODE, code_of, in_legend

log = logging.getLogger(__name__)

@dataclass
class LandCover:
    """FLAIR codes on a grid; `valid` is False on nodata (those pixels hold OTHER_CODE)."""

    codes: np.ndarray  # (H, W) uint8
    valid: np.ndarray  # (H, W) bool
    crs: CRS | None
    transform: Affine
    path: Path
    source_nodata: float | int | None = None

    @property
    def resolution(self) -> float:
        """Pixel size in CRS units (square pixels)."""
        return float(self.transform.a)


# ---------------------------------------------------------------------------------------------
# Readers
# ---------------------------------------------------------------------------------------------


def _finish(codes: np.ndarray, valid: np.ndarray, crs: CRS | None, transform: Affine, path: Path,
            nodata: float | int | None = None) -> LandCover:
    if not valid.any():
        raise RasterError(f"{path}: every pixel is nodata; nothing to generate")
    return LandCover(codes=codes, valid=valid, crs=crs, transform=transform, path=path, source_nodata=nodata)


def _read_image_hint(path: Path, snap: bool, crs: str | None, resolution: float | None) -> LandCover:
    """A plain PNG/JPEG colour hint: no georeferencing, so a CRS + pixel size or a local grid."""
    image = read_plain_image(path, alpha=True)
    if image.shape[-1] == 4 and not snap:
        image = image[..., :3] if (image[..., 3] == 255).all() else image
    codes = snap_hint(image, source=path).codes if snap else hint_to_codes(image, source=path)
    transform = local_transform(codes.shape[0], float(resolution or FLAIR_RESOLUTION))
    return _finish(codes.astype(np.uint8), np.ones(codes.shape, bool),
                   CRS.from_user_input(crs) if crs else None, transform, path)


def read_landcover_raster(path: str | Path, legend: Legend | None = None, *, snap: bool = False,
                          crs: str | None = None, unknown_to_other: bool = False,
                          allow_no_crs: bool = False) -> LandCover:
    """A land-cover raster (codes, colour hint, or another legend) -> LandCover.

    Args:
        path: GeoTIFF (or PNG colour hint).
        legend: mapping for rasters in another class scheme; None reads FLAIR codes and refuses a
            single-band raster that is recognisably another product (`detect_legend`).
        snap: snap colour hints to legend colours (hand-drawn maps).
        crs: CRS to assume when the file has none (a file without CRS is refused otherwise).
        unknown_to_other: map values outside the legend to "other" instead of failing.
        allow_no_crs: accept plain images without georeferencing (PNG hints in the app).
    """
    path = Path(path)
    if is_plain_image(path):
        if not (allow_no_crs or crs):
            raise GeoreferenceError(f"{path}: a plain image has no georeferencing; pass crs= (and "
                                    "resolution=) or use a GeoTIFF")
        return _read_image_hint(path, snap, crs, None)
    data = read_raster(path, crs=crs)
    check_transform(data.transform, path)
    if abs(abs(data.transform.e) - data.transform.a) > 1e-9 * max(1.0, data.transform.a):
        raise GeoreferenceError(f"{path}: non-square pixels ({data.transform.a} x {abs(data.transform.e)}); "
                                "resample to square pixels first")
    if data.count in (3, 4) and data.array.dtype == np.uint8 and legend is None:
        image = np.moveaxis(data.array, 0, -1)
        valid = data.valid_mask() if data.nodata is not None else np.ones(image.shape[:2], bool)
        if data.count == 4:  # alpha = 0 is nodata
            valid &= image[..., 3] > 0
            image = np.concatenate([image[..., :3], np.full(image.shape[:2] + (1,), 255, np.uint8)], -1)
        codes = snap_hint(image, source=path).codes if snap else hint_to_codes(image[..., :3], source=path)
        return _finish(np.where(valid, codes, OTHER_CODE).astype(np.uint8), valid, data.crs, data.transform,
                       path, data.nodata)
    if data.count != 1:
        raise RasterError(f"{path}: {data.count} bands of {data.array.dtype}; a class raster has one band "
                          "(or 3/4 uint8 bands for a colour hint)")
    return _read_class_band(path, data, legend, unknown_to_other)


def _read_class_band(path: Path, data: RasterData, legend: Legend | None, unknown_to_other: bool) -> LandCover:
    """One band of class values -> LandCover; without a legend, refuses another product's values.

    Both the file's nodata and the legend's are masked: a product's fill value is never a class,
    whatever the file declares (Annual NLCD declares 250 while the classic releases use 0).
    """
    values = data.array[0]
    if values.dtype.kind not in "uif":
        raise RasterError(f"{path}: dtype {values.dtype} is not a class raster")
    nodatas = [data.nodata, legend.nodata if legend is not None else None]
    valid = valid_values(values, nodatas)
    if not valid.any():
        shown = " and ".join(f"{n:g}" for n in dict.fromkeys(nodatas) if n is not None)
        raise RasterError(f"{path}: every pixel is nodata ({shown}); nothing to generate")
    if legend is None:
        seen = recognise(values[valid], path, data)
        if seen.candidates:
            raise not_flair(path, seen)
    codes = map_values(values, valid, legend, path, unknown_to_other)
    nodata = data.nodata if data.nodata is not None else (legend.nodata if legend is not None else None)
    return _finish(codes, valid, data.crs, data.transform, path, nodata)


@dataclass
class VectorLayer:
    """Polygons of a land-cover layer, checked, with the FLAIR code of each feature."""

    path: Path
    geometries: Any  # a GeoSeries in `crs`
    codes: list[int]
    crs: CRS

    def rasterize(self, transform: Affine, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """(codes, valid) burnt on a north-up grid; pixels no polygon covers are nodata."""
        from rasterio.features import rasterize

        if not self.codes:
            return np.full(shape, OTHER_CODE, np.uint8), np.zeros(shape, bool)
        burnt = rasterize(zip(self.geometries, self.codes, strict=True), out_shape=shape, transform=transform,
                          fill=0, dtype="uint8")
        valid = burnt > 0
        return np.where(valid, burnt, OTHER_CODE).astype(np.uint8), valid


def _open_layer(path: Path, bbox: tuple[float, float, float, float] | None) -> Any:
    import geopandas as gpd

    if not path.exists():
        raise VectorError(f"{path}: file not found")
    try:
        gdf = gpd.read_file(path, bbox=bbox)
    except Exception as exc:  # pyogrio raises several types for unreadable files
        raise VectorError(f"{path}: not a readable vector layer: {exc}") from exc
    if not isinstance(gdf, gpd.GeoDataFrame):  # a table without geometry, or an empty untyped layer
        raise VectorError(f"{path}: the layer has no geometry (no geometry column, or no feature)")
    return gdf


def _checked_geometries(gdf: Any, path: Path) -> Any:
    """The layer without its empty geometries; refuses invalid and non-polygon ones."""
    empty = gdf.geometry.isna() | gdf.geometry.is_empty
    if empty.all():
        raise VectorError(f"{path}: all {len(gdf)} geometries are empty")
    gdf = gdf[~empty]
    invalid = ~gdf.geometry.is_valid
    if invalid.any():
        raise VectorError(f"{path}: {int(invalid.sum())} invalid geometries (first at feature "
                          f"{int(np.flatnonzero(invalid.to_numpy())[0])}); fix them (e.g. shapely make_valid)")
    polys = gdf.geometry.geom_type.isin(["Polygon", "MultiPolygon"])
    if not polys.all():
        raise VectorError(f"{path}: {int((~polys).sum())} features are not polygons "
                          f"({', '.join(sorted(set(gdf.geometry.geom_type[~polys])))})")
    return gdf


def read_vector(path: str | Path, column: str, legend: Legend | None = None, *, crs: str | None = None,
                unknown_to_other: bool = False, bbox: tuple[float, float, float, float] | None = None) -> VectorLayer:
    """A polygon layer with a class column, checked, in `crs` (or its own metric CRS).

    The one vector reader: `read_landcover_vector` burns a whole layer, a mosaic burns the part
    within `bbox` (in the layer's own CRS) of each block. The class column holds FLAIR codes,
    FLAIR class names, or (with a legend) the legend's source values or labels.

    Raises:
        VectorError: unreadable file, missing column, no features, empty/invalid/non-polygon
            geometries. GeoreferenceError: no CRS, or a CRS in degrees.
        LegendError: a class value the legend does not hold (unless `unknown_to_other`).
    """
    path = Path(path)
    gdf = _open_layer(path, bbox)
    # 1. CRS: assumed when missing, reprojected when asked, metric.
    if gdf.crs is None and crs is None:
        raise GeoreferenceError(f"{path}: layer has no CRS; pass crs=...")
    if gdf.crs is None:
        gdf = gdf.set_crs(crs)
    elif crs is not None and CRS.from_user_input(crs) != CRS.from_user_input(gdf.crs):
        gdf = gdf.to_crs(crs)
    if gdf.crs.is_geographic:
        raise GeoreferenceError(f"{path}: CRS {gdf.crs.to_string()} is in degrees; pass a metric crs= "
                                "(e.g. crs=EPSG:2154) to reproject it")
    # 2. Column and geometries (a window of a layer may hold no feature at all).
    if column not in gdf.columns:
        raise VectorError(f"{path}: no class column {column!r}; columns: "
                          f"{', '.join(c for c in gdf.columns if c != 'geometry')}")
    if len(gdf) == 0:
        if bbox is not None:
            return VectorLayer(path, gdf.geometry, [], CRS.from_user_input(gdf.crs))
        raise VectorError(f"{path}: the layer has no features")
    gdf = _checked_geometries(gdf, path)
    # 3. Class values -> FLAIR codes.
    codes = [_vector_code(v, legend, path, column, unknown_to_other) for v in gdf[column].tolist()]
    return VectorLayer(path, gdf.geometry, codes, CRS.from_user_input(gdf.crs))


def read_landcover_vector(path: str | Path, column: str, resolution: float, legend: Legend | None = None, *,
                          crs: str | None = None, unknown_to_other: bool = False) -> LandCover:
    """Polygons with a class column -> LandCover rasterized at `resolution` (CRS units).

    Areas no polygon covers are nodata. `crs` reprojects the layer (a layer in degrees must be
    reprojected to a metric CRS).
    """
    layer = read_vector(path, column, legend, crs=crs, unknown_to_other=unknown_to_other)
    # Rasterize on a grid snapped to the resolution.
    xmin, ymin, xmax, ymax = (float(v) for v in layer.geometries.total_bounds)
    res = float(resolution)
    with np.errstate(over="ignore", invalid="ignore"):  # damaged coordinates: refused below, not raised here
        span = np.array([xmin / res, ymax / res, (xmax - xmin) / res, (ymax - ymin) / res])
    if not np.isfinite(span).all() or span[2] * span[3] > 400_000_000:
        raise VectorError(f"{layer.path}: bounds ({xmin:g}, {ymin:g}, {xmax:g}, {ymax:g}) at {res} m are too large "
                          "(or not finite); pass a coarser resolution= or fix the coordinates")
    x0, y1 = math.floor(span[0]) * res, math.ceil(span[1]) * res
    width, height = math.ceil((xmax - x0) / res), math.ceil((y1 - ymin) / res)
    transform = Affine(res, 0, x0, 0, -res, y1)
    codes, valid = layer.rasterize(transform, (height, width))
    return _finish(codes, valid, layer.crs, transform, layer.path)


def _vector_code(value: Any, legend: Legend | None, path: Path, column: str, unknown_to_other: bool) -> int:
    if legend is not None:
        if isinstance(value, str) and value.strip().lower() in legend.labels:
            value = legend.labels[value.strip().lower()]
        try:
            return legend.mapping[float(value)]
        except (KeyError, TypeError, ValueError):
            pass
    else:
        if isinstance(value, str):
            try:
                return code_of(value)
            except KeyError:
                pass
        elif value is not None and in_legend(float(value)):
            return int(value)
    if unknown_to_other:
        return OTHER_CODE
    known = f"legend {legend.name}" if legend else "the FLAIR legend (codes or names)"
    raise LegendError(f"{path}: {column}={value!r} is not in {known}; pass legend=..., or unknown_to_other=true")


def read_landcover(path: str | Path, *, legend: Legend | str | None = None, column: str = "class",
                   vector_resolution: float = 0.2, snap: bool = False, crs: str | None = None,
                   unknown_to_other: bool = False, allow_no_crs: bool = False) -> LandCover:
    """Any supported input, by file type; `legend` may be a Legend, a name or "auto" (`resolve_legend`)."""
    path = Path(path)
    legend = resolve_legend(path, legend)
    if path.suffix.lower() in VECTOR_SUFFIXES:
        return read_landcover_vector(path, column, vector_resolution, legend, crs=crs,
                                     unknown_to_other=unknown_to_other)
    return read_landcover_raster(path, legend, snap=snap, crs=crs, unknown_to_other=unknown_to_other,
                                 allow_no_crs=allow_no_crs)


# ---------------------------------------------------------------------------------------------
# Resampling
# ---------------------------------------------------------------------------------------------


def nearest_resize(array: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest-neighbour resize of the first two axes (pixel centres)."""
    h, w = array.shape[:2]
    rows = np.minimum(((np.arange(height) + 0.5) * h / height).astype(np.int64), h - 1)
    cols = np.minimum(((np.arange(width) + 0.5) * w / width).astype(np.int64), w - 1)
    return array[rows][:, cols]


def to_resolution(lc: LandCover, resolution: float | None) -> LandCover:
    """The same area at `resolution` (CRS units per pixel), nearest; None keeps the grid."""
    if resolution is None or math.isclose(resolution, lc.resolution, rel_tol=1e-9):
        return lc
    h, w = lc.codes.shape
    scale = lc.resolution / float(resolution)
    new_h, new_w = max(1, round(h * scale)), max(1, round(w * scale))
    if new_h * new_w > 400_000_000:
        raise RasterError(f"{lc.path}: {w}x{h} px at {lc.resolution:g} becomes {new_w}x{new_h} px at "
                          f"{resolution:g}; choose a coarser work_resolution")
    t = lc.transform
    transform = Affine(t.a * w / new_w, 0, t.c, 0, t.e * h / new_h, t.f)
    return LandCover(codes=nearest_resize(lc.codes, new_h, new_w), valid=nearest_resize(lc.valid, new_h, new_w),
                     crs=lc.crs, transform=transform, path=lc.path, source_nodata=lc.source_nodata)


@dataclass(frozen=True)
class InputOptions:
    """How land-cover inputs are read: the `infer`/`mosaic` keys of the same names, typed once."""

    column: str = "class"
    vector_resolution: float = FLAIR_RESOLUTION
    snap: bool = False
    crs: str | None = None
    unknown_to_other: bool = False
    work_resolution: float | None = FLAIR_RESOLUTION

    @classmethod
    def from_config(cls, cfg: Any) -> InputOptions:
        """From `class_column`, `vector_resolution`, `snap`, `crs`, `unknown_to_other`, `work_resolution`."""
        work = cfg.get("work_resolution")
        return cls(column=str(cfg.get("class_column", "class")),
                   vector_resolution=float(cfg.get("vector_resolution", FLAIR_RESOLUTION)),
                   snap=bool(cfg.get("snap", False)), crs=cfg.get("crs") or None,
                   unknown_to_other=bool(cfg.get("unknown_to_other", False)),
                   work_resolution=None if work is None else float(work))

    def read(self, src: str | Path, legend: Legend | None) -> tuple[LandCover, LandCover]:
        """An input at its own resolution and at the work resolution (`legend` already resolved)."""
        lc = read_landcover(src, legend=legend, column=self.column, vector_resolution=self.vector_resolution,
                            snap=self.snap, crs=self.crs, unknown_to_other=self.unknown_to_other)
        return lc, to_resolution(lc, self.work_resolution)
