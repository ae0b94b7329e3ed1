"""STAC for every output: an Item per raster, a Collection per run folder, written with pystac.

A catalogue (STAC Browser, pystac-client, QGIS's STAC source, a data lake's indexer) reads these,
not our sidecar JSON. Each Item carries:
- where: `geometry`/`bbox` in WGS84 (the footprint densified, so a reprojected edge stays inside),
  and the projection extension (`proj:code` or `proj:wkt2`, `proj:bbox`, `proj:shape`,
  `proj:transform`) with the raster's own grid;
- what made it: the processing extension (`processing:software` with versions,
  `processing:lineage` in words) and `seg2sat:*` properties saying the image is generated,
  by which model, from which land cover, with which prompt and seed;
- its files as assets with roles: the GeoTIFF (`data`), a preview (`overview`), the sidecar
  (`metadata`), or whatever the caller adds (a synthetic tile's mask: `labels`).

Asset hrefs and links are relative to the item file, so a run folder can be moved or served as
it is. Files are written atomically. Validation is offline in the tests (the STAC core schemas
shipped with pystac, stac-pydantic, and the extensions' JSON schemas kept in tests/).
"""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from seg2sat.atomic import write_json
from seg2sat.errors import RasterError
from seg2sat.geo.raster import bounds_of, raster_info

ITEM_SUFFIX = ".stac.json"
COLLECTION_NAME = "collection.json"
PREFIX = "seg2sat:"  # our own properties (STAC allows prefixed custom fields)
# Points per footprint edge when reprojecting to WGS84: a Lambert-93 edge is a curve in lon/lat.
EDGE_POINTS = 21
MEDIA_TYPES = {
    ".tif": "image/tiff; application=geotiff", ".tiff": "image/tiff; application=geotiff",
    ".png": "image/png", ".jpg": "image/jpeg", ".json": "application/json",
    ".vrt": "application/xml", ".gpkg": "application/geopackage+sqlite3",
    ".safetensors": "application/octet-stream", ".md": "text/markdown", ".yaml": "application/yaml",
}
COG_TYPE = "image/tiff; application=geotiff; profile=cloud-optimized"


@dataclass(frozen=True)
class Provenance:
    """What made a raster: the model, the land cover it follows, the prompt, seed and software."""

    model: str
    landcover: str | None = None  # the land-cover input (a file) it was generated from
    prompt: str | None = None
    seed: int | None = None
    legend: str | None = None  # the legend the land cover was read with (None: FLAIR codes)
    software: Mapping[str, str] = field(default_factory=dict)  # name -> version
    generated: bool = True  # False for a land-cover raster (a synthetic tile's mask)
    edited_image: str | None = None  # a regional edit: the image that was repainted

    def lineage(self) -> str:
        """`processing:lineage`: the making of the raster in one sentence."""
        what = f"Repainted part of {self.edited_image}" if self.edited_image else "Generated"
        source = f" from the land-cover map {self.landcover}" if self.landcover else ""
        legend = f" (legend {self.legend})" if self.legend else ""
        seed = f", seed {self.seed}" if self.seed is not None else ""
        return f"{what} by the Seg2Sat ControlNet {self.model}{source}{legend}{seed}."

    def properties(self) -> dict[str, Any]:
        """The `seg2sat:*` properties (nulls left out)."""
        props = {"generated": self.generated, "model": self.model, "landcover": self.landcover,
                 "prompt": self.prompt, "seed": self.seed, "legend": self.legend, "edited_image": self.edited_image}
        return {PREFIX + k: v for k, v in props.items() if v is not None}


@dataclass(frozen=True)
class AssetFile:
    """A file an Item lists besides its main raster."""

    path: Path
    roles: tuple[str, ...]
    title: str | None = None
    media_type: str | None = None  # None: from the suffix (MEDIA_TYPES)


def item_path(raster: str | Path) -> Path:
    """Where the Item of `raster` goes: beside it, `<stem>.stac.json`."""
    raster = Path(raster)
    return raster.with_name(raster.stem + ITEM_SUFFIX)


def collection_id(folder: str | Path) -> str:
    """The Collection id of a run folder (its items name it in their `collection` field)."""
    return f"seg2sat-{Path(folder).resolve().name}"


def _code(crs: Any) -> tuple[str | None, str | None]:
    """(`proj:code`, `proj:wkt2`): an authority code when the CRS has one, else its WKT."""
    epsg = crs.to_epsg()
    if epsg is not None:
        return f"EPSG:{epsg}", None
    return None, crs.to_wkt()


