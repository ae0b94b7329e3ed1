"""Recognising a land-cover product from a file: `legend=auto`.

The colour table decides first, then the set of values, then the place (a legend's extent);
a file that matches several products equally is an error that lists them. Without a legend, a
raster that is recognisably another product is refused rather than read as FLAIR codes
(`not_flair`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from rasterio.errors import RasterioIOError

from seg2sat.errors import LegendError
from seg2sat.geo.inputs import VECTOR_SUFFIXES
from seg2sat.geo.legends import AUTO, KNOWN_LEGENDS, Legend, load_named_legend
from seg2sat.geo.places import centre_lonlat
from seg2sat.geo.raster import RasterData, is_plain_image, raster_info, read_raster
from seg2sat.labels import in_legend

log = logging.getLogger(__name__)


# A colour table names a product when most of the product's colours sit at its values. Releases
# differ by a few units (NLCD's embedded tables against its published legend) while two products'
# tables agree on a handful of entries at most, so a small tolerance costs no certainty.
COLOUR_SHARE = 0.6


COLOUR_TOLERANCE = 8


# One distinct value proves nothing: a uniform tile of 42 is as likely a wrong file as NLCD forest.
MIN_DISTINCT_CODES = 2


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
    """The known product a single-band raster holds, or None for FLAIR codes (or no product): `legend=auto`.

    The colour table decides first, then the set of values; see `_recognise` for the rules.
    Vector layers, colour hints and multi-band rasters give None. The choice and its evidence
    are logged, e.g. `x.tif: legend auto -> nlcd (colour table)`.

    Raises:
        LegendError: the file matches several products equally (e.g. values 90, 95: NLCD
            wetlands or WorldCover wetland and mangroves); the message lists them.
    """
    path = Path(path)
    seen = _recognise_file(path)
    chosen = _chosen(path, seen)
    log.info("%s: legend auto -> %s (%s)", path, chosen.name if chosen else "none", seen.reason)
    return chosen


def resolve_legend(path: str | Path, legend: Legend | str | None) -> Legend | None:
    """The legend to read `path` with: a Legend as given, a name in `conf/legend/`, or "auto".

    "auto" runs `detect_legend` on the file. None means FLAIR codes (or FLAIR class names in a
    vector layer), which the readers still check: a raster that is clearly another product is
    refused rather than read as FLAIR codes.

    Raises:
        LegendError: an unknown legend name, or "auto" on a file that matches several products.
    """
    if legend is None or isinstance(legend, Legend):
        return legend
    if legend.strip().lower() != AUTO:
        return load_named_legend(legend.strip())
    return detect_legend(path)
