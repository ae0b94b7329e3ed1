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

import functools
import logging
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import rasterio.warp
from affine import Affine
from omegaconf import OmegaConf
from PIL import Image
from rasterio.crs import CRS
from rasterio.errors import RasterioIOError

from seg2sat.config import CONF_DIR
from seg2sat.errors import GeoreferenceError, LegendError, RasterError, VectorError
from seg2sat.hints import hint_to_codes, snap_hint
from seg2sat.labels import BY_CODE, OTHER_CODE, OUTSIDE_LEGEND, code_of, describe_counts, in_legend
from seg2sat.raster import (
    FLAIR_RESOLUTION,
    RasterData,
    check_transform,
    is_plain_image,
    local_transform,
    raster_info,
    read_raster,
)

log = logging.getLogger(__name__)

VECTOR_SUFFIXES = frozenset({".gpkg", ".geojson", ".json", ".shp", ".fgb"})
RASTER_SUFFIXES = frozenset({".tif", ".tiff", ".png", ".jpg", ".jpeg", ".vrt"})

LEGEND_DIR: Path = CONF_DIR / "legend"
# The products `detect_legend` knows: the legends shipped in LEGEND_DIR (a test keeps the two equal).
KNOWN_LEGENDS: tuple[str, ...] = ("corine", "corine_grid", "dynamic_world", "nc_landsat96", "nlcd", "ocsge", "oso",
                                  "worldcover")
AUTO = "auto"  # legend="auto": recognise the product of each file
# A colour table names a product when most of the product's colours sit at its values. Releases
# differ by a few units (NLCD's embedded tables against its published legend) while two products'
# tables agree on a handful of entries at most, so a small tolerance costs no certainty.
COLOUR_SHARE = 0.6
COLOUR_TOLERANCE = 8
# One distinct value proves nothing: a uniform tile of 42 is as likely a wrong file as NLCD forest.
MIN_DISTINCT_CODES = 2
_HEX = re.compile(r"#[0-9a-fA-F]{6}")
_LEGEND_NAME = re.compile(r"[A-Za-z0-9_-]+")


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
    colors: dict[float, str] = field(default_factory=dict)  # source value -> the product's "#rrggbb"
    detect_values: bool = True  # may `detect_legend` recognise the product from a raster's values alone
    extent: tuple[float, float, float, float] | None = None  # west, south, east, north (degrees); None: global

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> Legend:
        """From a `conf/legend/*.yaml` mapping; FLAIR codes may be given by name.

        Keys: `name`, `map` (source value -> FLAIR code or class name) or `recode` (`legend`:
        another legend's name, `values`: source value -> that legend's value), and optional
        `nodata`, `colors` (source value -> "#rrggbb"), `labels` (text -> source value),
        `detect_values` (false: only a colour table identifies the product) and `extent` (the
        product's coverage, [west, south, east, north] in degrees, to tell apart products whose
        codes overlap).

        Raises:
            LegendError: naming the legend and the bad entry.
        """
        name = str(cfg.get("name", "legend"))
        if cfg.get("recode") is not None:
            if cfg.get("map"):
                raise LegendError(f"legend {name}: give `map` or `recode`, not both")
            mapping, colors, labels = _recoded(name, cfg["recode"])
        else:
            mapping = _parse_map(name, cfg.get("map"))
            colors = _parse_colors(name, cfg.get("colors"), mapping)
            labels = _parse_labels(name, cfg.get("labels"), mapping)
        nodata = cfg.get("nodata")
        return cls(name=name, mapping=mapping, labels=labels, nodata=None if nodata is None else float(nodata),
                   colors=colors, detect_values=bool(cfg.get("detect_values", True)),
                   extent=_parse_extent(name, cfg.get("extent")))


def _parse_map(name: str, raw: Mapping[Any, Any] | None) -> dict[float, int]:
    mapping: dict[float, int] = {}
    for src, dst in dict(raw or {}).items():
        try:
            code = code_of(str(dst)) if isinstance(dst, str) else int(dst)
        except KeyError as exc:
            raise LegendError(f"legend {name}: target {dst!r} of {src!r}: {exc.args[0]}") from None
        if code not in BY_CODE:
            raise LegendError(f"legend {name}: target {dst!r} of {src!r} is not a FLAIR code")
        mapping[float(src)] = code
    if not mapping:
        raise LegendError(f"legend {name}: empty `map`")
    return mapping


