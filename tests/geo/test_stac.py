"""STAC Items and Collections: valid offline, placed right, relative hrefs, provenance said."""

import datetime as dt
import json

import numpy as np
import pytest
from affine import Affine
from pyproj import Transformer

from seg2sat.errors import RasterError
from seg2sat.geo import stac
from seg2sat.geo.geotiff import write_geotiff
from seg2sat.geo.raster import FLAIR_CRS

GRID = Affine(0.2, 0, 651000.0, 0, -0.2, 6862000.0)  # Paris, Lambert-93


@pytest.fixture
def image(tmp_path):
    return write_geotiff(tmp_path / "run" / "tile.tif", np.zeros((3, 40, 60), np.uint8), FLAIR_CRS, GRID)


def test_item_is_valid_and_says_where_and_what(image, tmp_path, stac_errors):
    prov = stac.Provenance(model="models/demo", landcover="maps/tile.tif", prompt="Aerial view of Paris.",
                           seed=3, legend="ocsge", software={"seg2sat": "0.1.0"})
    preview = image.with_name("tile_preview.png")
    preview.write_bytes(b"png")
    item = stac.raster_item(image, prov, assets={"preview": stac.AssetFile(preview, ("overview",))}, cog=True)
    path = stac.write_item(item, stac.item_path(image), image.parent)
    assert path == tmp_path / "run" / "tile.stac.json"
    d = json.loads(path.read_text())
    assert stac_errors(d) == []
    p = d["properties"]
    assert p["proj:code"] == "EPSG:2154" and p["proj:shape"] == [40, 60]
    assert p["proj:transform"] == [0.2, 0.0, 651000.0, 0.0, -0.2, 6862000.0]
    assert p["proj:bbox"] == pytest.approx([651000.0, 6861992.0, 651012.0, 6862000.0])
    assert p["seg2sat:generated"] is True and p["seg2sat:model"] == "models/demo" and p["seg2sat:seed"] == 3
    assert p["seg2sat:landcover"] == "maps/tile.tif" and p["seg2sat:legend"] == "ocsge"
    assert p["processing:software"] == {"seg2sat": "0.1.0"} and "models/demo" in p["processing:lineage"]
    assert p["gsd"] == 0.2
    # the WGS84 footprint holds the raster's corners (transformed independently here)
    lon, lat = Transformer.from_crs(2154, 4326, always_xy=True).transform(651000.0, 6862000.0)
    x0, y0, x1, y1 = d["bbox"]
    assert x0 == pytest.approx(lon, abs=1e-6) and y1 == pytest.approx(lat, abs=1e-6)
    assert 2.3 < x0 < x1 < 2.4 and 48.8 < y0 < y1 < 48.9
    assert d["assets"]["image"]["href"] == "./tile.tif" and d["assets"]["image"]["roles"] == ["data", "visual"]
    assert "cloud-optimized" in d["assets"]["image"]["type"]
    assert d["assets"]["preview"] == {"href": "./tile_preview.png", "type": "image/png", "roles": ["overview"]}
    assert d["collection"] == "seg2sat-run"
    assert {(ln["rel"], ln["href"]) for ln in d["links"]} == {("collection", "./collection.json"),
                                                             ("parent", "./collection.json"),
                                                             ("root", "./collection.json")}


def test_a_crs_without_epsg_code_is_given_as_wkt(tmp_path, stac_errors):
    from rasterio.crs import CRS

    local = CRS.from_proj4("+proj=tmerc +lat_0=45 +lon_0=3 +k=1 +x_0=500000 +y_0=0 +ellps=GRS80 +units=m")
    tif = write_geotiff(tmp_path / "a.tif", np.zeros((1, 8, 8), np.uint8), local, Affine(1, 0, 500000, 0, -1, 10))
    d = stac.raster_item(tif, stac.Provenance(model="m")).to_dict(include_self_link=False)
    assert d["properties"]["proj:code"] is None and "TRANSVERSE" in d["properties"]["proj:wkt2"].upper()
    assert stac_errors(d) == []


def test_an_item_needs_a_crs(tmp_path):
    tif = write_geotiff(tmp_path / "nocrs.tif", np.zeros((1, 8, 8), np.uint8), None, Affine(1, 0, 0, 0, -1, 8))
    with pytest.raises(RasterError, match="nocrs.tif: no CRS, so no STAC footprint"):
        stac.raster_item(tif, stac.Provenance(model="m"))


def test_collection_spans_its_items(tmp_path, stac_errors):
    items = []
    for i, (x, when) in enumerate([(651000.0, dt.datetime(2026, 1, 1, tzinfo=dt.UTC)),
                                   (652000.0, dt.datetime(2026, 1, 3, tzinfo=dt.UTC))]):
        tif = write_geotiff(tmp_path / f"t{i}.tif", np.zeros((1, 10, 10), np.uint8), FLAIR_CRS,
                            Affine(0.2, 0, x, 0, -0.2, 6862000.0))
        items.append(stac.write_item(stac.raster_item(tif, stac.Provenance(model="m"), when=when),
                                     stac.item_path(tif), tmp_path))
    path = stac.write_run_collection(tmp_path, title="t", description="d")
    d = json.loads(path.read_text())
    assert stac_errors(d) == []
    first, last = (json.loads(p.read_text())["bbox"] for p in items)
    assert d["extent"]["spatial"]["bbox"] == [[first[0], min(first[1], last[1]), last[2], max(first[3], last[3])]]
    assert d["extent"]["temporal"]["interval"] == [["2026-01-01T00:00:00Z", "2026-01-03T00:00:00Z"]]
    assert sorted(ln["href"] for ln in d["links"] if ln["rel"] == "item") == ["./t0.stac.json", "./t1.stac.json"]
    assert stac.write_run_collection(tmp_path / "empty", title="t", description="d") is None


def test_the_offline_check_sees_a_broken_item(image, stac_errors):
    d = stac.raster_item(image, stac.Provenance(model="m")).to_dict(include_self_link=False)
    d["properties"]["proj:shape"] = [40]  # the projection schema wants [rows, cols]
    del d["properties"]["datetime"]
    problems = stac_errors(d)
    assert any("projection" in p for p in problems) and any("core schema" in p for p in problems)