def footprint(crs: Any, bounds: Sequence[float]) -> tuple[dict[str, Any], list[float]]:
    """(GeoJSON polygon, bbox) of `bounds` in WGS84, each edge densified to EDGE_POINTS."""
    from rasterio.warp import transform

    x0, y0, x1, y1 = bounds
    t = np.linspace(0.0, 1.0, EDGE_POINTS)[:-1]
    xs = np.concatenate([x0 + (x1 - x0) * t, np.full_like(t, x1), x1 - (x1 - x0) * t, np.full_like(t, x0)])
    ys = np.concatenate([np.full_like(t, y0), y0 + (y1 - y0) * t, np.full_like(t, y1), y1 - (y1 - y0) * t])
    lon, lat = transform(crs, "EPSG:4326", xs.tolist(), ys.tolist())
    ring = [[round(a, 7), round(b, 7)] for a, b in zip(lon, lat, strict=True)]
    ring.append(ring[0])
    bbox = [min(lon), min(lat), max(lon), max(lat)]
    return {"type": "Polygon", "coordinates": [ring]}, [round(v, 7) for v in bbox]


def _media_type(path: Path, cog: bool = False) -> str | None:
    if cog and path.suffix.lower() in (".tif", ".tiff"):
        return COG_TYPE
    return MEDIA_TYPES.get(path.suffix.lower())


def _asset(path: Path, roles: Sequence[str], title: str | None, media_type: str | None) -> Any:
    import pystac

    return pystac.Asset(href=str(Path(path).resolve()), title=title, media_type=media_type, roles=list(roles))


def _projection(item: Any, info: Mapping[str, Any]) -> None:
    from pystac.extensions.projection import ProjectionExtension

    proj = ProjectionExtension.ext(item, add_if_missing=True)
    code, wkt = _code(info["crs"])
    proj.code = code
    if wkt:
        proj.wkt2 = wkt
    t = info["transform"]
    proj.shape = [int(info["height"]), int(info["width"])]
    proj.transform = [t.a, t.b, t.c, t.d, t.e, t.f]
    proj.bbox = list(bounds_of(t, info["width"], info["height"]))


def _processing(item: Any, provenance: Provenance, when: dt.datetime) -> None:
    from pystac.extensions.processing import ProcessingExtension

    proc = ProcessingExtension.ext(item, add_if_missing=True)
    proc.lineage = provenance.lineage()
    if provenance.software:
        proc.software = dict(provenance.software)
    proc.datetime = when


def raster_item(raster: str | Path, provenance: Provenance, *, item_id: str | None = None,
                assets: Mapping[str, AssetFile] | None = None, cog: bool = False, title: str | None = None,
                roles: Sequence[str] = ("data", "visual"), when: dt.datetime | None = None) -> Any:
    """The STAC Item (a `pystac.Item`) of one GeoTIFF and the files that go with it.

    Args:
        raster: the GeoTIFF (or VRT); read for its grid only, no pixel is read.
        provenance: what made it (model, land cover, prompt, seed, software).
        item_id: defaults to the raster's stem.
        assets: more files by asset key (`{"preview": AssetFile(png, ("overview",))}`).
        cog: the raster has overviews in the cloud-optimised layout (media type says so).
        title: a human title (defaults to a sentence from `provenance`).
        roles: the main asset's roles (a synthetic tile's mask would be `("data", "labels")`).
        when: the item's `datetime` (default: now, UTC): when the image was made.

    Raises:
        RasterError: the raster has no CRS (an item needs a place).
    """
    import pystac

    # 1. The grid: footprint in WGS84 and the raster's own CRS.
    raster = Path(raster)
    info = raster_info(raster)
    if info["crs"] is None:
        raise RasterError(f"{raster}: no CRS, so no STAC footprint; write georeferenced outputs (crs=)")
    geometry, bbox = footprint(info["crs"], bounds_of(info["transform"], info["width"], info["height"]))
    when = when or dt.datetime.now(dt.UTC)
    kind = "Generated aerial image" if provenance.generated else "Land cover"
    # 2. The item, its extensions and our properties.
    item = pystac.Item(id=item_id or raster.stem, geometry=geometry, bbox=bbox, datetime=when,
                       properties={"title": title or f"{kind} {raster.stem}", "created": pystac.utils.datetime_to_str(when),
                                   **provenance.properties()})
    if info["crs"].linear_units in ("metre", "meter"):
        item.common_metadata.gsd = float(abs(info["transform"].a))
    _projection(item, info)
    _processing(item, provenance, when)
    # 3. The assets: the raster first, then the caller's.
    item.add_asset("image", _asset(raster, roles, title or kind, _media_type(raster, cog)))
    for key, extra in (assets or {}).items():
        item.add_asset(key, _asset(extra.path, extra.roles, extra.title, extra.media_type or _media_type(extra.path)))
    return item