def _parse_colors(name: str, raw: Mapping[Any, Any] | None, mapping: Mapping[float, int]) -> dict[float, str]:
    colors: dict[float, str] = {}
    for src, hex_ in dict(raw or {}).items():
        if float(src) not in mapping:
            raise LegendError(f"legend {name}: colour of {src!r}, a value that `map` does not list")
        if not isinstance(hex_, str) or not _HEX.fullmatch(hex_):
            raise LegendError(f"legend {name}: colour {hex_!r} of {src!r} is not \"#rrggbb\"")
        colors[float(src)] = hex_.lower()
    return colors


def _parse_labels(name: str, raw: Mapping[Any, Any] | None, mapping: Mapping[float, int]) -> dict[str, float]:
    labels = {str(k).strip().lower(): float(v) for k, v in dict(raw or {}).items()}
    for label, value in labels.items():
        if value not in mapping:
            raise LegendError(f"legend {name}: label {label!r} points to {value:g}, a value that `map` does not list")
    return labels


def _parse_extent(name: str, raw: Any) -> tuple[float, float, float, float] | None:
    if raw is None:
        return None
    try:
        west, south, east, north = (float(v) for v in raw)
    except (TypeError, ValueError):
        raise LegendError(f"legend {name}: extent {raw!r} is not [west, south, east, north]") from None
    if not (-180 <= west < east <= 180 and -90 <= south < north <= 90):
        raise LegendError(f"legend {name}: extent {raw!r} is not [west, south, east, north] in degrees")
    return west, south, east, north


def _recoded(name: str, recode: Mapping[str, Any]) -> tuple[dict[float, int], dict[float, str], dict[str, float]]:
    """Map, colours and labels of a legend whose values stand for another legend's values.

    The CORINE raster stores grid codes 1..44 for the CLC codes 111..523: recoding keeps the
    class mapping (and its judgement calls) in one file.
    """
    base = load_named_legend(str(recode.get("legend")))
    values = {float(k): float(v) for k, v in dict(recode.get("values") or {}).items()}
    missing = sorted(v for v in values.values() if v not in base.mapping)
    if missing:
        raise LegendError(f"legend {name}: recoded values {', '.join(f'{v:g}' for v in missing)} "
                          f"are not in legend {base.name}")
    if not values:
        raise LegendError(f"legend {name}: empty `recode.values`")
    back = {v: k for k, v in values.items()}
    mapping = {k: base.mapping[v] for k, v in values.items()}
    colors = {k: base.colors[v] for k, v in values.items() if v in base.colors}
    labels = {label: back[v] for label, v in base.labels.items() if v in back}
    return mapping, colors, labels


# ---------------------------------------------------------------------------------------------
# Known legends, and recognising a product from a raster
# ---------------------------------------------------------------------------------------------


def load_named_legend(name: str) -> Legend:
    """`conf/legend/NAME.yaml` as a Legend, e.g. `load_named_legend("nlcd")`.

    Raises:
        LegendError: no such legend; the message lists the known ones.
    """
    if not _LEGEND_NAME.fullmatch(name):
        raise LegendError(f"legend {name!r} is not a legend name; known: {', '.join(KNOWN_LEGENDS)}, or auto")
    return _load_legend_file(LEGEND_DIR / f"{name}.yaml")


@functools.lru_cache(maxsize=64)
def _load_legend_file(path: Path) -> Legend:
    if not path.is_file():
        raise LegendError(f"{path}: no such legend; known: {', '.join(KNOWN_LEGENDS)}, or auto")
    return Legend.from_config(OmegaConf.to_container(OmegaConf.load(path), resolve=True))


@dataclass(frozen=True)
class _Recognition:
    """What a file looks like: the products it matches (none: FLAIR codes or unknown) and why."""

    candidates: tuple[Legend, ...]
    reason: str  # "colour table", "values", or why nothing was recognised
    values: tuple[float, ...] = ()  # the distinct valid values, for messages


def _hex_rgb(hex_: str) -> tuple[int, int, int]:
    return int(hex_[1:3], 16), int(hex_[3:5], 16), int(hex_[5:7], 16)


def _colour_share(table: Mapping[int, tuple[int, ...]], legend: Legend) -> float:
    """Share of the legend's colours that the colour table holds at the same values."""
    hits = 0
    for value, hex_ in legend.colors.items():
        entry = table.get(int(value))
        if entry is not None and max(abs(a - b) for a, b in zip(entry[:3], _hex_rgb(hex_), strict=True)) \
                <= COLOUR_TOLERANCE:
            hits += 1
    return hits / len(legend.colors)


