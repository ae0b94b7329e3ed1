"""The place a raster shows, offline: its centre reprojected to lon/lat, then the nearest city.

Captions name a place ("Aerial view of <place>. ..."), and a prompt that says "France" over a
North Carolina map is simply wrong. We never call a web geocoder: `reverse-geocode` ships the
GeoNames cities (population > 1000) with their county, state and country and answers from a
k-d tree in memory (~1 s to load once per process, then microseconds per lookup).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from affine import Affine

from seg2sat import prompts

WGS84 = "EPSG:4326"


@dataclass(frozen=True)
class Place:
    """The nearest gazetteer city to a point."""

    name: str  # "Raleigh, Wake County, North Carolina, United States"
    city: str
    county: str
    state: str
    country: str
    country_code: str  # ISO 3166-1 alpha-2, "FR" for France
    lon: float
    lat: float

    @property
    def in_france(self) -> bool:
        """True for a place in France (metropolitan or overseas départements with a GeoNames FR code)."""
        return self.country_code == "FR"


@lru_cache(maxsize=8)
def _transformer(crs_wkt: str) -> Any:
    from pyproj import Transformer

    return Transformer.from_crs(crs_wkt, WGS84, always_xy=True)


def centre_lonlat(crs: Any, transform: Affine, width: int, height: int) -> tuple[float, float] | None:
    """The raster's centre in lon/lat degrees, or None without CRS, outside its domain, or for a CRS PROJ cannot use."""
    from pyproj.exceptions import CRSError, ProjError

    if crs is None:
        return None
    x, y = transform * (width / 2, height / 2)
    wkt = crs.to_wkt() if hasattr(crs, "to_wkt") else str(crs)
    try:
        lon, lat = _transformer(wkt).transform(x, y)
    except (ProjError, CRSError):  # a CRS with no way to lon/lat (a damaged or exotic definition)
        return None
    if not (math.isfinite(lon) and math.isfinite(lat)) or abs(lat) > 90 or abs(lon) > 180:
        return None
    return float(lon), float(lat)


def _join(*parts: str) -> str:
    kept: list[str] = []
    for p in parts:
        p = (p or "").strip()
        if p and p not in kept:
            kept.append(p)
    return ", ".join(kept)


def place_at(lon: float, lat: float) -> Place:
    """The nearest GeoNames city to (lon, lat)."""
    import reverse_geocode

    hit = reverse_geocode.get((lat, lon))
    city, county, state = hit.get("city", ""), hit.get("county", ""), hit.get("state", "")
    country = hit.get("country", "")
    return Place(name=_join(city, county, state, country), city=city, county=county, state=state,
                 country=country, country_code=hit.get("country_code", ""), lon=lon, lat=lat)


def raster_place(crs: Any, transform: Affine, width: int, height: int) -> Place | None:
    """The place at the centre of a georeferenced raster (None without a usable CRS)."""
    lonlat = centre_lonlat(crs, transform, width, height)
    return place_at(*lonlat) if lonlat is not None else None


def place_for(meta: Mapping[str, Any] | None, crs: Any = None, transform: Any = None, width: int = 0,
              height: int = 0, fallback: str = prompts.DEFAULT_PLACE) -> str:
    """The caption's place for a tile: its metadata's, else the gazetteer's at the raster centre.

    `fallback` is used only when neither is known (no metadata place and no usable CRS).
    """
    named = prompts.place_of(meta, fallback=None)
    if named:
        return named
    if crs is not None and transform is not None and width and height:
        found = raster_place(crs, transform, width, height)
        if found is not None:
            return found.name
    return fallback


def place_on_grid(place: str | None, crs: Any, transform: Any, width: int, height: int) -> str:
    """The prompt's place for a grid: `place` as written, or the grid's real place.

    `place` is kept unless it is `auto`/empty or the default `France`; the default stays
    "France" over French rasters and names the real place (offline gazetteer at the grid's
    centre) elsewhere. `infer`, `mosaic` and the app's georeferenced uploads all go through
    here, so the same raster gets the same prompt in each.
    """
    place = str(place or "").strip()
    if place not in ("", "auto", prompts.DEFAULT_PLACE):
        return place
    found = raster_place(crs, transform, width, height) if crs is not None else None
    if found is None or (found.in_france and place == prompts.DEFAULT_PLACE):
        return place if place not in ("", "auto") else prompts.DEFAULT_PLACE
    return found.name
