"""Land-cover inputs for inference -> FLAIR codes on a georeferenced grid.

Accepted inputs (each with a specific error that names the file when it is wrong):
- FLAIR MSK rasters (one integer band, codes 1..19);
- colour-hint images (PNG or GeoTIFF, 3 or 4 uint8 bands in legend colours; hand-drawn ones
  are snapped with `snap=true`);
- other land-cover rasters (integer or float, with nodata) through a legend mapping
  (`conf/legend/*.yaml`: source value -> FLAIR code);
- vector layers (GeoPackage, GeoJSON, Shapefile) with a class column, rasterized at a chosen
  resolution, reprojected when asked.
Resampling to the model's working resolution is nearest-neighbour (codes are never blended).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from affine import Affine
from PIL import Image
from rasterio.crs import CRS

from seg2sat.errors import GeoreferenceError, LegendError, RasterError, VectorError
from seg2sat.hints import hint_to_codes, snap_hint
from seg2sat.labels import BY_CODE, MAX_CODE, OTHER_CODE, code_of
from seg2sat.raster import check_transform, raster_info, read_raster

VECTOR_SUFFIXES = frozenset({".gpkg", ".geojson", ".json", ".shp", ".fgb"})
RASTER_SUFFIXES = frozenset({".tif", ".tiff", ".png", ".jpg", ".jpeg", ".vrt"})


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


@dataclass(frozen=True)
class Legend:
    """A mapping from another land-cover scheme to FLAIR codes."""

    name: str
    mapping: dict[float, int]  # source value -> FLAIR code
    labels: dict[str, float]  # text label (lower case) -> source value, for vector columns
    nodata: float | None = None

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> Legend:
        """From a `conf/legend/*.yaml` mapping; FLAIR codes may be given by name."""
        name = str(cfg.get("name", "legend"))
        mapping: dict[float, int] = {}
        for src, dst in dict(cfg.get("map") or {}).items():
            code = code_of(str(dst)) if isinstance(dst, str) else int(dst)
            if code not in BY_CODE:
                raise LegendError(f"legend {name}: target {dst!r} of {src!r} is not a FLAIR code")
            mapping[float(src)] = code
        if not mapping:
            raise LegendError(f"legend {name}: empty `map`")
        labels = {str(k).strip().lower(): float(v) for k, v in dict(cfg.get("labels") or {}).items()}
        nodata = cfg.get("nodata")
        return cls(name=name, mapping=mapping, labels=labels, nodata=None if nodata is None else float(nodata))


# ---------------------------------------------------------------------------------------------
# Value -> code
# ---------------------------------------------------------------------------------------------


def _count_detail(values: np.ndarray, limit: int = 8) -> str:
    uniq, counts = np.unique(values, return_counts=True)
    order = np.argsort(-counts)[:limit]
    return ", ".join(f"{uniq[i]:g}: {counts[i]} px" for i in order)


def map_values(values: np.ndarray, valid: np.ndarray, legend: Legend | None, source: Path,
               unknown_to_other: bool = False) -> np.ndarray:
    """Source class values -> FLAIR codes (uint8); unknown values are an error with counts."""
    out = np.full(values.shape, OTHER_CODE, np.uint8)
    v = values[valid]
    if v.dtype.kind == "f":
        if not np.isfinite(v).all():
            raise LegendError(f"{source}: {int((~np.isfinite(v)).sum())} NaN/inf class values outside nodata")
        frac = v != np.round(v)
        if frac.any():
            raise LegendError(f"{source}: {int(frac.sum())} class values are not whole numbers "
                              f"({_count_detail(v[frac])}); a class raster must hold integer codes")
    if legend is None:
        known = (v >= 1) & (v <= MAX_CODE)
        mapped = np.where(known, v, OTHER_CODE).astype(np.uint8)
    else:
        lut_src = np.array(sorted(legend.mapping), np.float64)
        lut_dst = np.array([legend.mapping[k] for k in lut_src], np.uint8)
        idx = np.clip(np.searchsorted(lut_src, v.astype(np.float64)), 0, len(lut_src) - 1)
        known = lut_src[idx] == v
        mapped = np.where(known, lut_dst[idx], OTHER_CODE).astype(np.uint8)
    if not known.all():
        what = f"not in legend {legend.name}" if legend else f"outside the FLAIR legend 1..{MAX_CODE}"
        msg = f"{source}: {int((~known).sum())} pixels hold class values {what} ({_count_detail(v[~known])})"
        if not unknown_to_other:
            raise LegendError(msg + "; pass a legend mapping, or unknown_to_other=true to map them to 'other'")
    out[valid] = mapped
    return out


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
    with Image.open(path) as im:
        image = np.asarray(im.convert("RGBA" if im.mode in ("RGBA", "LA", "P") else "RGB"))
    if image.shape[-1] == 4 and not snap:
        image = image[..., :3] if (image[..., 3] == 255).all() else image
    codes = snap_hint(image, source=path).codes if snap else hint_to_codes(image, source=path)
    res = float(resolution or 0.2)
    transform = Affine(res, 0, 0, 0, -res, codes.shape[0] * res)
    return _finish(codes.astype(np.uint8), np.ones(codes.shape, bool),
                   CRS.from_user_input(crs) if crs else None, transform, path)


def read_landcover_raster(path: str | Path, legend: Legend | None = None, *, snap: bool = False,
                          crs: str | None = None, unknown_to_other: bool = False,
                          allow_no_crs: bool = False) -> LandCover:
    """A land-cover raster (codes, colour hint, or another legend) -> LandCover.

    Args:
        path: GeoTIFF (or PNG colour hint).
        legend: mapping for rasters in another class scheme.
        snap: snap colour hints to legend colours (hand-drawn maps).
        crs: CRS to assume when the file has none (a file without CRS is refused otherwise).
        unknown_to_other: map values outside the legend to "other" instead of failing.
        allow_no_crs: accept plain images without georeferencing (PNG hints in the app).
    """
    path = Path(path)
    if path.suffix.lower() in (".png", ".jpg", ".jpeg"):
        info = raster_info(path)
        if info["crs"] is None and info["transform"] == Affine.identity():
            if not (allow_no_crs or crs):
                raise GeoreferenceError(f"{path}: a plain image has no georeferencing; pass crs= (and "
                                        "resolution=) or use a GeoTIFF")
            return _read_image_hint(path, snap, crs, None)
    data = read_raster(path, crs=crs)
    check_transform(data.transform, path)
    if abs(abs(data.transform.e) - data.transform.a) > 1e-9 * max(1.0, data.transform.a):
        raise GeoreferenceError(f"{path}: non-square pixels ({data.transform.a} x {abs(data.transform.e)}); "
                                "resample to square pixels first")
    nodata = legend.nodata if legend is not None and legend.nodata is not None and data.nodata is None else data.nodata
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
    values = data.array[0]
    if values.dtype.kind not in "uif":
        raise RasterError(f"{path}: dtype {values.dtype} is not a class raster")
    if nodata is None:
        valid = np.ones(values.shape, bool)
    elif isinstance(nodata, float) and math.isnan(nodata):
        valid = ~np.isnan(values)
    else:
        valid = values != nodata
    if not valid.any():
        raise RasterError(f"{path}: every pixel is nodata ({nodata}); nothing to generate")
    codes = map_values(values, valid, legend, path, unknown_to_other)
    return _finish(codes, valid, data.crs, data.transform, path, nodata)


def read_landcover_vector(path: str | Path, column: str, resolution: float, legend: Legend | None = None, *,
                          crs: str | None = None, unknown_to_other: bool = False) -> LandCover:
    """Polygons with a class column -> LandCover rasterized at `resolution` (CRS units).

    The class column holds FLAIR codes, FLAIR class names, or (with a legend) the legend's
    source values or labels. Areas no polygon covers are nodata. `crs` reprojects the layer
    (a layer in degrees must be reprojected to a metric CRS).
    """
    import geopandas as gpd
    from rasterio.features import rasterize

    path = Path(path)
    if not path.exists():
        raise VectorError(f"{path}: file not found")
    try:
        gdf = gpd.read_file(path)
    except Exception as exc:  # pyogrio raises several types for unreadable files
        raise VectorError(f"{path}: not a readable vector layer: {exc}") from exc
    # 1. Checks: CRS, column, geometries.
    if gdf.crs is None and crs is None:
        raise GeoreferenceError(f"{path}: layer has no CRS; pass crs=...")
    if gdf.crs is None:
        gdf = gdf.set_crs(crs)
    elif crs is not None and CRS.from_user_input(crs) != CRS.from_user_input(gdf.crs):
        gdf = gdf.to_crs(crs)
    if gdf.crs.is_geographic:
        raise GeoreferenceError(f"{path}: CRS {gdf.crs.to_string()} is in degrees; pass a metric crs= "
                                "(e.g. crs=EPSG:2154) to reproject it")
    if column not in gdf.columns:
        raise VectorError(f"{path}: no class column {column!r}; columns: "
                          f"{', '.join(c for c in gdf.columns if c != 'geometry')}")
    if len(gdf) == 0:
        raise VectorError(f"{path}: the layer has no features")
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
    # 2. Class values -> FLAIR codes.
    codes = [_vector_code(v, legend, path, column, unknown_to_other) for v in gdf[column].tolist()]
    # 3. Rasterize on a grid snapped to the resolution.
    xmin, ymin, xmax, ymax = gdf.total_bounds
    res = float(resolution)
    x0, y1 = math.floor(xmin / res) * res, math.ceil(ymax / res) * res
    width, height = math.ceil((xmax - x0) / res), math.ceil((y1 - ymin) / res)
    if width * height > 400_000_000:
        raise VectorError(f"{path}: {width}x{height} pixels at {res} m is too large; pass a coarser resolution=")
    transform = Affine(res, 0, x0, 0, -res, y1)
    raster = rasterize(zip(gdf.geometry, codes, strict=True), out_shape=(height, width), transform=transform,
                       fill=0, dtype="uint8")
    valid = raster > 0
    return _finish(np.where(valid, raster, OTHER_CODE).astype(np.uint8), valid, CRS.from_user_input(gdf.crs),
                   transform, path)


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
        elif value is not None and float(value) in range(1, MAX_CODE + 1):
            return int(value)
    if unknown_to_other:
        return OTHER_CODE
    known = f"legend {legend.name}" if legend else "the FLAIR legend (codes or names)"
    raise LegendError(f"{path}: {column}={value!r} is not in {known}; pass legend=..., or unknown_to_other=true")


def read_landcover(path: str | Path, *, legend: Legend | None = None, column: str = "class",
                   vector_resolution: float = 0.2, snap: bool = False, crs: str | None = None,
                   unknown_to_other: bool = False, allow_no_crs: bool = False) -> LandCover:
    """Any supported input, by file type."""
    path = Path(path)
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