def _by_colour_table(table: Mapping[int, tuple[int, ...]], legends: Iterable[Legend]) -> tuple[Legend, ...]:
    shares = {lg.name: _colour_share(table, lg) for lg in legends if lg.colors}
    best = max(shares.values(), default=0.0)
    if best < COLOUR_SHARE:
        return ()
    return tuple(lg for lg in legends if shares.get(lg.name) == best)


def _by_values(values: Iterable[float], legends: Iterable[Legend]) -> tuple[Legend, ...]:
    """Products whose codes hold every value (at least MIN_DISTINCT_CODES of them).

    A product that needs its nodata value to explain the values (NLCD's 0 in a file that does
    not declare it) counts only when no product explains them without.
    """
    present = set(values)
    exact: list[Legend] = []
    with_nodata: list[Legend] = []
    for lg in legends:
        codes = present & lg.mapping.keys()
        if not lg.detect_values or len(codes) < MIN_DISTINCT_CODES:
            continue
        rest = present - codes
        if not rest:
            exact.append(lg)
        elif rest == {lg.nodata}:
            with_nodata.append(lg)
    return tuple(exact or with_nodata)


def _covers(legend: Legend, lonlat: tuple[float, float]) -> bool:
    if legend.extent is None:
        return True
    west, south, east, north = legend.extent
    return west <= lonlat[0] <= east and south <= lonlat[1] <= north


def _recognise(values: np.ndarray, table: Mapping[int, tuple[int, ...]] | None,
               lonlat: tuple[float, float] | None = None) -> _Recognition:
    """Which known products distinct class values (and a colour table) could come from.

    1. A colour table that is most of a product's colour table names the product, whatever the
       values: it is the one unambiguous signature (NLCD 11 is water, FLAIR 11 is cropland).
    2. Values that are all FLAIR codes 1..19 are FLAIR codes: values alone cannot tell FLAIR 11
       from NLCD 11, and FLAIR is what this package reads without a legend.
    3. Otherwise, the products whose codes hold every value (`_by_values`). When several do, the
       raster's location (`lonlat`, its centre) keeps those whose coverage holds it: {11, 12, 21}
       is NLCD in Colorado and OSO in France. Several left = ambiguous.
    """
    legends = [load_named_legend(name) for name in KNOWN_LEGENDS]
    found = tuple(float(v) for v in values.tolist())
    if table:
        by_colour = _by_colour_table(table, legends)
        if by_colour:
            return _Recognition(by_colour, "colour table", found)
    if bool(in_legend(values).all()):
        return _Recognition((), "values are FLAIR codes", found)
    by_values = _by_values(found, legends)
    if len(by_values) > 1 and lonlat is not None:
        here = tuple(lg for lg in by_values if _covers(lg, lonlat))
        if here and len(here) < len(by_values):
            return _Recognition(here, "values and location", found)
    return _Recognition(by_values, "values" if by_values else "no known product has these values", found)


def _centre_lonlat(data: RasterData) -> tuple[float, float] | None:
    """The raster's centre in degrees, or None without a CRS (`places.centre_lonlat`)."""
    from seg2sat.places import centre_lonlat

    return centre_lonlat(data.crs, data.transform, data.width, data.height)


def _distinct(values: np.ndarray) -> np.ndarray:
    """Sorted distinct values; integer classes are counted (a bincount), far faster than a sort."""
    if values.size and values.dtype.kind in "ui":
        lo, hi = int(values.min()), int(values.max())
        if hi - lo < 1 << 20:
            counts = np.bincount(values.ravel().astype(np.intp) - lo)
            return np.flatnonzero(counts) + lo
    return np.unique(values)


def _colour_table(path: Path) -> dict[int, tuple[int, ...]] | None:
    """Band 1's colour table, or None (most class rasters have none)."""
    try:
        with rasterio.open(path) as src:
            return dict(src.colormap(1))
    except (ValueError, RasterioIOError):  # rasterio: ValueError "NULL color table"
        return None


def _valid_mask(values: np.ndarray, nodatas: Iterable[float | None]) -> np.ndarray:
    """False where a value is any of the nodata values (NaN included)."""
    valid = np.ones(values.shape, bool)
    for nodata in nodatas:
        if nodata is not None:
            valid &= ~np.isnan(values) if math.isnan(nodata) else values != nodata
    return valid


def _recognise_file(path: Path) -> _Recognition:
    if path.suffix.lower() in VECTOR_SUFFIXES:
        return _Recognition((), "a vector layer: its class column is read as FLAIR codes or names")
    if is_plain_image(path) or raster_info(path)["count"] != 1:
        return _Recognition((), "not a single-band class raster")
    data = read_raster(path, require_crs=False)
    values = data.array[0]
    return _recognise(_distinct(values[_valid_mask(values, [data.nodata])]), _colour_table(path),
                      _centre_lonlat(data))