def _relative(href: str, folder: Path) -> str:
    if "://" in href or not os.path.isabs(href):
        return href
    rel = os.path.relpath(href, folder)
    return rel if rel.startswith("..") else f"./{rel}"


def write_item(item: Any, path: str | Path, collection_dir: str | Path | None = None) -> Path:
    """Write a `pystac.Item` to `path` atomically; asset hrefs relative to `path`'s folder.

    With `collection_dir`, the item names that folder's Collection (`collection` field and
    `collection`/`parent`/`root` links to its `collection.json`).
    """
    import pystac

    path = Path(path)
    folder = path.parent.resolve()
    if collection_dir is not None:
        href = _relative(str(Path(collection_dir).resolve() / COLLECTION_NAME), folder)
        item.collection_id = collection_id(collection_dir)
        item.links = [ln for ln in item.links if ln.rel not in ("collection", "parent", "root")]
        for rel in ("collection", "parent", "root"):
            item.add_link(pystac.Link(rel, href, media_type=pystac.MediaType.JSON))
    data = item.to_dict(include_self_link=False, transform_hrefs=False)
    for asset in data["assets"].values():
        asset["href"] = _relative(asset["href"], folder)
    return write_json(path, data)


def _read_items(paths: Iterable[Path]) -> list[dict[str, Any]]:
    return [json.loads(Path(p).read_text(encoding="utf-8")) for p in paths]


def _extent(items: list[dict[str, Any]]) -> tuple[list[float], list[dt.datetime]]:
    boxes = np.array([it["bbox"] for it in items if it.get("bbox")], np.float64)
    bbox = [float(boxes[:, 0].min()), float(boxes[:, 1].min()), float(boxes[:, 2].max()), float(boxes[:, 3].max())]
    times = sorted(dt.datetime.fromisoformat(it["properties"]["datetime"].replace("Z", "+00:00")) for it in items)
    return bbox, [times[0], times[-1]]


def write_collection(folder: str | Path, items: Sequence[str | Path], *, title: str, description: str,
                     bbox: Sequence[float] | None = None, interval: Sequence[dt.datetime] | None = None,
                     keywords: Sequence[str] = ("generated", "aerial imagery", "land cover")) -> Path:
    """`<folder>/collection.json`: a STAC Collection linking `items` (files), written atomically.

    Its spatial and temporal extents are the union of the items' (read from the files) unless
    `bbox` (WGS84) and `interval` ([start, end]) are given — a country mosaic's ~460,000 block
    items are then never opened.

    Raises:
        RasterError: no item to describe and no extent given.
    """
    import pystac

    folder = Path(folder).resolve()
    items = [Path(p).resolve() for p in items]
    if bbox is None or interval is None:
        if not items:
            raise RasterError(f"{folder}: no STAC item to make a collection of")
        found_bbox, found_interval = _extent(_read_items(items))
        bbox, interval = bbox or found_bbox, interval or found_interval
    extent = pystac.Extent(pystac.SpatialExtent([list(bbox)]), pystac.TemporalExtent([list(interval)]))
    collection = pystac.Collection(id=collection_id(folder), description=description, extent=extent, title=title,
                                   license="other", keywords=list(keywords))
    collection.add_link(pystac.Link("root", f"./{COLLECTION_NAME}", media_type=pystac.MediaType.JSON))
    for p in items:
        collection.add_link(pystac.Link("item", _relative(str(p), folder), media_type=pystac.MediaType.GEOJSON))
    return write_json(folder / COLLECTION_NAME, collection.to_dict(include_self_link=False, transform_hrefs=False))


def write_run_collection(folder: str | Path, title: str, description: str) -> Path | None:
    """The Collection of every Item directly in `folder` (`*.stac.json`); None when there is none."""
    folder = Path(folder)
    items = sorted(folder.glob(f"*{ITEM_SUFFIX}"))
    if not items:
        return None
    return write_collection(folder, items, title=title, description=description)
