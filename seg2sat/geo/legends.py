"""Other land-cover products through a legend: FLAIR codes from NLCD, CORINE, OSO, OCS GE, ...

A `Legend` maps another scheme's class values to FLAIR codes (`conf/legend/*.yaml`: source value
-> FLAIR code or class name). `legend="auto"` recognises the product of a file from its colour
table, its values and its location (`detect_legend`); without a legend, a raster that is
recognisably another product is refused rather than read as FLAIR codes.
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
from omegaconf import OmegaConf
from rasterio.errors import RasterioIOError

from seg2sat.config import CONF_DIR
from seg2sat.errors import LegendError
from seg2sat.geo.inputs import VECTOR_SUFFIXES
from seg2sat.geo.places import centre_lonlat
from seg2sat.geo.raster import RasterData, is_plain_image, raster_info, read_raster
from seg2sat.labels import BY_CODE, OTHER_CODE, OUTSIDE_LEGEND, code_of, describe_counts, in_legend

log = logging.getLogger(__name__)

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


def valid_values(values: np.ndarray, nodatas: Iterable[float | None]) -> np.ndarray:
    """False where a value is any of the nodata values (NaN included)."""
    valid = np.ones(values.shape, bool)
    for nodata in nodatas:
        if nodata is not None:
            valid &= ~np.isnan(values) if math.isnan(nodata) else values != nodata
    return valid


def recognise(values: np.ndarray, path: Path, data: RasterData) -> _Recognition:
    """The products a file's valid class values (with its colour table and place) could come from."""
    return _recognise(_distinct(values), _colour_table(path), _centre_lonlat(data))


def _recognise_file(path: Path) -> _Recognition:
    if path.suffix.lower() in VECTOR_SUFFIXES:
        return _Recognition((), "a vector layer: its class column is read as FLAIR codes or names")
    if is_plain_image(path) or raster_info(path)["count"] != 1:
        return _Recognition((), "not a single-band class raster")
    data = read_raster(path, require_crs=False)
    values = data.array[0]
    return recognise(values[valid_values(values, [data.nodata])], path, data)


def _list_values(values: tuple[float, ...], limit: int = 10) -> str:
    shown = ", ".join(f"{v:g}" for v in values[:limit])
    return shown if len(values) <= limit else f"{shown}, ... ({len(values)} distinct)"


def _pass_hint(seen: _Recognition) -> str:
    names = [lg.name for lg in seen.candidates]
    if len(names) == 1:
        return f"pass legend={names[0]} (or legend=auto)"
    return "pass " + " or ".join(f"legend={n}" for n in names)


def not_flair(path: Path, seen: _Recognition) -> LegendError:
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
            raise LegendError(msg + "; pass legend=<name> (or legend=auto), or unknown_to_other=true to map them to 'other'")
    out[valid] = mapped
    return out


def load_legend(group: Mapping[str, Any] | None, file: str | None = None) -> Legend | str | None:
    """The legend chosen as a config group (`legend=nlcd`), a YAML file (`legend_file=...`), or "auto".

    With `legend=auto` each input's product is recognised by `resolve_legend`.
    """
    if file:
        path = Path(file)
        if not path.exists():
            raise LegendError(f"{path}: legend file not found (legend_file=)")
        return Legend.from_config(OmegaConf.to_container(OmegaConf.load(path), resolve=True))
    if not group:
        return None
    if str(group.get("name", "")).lower() == AUTO:
        return AUTO
    raw = OmegaConf.to_container(group, resolve=True) if OmegaConf.is_config(group) else dict(group)
    return Legend.from_config(raw)