def _list_values(values: tuple[float, ...], limit: int = 10) -> str:
    shown = ", ".join(f"{v:g}" for v in values[:limit])
    return shown if len(values) <= limit else f"{shown}, ... ({len(values)} distinct)"


def _pass_hint(seen: _Recognition) -> str:
    names = [lg.name for lg in seen.candidates]
    if len(names) == 1:
        return f"pass legend={names[0]} (or legend=auto)"
    return "pass " + " or ".join(f"legend={n}" for n in names)


def _not_flair(path: Path, seen: _Recognition) -> LegendError:
    """The error for a file read as FLAIR codes that is another product's."""
    names = " or ".join(lg.name for lg in seen.candidates)
    if seen.reason == "colour table":
        return LegendError(f"{path}: its colour table is that of {names}, so its values are not FLAIR codes; "
                           f"{_pass_hint(seen)}")
    return LegendError(f"{path}: values {_list_values(seen.values)} are not FLAIR codes; they look like {names}; "
                       f"{_pass_hint(seen)}")


def _chosen(path: Path, seen: _Recognition) -> Legend | None:
    if len(seen.candidates) > 1:
        names = " or ".join(lg.name for lg in seen.candidates)
        what = "its colour table" if seen.reason == "colour table" else f"values {_list_values(seen.values)}"
        raise LegendError(f"{path}: legend auto cannot choose: {what} could be {names}; {_pass_hint(seen)}")
    return seen.candidates[0] if seen.candidates else None


def detect_legend(path: str | Path) -> Legend | None:
    """The known product a single-band raster holds, or None for FLAIR codes (or no product).

    The colour table decides first, then the set of values; see `_recognise` for the rules.
    Vector layers, colour hints and multi-band rasters give None.

    Raises:
        LegendError: the file matches several products equally (e.g. values 90, 95: NLCD
            wetlands or WorldCover wetland and mangroves); the message lists them.
    """
    path = Path(path)
    return _chosen(path, _recognise_file(path))


def resolve_legend(path: str | Path, legend: Legend | str | None) -> Legend | None:
    """The legend to read `path` with: a Legend as given, a name in `conf/legend/`, or "auto".

    "auto" runs `detect_legend` on the file and logs its choice and the evidence, e.g.
    `x.tif: legend auto -> nlcd (colour table)`. None means FLAIR codes (or FLAIR class names in a
    vector layer), which the readers still check: a raster that is clearly another product is
    refused rather than read as FLAIR codes.

    Raises:
        LegendError: an unknown legend name, or "auto" on a file that matches several products.
    """
    if legend is None or isinstance(legend, Legend):
        return legend
    if legend.strip().lower() != AUTO:
        return load_named_legend(legend.strip())
    path = Path(path)
    seen = _recognise_file(path)
    chosen = _chosen(path, seen)
    log.info("%s: legend auto -> %s (%s)", path, chosen.name if chosen else "none", seen.reason)
    return chosen


# ---------------------------------------------------------------------------------------------
# Value -> code
# ---------------------------------------------------------------------------------------------


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
                              f"({describe_counts(v[frac])}); a class raster must hold integer codes")
    if legend is None:
        known = in_legend(v)
        mapped = np.where(known, v, OTHER_CODE).astype(np.uint8)
    else:
        lut_src = np.array(sorted(legend.mapping), np.float64)
        lut_dst = np.array([legend.mapping[k] for k in lut_src], np.uint8)
        idx = np.clip(np.searchsorted(lut_src, v.astype(np.float64)), 0, len(lut_src) - 1)
        known = lut_src[idx] == v
        mapped = np.where(known, lut_dst[idx], OTHER_CODE).astype(np.uint8)
    if not known.all():
        what = f"not in legend {legend.name}" if legend else OUTSIDE_LEGEND
        msg = f"{source}: {int((~known).sum())} pixels hold class values {what} ({describe_counts(v[~known])})"
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
    valid = _valid_mask(values, nodatas)
    if not valid.any():
        shown = " and ".join(f"{n:g}" for n in dict.fromkeys(nodatas) if n is not None)
        raise RasterError(f"{path}: every pixel is nodata ({shown}); nothing to generate")
    if legend is None:
        seen = _recognise(_distinct(values[valid]), _colour_table(path), _centre_lonlat(data))
        if seen.candidates:
            raise _not_flair(path, seen)
    codes = map_values(values, valid, legend, path, unknown_to_other)
    nodata = data.nodata if data.nodata is not None else (legend.nodata if legend is not None else None)
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
