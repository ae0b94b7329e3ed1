"""The QGIS plugin in real, headless QGIS: each algorithm on the real sample data through `processing.run`.

Run with `python -m pytest -m qgis` (needs Debian's `python3-qgis qgis-providers`; `.ci/run` installs
them). QGIS's Python is the system one: the QGIS side runs in a `/usr/bin/python3` subprocess
(tests/qgis/qgis_driver.py) with the plugin installed as `seg2sat qgis install` installs it on its path,
and the plugin runs the CLI of this test's own interpreter (`sys.executable -m seg2sat.cli`), as it
runs a user's Seg2Sat environment.
Outputs are read back through QGIS (CRS, extent, pixels) and compared with the CLI run directly.
"""

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from rasterio.windows import Window
from shapely.geometry import box

from seg2sat.cli import COMMANDS
from seg2sat.config import CONF_DIR, compose
from seg2sat.geo import styles
from seg2sat.geo.qgis import install_plugin
from seg2sat.stages import infer

pytestmark = pytest.mark.qgis
REPO = CONF_DIR.parent
QGIS_PYTHON = "/usr/bin/python3"
FAST = {"MODEL": "tiny-random", "STEPS": 2, "SEED": 3}
WINDOW = Window(100, 100, 96, 96)  # a pixel-aligned piece of strata.tif (96 x 28.5 m)


def _has_qgis() -> bool:
    probe = subprocess.run([QGIS_PYTHON, "-c", "import qgis.core"], capture_output=True)
    return probe.returncode == 0


@pytest.fixture(scope="module")
def inputs(geo_samples, tmp_path_factory):
    """Real sample data and what the runs need: an extent, a mask polygon, a region, a small raster."""
    if not Path(QGIS_PYTHON).exists() or not _has_qgis():
        pytest.skip("QGIS's Python is absent: apt-get install python3-qgis qgis-providers")
    tmp = tmp_path_factory.mktemp("qgis")
    strata = geo_samples / "strata.tif"
    with rasterio.open(strata) as src:
        t = src.window_transform(WINDOW)
        clip = src.read(1, window=WINDOW)
        profile = {**src.profile, "width": WINDOW.width, "height": WINDOW.height, "transform": t}
    x0, y1 = t.c, t.f
    x1, y0 = x0 + WINDOW.width * t.a, y1 + WINDOW.height * t.e
    small = tmp / "strata_small.tif"
    with rasterio.open(small, "w", **{**profile, "width": 64, "height": 64}) as dst:
        dst.write(clip[None, :64, :64])
    crs = "EPSG:3358"
    polygons = gpd.read_file(geo_samples / "landsat96_polygons.shp")
    # the polygons cover parts of the county only: the mask is a 3 km square around the largest one
    mx, my = polygons.geometry.iloc[int(polygons.area.argmax())].representative_point().coords[0]
    mask_box = box(mx - 1500, my - 1500, mx + 1500, my + 1500)
    gpd.GeoDataFrame(geometry=[mask_box], crs=crs).to_file(tmp / "mask.gpkg")
    covered = gpd.clip(polygons, mask_box)
    # new land cover: the real polygons within ~1 km around a point of the largest one inside the extent
    inside = gpd.clip(polygons, box(x0 + 500, y0 + 500, x1 - 500, y1 - 500))
    cx, cy = inside.geometry.iloc[int(inside.area.argmax())].representative_point().coords[0]
    region = gpd.clip(polygons, box(cx - 450, cy - 450, cx + 450, cy + 450))
    region.to_file(tmp / "region.gpkg", promote_to_multi=True)  # one geometry type, as QGIS wants
    styles.write_styles(tmp / "styles", ["nc_landsat96"])
    bad = tmp / "bad.tif"  # six bands: neither a class raster nor a colour hint
    with rasterio.open(bad, "w", **{**profile, "count": 6, "dtype": "uint8", "nodata": None}) as dst:
        dst.write(np.ones((6, WINDOW.height, WINDOW.width), np.uint8))
    return {"tmp": tmp, "bad": bad, "strata": strata, "small": small, "extent": (x0, x1, y0, y1), "clip": clip,
            "polygons": geo_samples / "landsat96_polygons.shp", "mask": tmp / "mask.gpkg",
            "region": tmp / "region.gpkg", "region_bounds": tuple(region.total_bounds), "styles": tmp / "styles",
            "covered_bounds": tuple(covered.total_bounds), "covered_share": float(covered.area.sum() / box(*covered.total_bounds).area)}


def _spec(i: dict) -> dict:
    tmp, (x0, x1, y0, y1) = i["tmp"], i["extent"]
    extent = f"{x0},{x1},{y0},{y1} [EPSG:3358]"
    generated = str(tmp / "gen" / "strata_aerial.tif")
    runs = {
        "raster": ["generate", {"INPUT": str(i["strata"]), "LEGEND": "nc_landsat96", "EXTENT": extent,
                                "RESOLUTION": 0, **FAST, "OUTPUT": generated}, None],
        "vector": ["generate", {"INPUT": str(i["polygons"]), "CLASS_FIELD": "label", "LEGEND": "nc_landsat96",
                                "MASK": str(i["mask"]), "RESOLUTION": 57.0, **FAST,
                                "OUTPUT": str(tmp / "vec" / "polygons_aerial.tif")}, None],
        "repaint": ["repaint", {"IMAGE": generated, "REGION": str(i["region"]), "CLASS_FIELD": "label",
                                "LEGEND": "nc_landsat96", "MARGIN": 2, **FAST,
                                "OUTPUT": str(tmp / "edit" / "repainted.tif")}, None],
        "plan": ["mosaic", {"INPUT": str(i["small"]), "LEGEND": "nc_landsat96", "RESOLUTION": 28.5, "BLOCK": 64,
                            "HALO": 0, "DRY_RUN": True, **FAST, "OUTPUT_FOLDER": str(tmp / "plan")}, None],
        "mosaic": ["mosaic", {"INPUT": str(i["small"]), "LEGEND": "nc_landsat96", "RESOLUTION": 28.5, "BLOCK": 64,
                              "HALO": 0, "DRY_RUN": False, **FAST, "OUTPUT_FOLDER": str(tmp / "mosaic")}, None],
        "drawing": ["drawing_layer", {"LEGEND": "nlcd", "CRS": "EPSG:5070", "OUTPUT": str(tmp / "draw.gpkg")}, None],
        "bad_legend": ["generate", {"INPUT": str(i["strata"]), "LEGEND": "nope", "EXTENT": extent, **FAST,
                                    "OUTPUT": str(tmp / "bad" / "x.tif")}, None],
        "bad_bands": ["generate", {"INPUT": str(i["bad"]), "LEGEND": "flair", **FAST,
                                   "OUTPUT": str(tmp / "bad" / "z.tif")}, None],
        "bad_command": ["generate", {"INPUT": str(i["strata"]), "LEGEND": "nc_landsat96", "EXTENT": extent, **FAST,
                                     "OUTPUT": str(tmp / "bad" / "y.tif")}, "/nonexistent/seg2sat"],
    }
    if "synthesize" in COMMANDS:
        runs["synthesize"] = ["synthesize", {"SOURCE": str(i["strata"]), "LEGEND": "nc_landsat96", "RESOLUTION": 0,
                                             "N_TILES": 2, **FAST, "OUTPUT_FOLDER": str(tmp / "synth")}, None]
        runs["synthesize_classes"] = ["synthesize", {"SOURCE": str(i["strata"]), "LEGEND": "nc_landsat96",
                                                     "N_TILES": 2, "CLASSES": "water", **FAST,
                                                     "OUTPUT_FOLDER": str(tmp / "synth_bad")}, None]
    return {"command": shlex.join(["env", f"PYTHONPATH={REPO}", sys.executable, "-m", "seg2sat.cli"]), "runs": runs,
            "styles": {"raster_qml": [str(i["strata"]), str(i["styles"] / "nc_landsat96.qml")],
                       "polygons_sld": [str(i["polygons"]), str(i["styles"] / "nc_landsat96_polygons.sld")],
                       "drawing_default": [str(tmp / "draw.gpkg"), ""]}}


@pytest.fixture(scope="module")
def qgis_run(inputs):
    """Every algorithm in one headless QGIS session; its report (see qgis_driver.py)."""
    spec, report = inputs["tmp"] / "spec.json", inputs["tmp"] / "report.json"
    spec.write_text(json.dumps(_spec(inputs)))
    plugins = inputs["tmp"] / "plugins"  # the plugin as installed: cli.json, defaults.json and styles beside it
    install_plugin(plugins_dir=plugins)
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen", "PYTHONPATH": str(plugins),
           "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1"}
    env.pop("PYTHONHOME", None)
    proc = subprocess.run([QGIS_PYTHON, str(Path(__file__).with_name("qgis_driver.py")), str(spec), str(report)],
                          env=env, capture_output=True, text=True, timeout=1500, cwd=inputs["tmp"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(report.read_text())


def _pixels(r: dict) -> np.ndarray:
    """QGIS's pixels as (bands, H, W), nodata as -1 (its 4th band is the GeoTIFF's mask, shown as alpha)."""
    return np.array([[[-1 if v is None else v for v in row] for row in band] for band in r["pixels"]])


def _read(path: Path) -> np.ndarray:
    """The RGB bands and the mask, as rasterio reads them: what QGIS must show."""
    with rasterio.open(path) as src:
        return np.concatenate([src.read(), src.dataset_mask()[None]]).astype(np.int64)


def test_the_provider_offers_every_algorithm(qgis_run):
    assert qgis_run["algorithms"] == ["seg2sat:drawing_layer", "seg2sat:generate", "seg2sat:mosaic",
                                      "seg2sat:repaint", "seg2sat:synthesize"]


def test_generate_from_a_raster_on_an_extent_equals_the_cli(qgis_run, inputs, stage_cfg, tmp_path):
    run = qgis_run["runs"]["raster"]
    assert "error" not in run, run.get("error")
    r = run["raster"]
    x0, x1, y0, y1 = inputs["extent"]
    assert r["crs"] == "EPSG:3358" and r["bands"] == 4 and (r["width"], r["height"]) == (96, 96)
    assert r["extent"] == pytest.approx([x0, y0, x1, y1])
    got = _pixels(r)
    out = Path(run["outputs"]["OUTPUT"])
    np.testing.assert_array_equal(got, _read(out))  # QGIS reads the pixels rasterio reads
    # the same piece of land cover through the CLI directly gives the same image
    with rasterio.open(inputs["strata"]) as src:
        profile = {**src.profile, "width": 96, "height": 96, "transform": src.window_transform(WINDOW)}
    piece = tmp_path / out.name
    with rasterio.open(piece, "w", **profile) as dst:
        dst.write(inputs["clip"][None])
    infer.run(stage_cfg("infer", f"input={piece}", f"output_dir={tmp_path / 'cli'}", "legend=nc_landsat96",
                        "work_resolution=null", "model_path=tiny-random", "sampling.steps=2", "sampling.seed=3",
                        "preview=false"))
    np.testing.assert_array_equal(got, _read(tmp_path / "cli" / out.name))
    assert (out.parent / f"{out.stem}.stac.json").exists()  # the STAC item beside it
    assert run["progress"] and max(run["progress"]) == 100  # progress relayed from the CLI's JSON lines


def test_generate_from_polygons_inside_a_mask(qgis_run, inputs):
    run = qgis_run["runs"]["vector"]
    assert "error" not in run, run.get("error")
    r = run["raster"]
    assert r["crs"] == "EPSG:3358" and r["bands"] == 4
    # the polygons inside the mask, rasterized at 57 m: their bounds (to a pixel), valid where they are
    assert r["extent"] == pytest.approx(list(inputs["covered_bounds"]), abs=57)
    assert r["width"] == pytest.approx((r["extent"][2] - r["extent"][0]) / 57)
    got = _pixels(r)
    valid = got[3] == 255
    assert valid.mean() == pytest.approx(inputs["covered_share"], abs=0.05)
    assert got[:3, valid].std() > 1 and (got[:3, ~valid] == 0).all()
    np.testing.assert_array_equal(got, _read(Path(run["outputs"]["OUTPUT"])))


def test_repaint_changes_only_the_region(qgis_run, inputs):
    run = qgis_run["runs"]["repaint"]
    assert "error" not in run, run.get("error")
    r = run["raster"]
    base = qgis_run["runs"]["raster"]["raster"]
    assert (r["crs"], r["extent"], r["width"], r["height"]) == (base["crs"], base["extent"], base["width"],
                                                                base["height"])
    before, after = _pixels(base), _pixels(r)
    changed = (before[:3] != after[:3]).any(0)
    x0, x1, y0, y1 = inputs["extent"]
    # pixel centres within the region's bounds + the 2-pixel margin (+1 for pixels the polygons touch)
    rx0, ry0, rx1, ry1 = inputs["region_bounds"]
    cols = np.arange(96) * 28.5 + x0 + 14.25
    rows = y1 - (np.arange(96) * 28.5 + 14.25)
    pad = 3 * 28.5
    near = ((rows[:, None] > ry0 - pad) & (rows[:, None] < ry1 + pad) & (cols[None] > rx0 - pad) & (cols[None] < rx1 + pad))
    assert changed.sum() > 50 and not changed[~near].any()


def test_mosaic_dry_run_shows_the_plan_then_the_run_makes_the_vrt(qgis_run, inputs):
    plan = qgis_run["runs"]["plan"]
    assert "error" not in plan, plan.get("error")
    assert plan["outputs"]["PLAN"].startswith("grid") and "GPU-hours" in plan["outputs"]["PLAN"]
    assert not (Path(plan["outputs"]["OUTPUT_FOLDER"]) / "mosaic.vrt").exists()  # nothing generated
    run = qgis_run["runs"]["mosaic"]
    assert "error" not in run, run.get("error")
    r = run["raster"]
    assert run["outputs"]["OUTPUT"].endswith("mosaic.vrt") and r["crs"] == "EPSG:3358" and r["bands"] == 4
    with rasterio.open(inputs["small"]) as src:
        b = src.bounds
    xmin, ymin, xmax, ymax = r["extent"]
    assert xmin <= b.left and ymin <= b.bottom and xmax >= b.right and ymax >= b.top  # the grid covers the input
    got = _pixels(r)
    assert (got[3] == 255).sum() == 64 * 64 and got[:3, got[3] == 255].std() > 1  # valid exactly over the input
    np.testing.assert_array_equal(got, _read(Path(run["outputs"]["OUTPUT"])))
    assert (Path(run["outputs"]["OUTPUT_FOLDER"]) / "collection.json").exists()


def test_drawing_layer_opens_styled_with_its_legend(qgis_run):
    assert "error" not in qgis_run["runs"]["drawing"], qgis_run["runs"]["drawing"].get("error")
    s = qgis_run["styles"]["drawing_default"]  # the .qml beside the GeoPackage is its default style
    assert s["type"] == "categorizedSymbol" and s["field"] == "class" and s["widget"] == "ValueMap"
    expected = styles.legend_classes("nlcd")
    assert [(c[0], c[1]) for c in s["classes"]] == [(c.text, c.hex) for c in expected]


def test_legend_styles_load_in_qgis(qgis_run):
    raster = qgis_run["styles"]["raster_qml"]
    assert raster["ok"] and raster["type"] == "paletted"
    assert [(c[0], c[1], c[2]) for c in raster["classes"]] == [
        (c.value, c.hex, c.label) for c in styles.legend_classes("nc_landsat96")]
    sld = qgis_run["styles"]["polygons_sld"]
    assert sld["ok"] and len(sld["classes"]) == 7 and sld["classes"][5][1] == styles.legend_classes("nc_landsat96")[5].hex


def test_cli_errors_are_qgis_errors(qgis_run):
    assert "legend=nope: no such choice" in qgis_run["runs"]["bad_legend"]["error"]  # the CLI's line
    bad = qgis_run["runs"]["bad_command"]["error"]
    assert "/nonexistent/seg2sat" in bad and "Processing > Options > Providers > Seg2Sat" in bad


def test_errors_name_the_users_layer_not_a_temporary_file(qgis_run, inputs):
    error = qgis_run["runs"]["bad_bands"]["error"]
    assert f"layer 'bad' ({inputs['bad']}): 6 bands of uint8" in error, error
    assert "seg2sat-" not in error  # the plugin's work folder (/tmp/seg2sat-xxxx/z.tif) is not named


def test_parameter_defaults_are_the_clis(qgis_run):
    d = qgis_run["defaults"]
    infer, mosaic = compose("infer"), compose("mosaic")
    assert (d["mosaic"]["RESOLUTION"], d["mosaic"]["BLOCK"], d["mosaic"]["HALO"]) == \
        (mosaic.work_resolution, mosaic.block, mosaic.halo)
    assert d["repaint"]["MARGIN"] == infer.edit.margin and d["generate"]["SEED"] == infer.sampling.seed
    assert d["synthesize"]["N_TILES"] == compose("synthesize").target.n_tiles == 48
    assert d["drawing_layer"]["CRS"] == compose("qgis").crs


def test_synthesize_training_tiles(qgis_run, inputs):
    if "synthesize" not in COMMANDS:
        pytest.skip("`seg2sat synthesize` is not a command of this version (the algorithm calls it)")
    run = qgis_run["runs"]["synthesize"]
    assert "error" not in run, run.get("error")
    out = Path(run["outputs"]["OUTPUT_FOLDER"])
    images, masks = sorted(out.rglob("IMG_*.tif")), sorted(out.rglob("MSK_*.tif"))
    assert len(images) == len(masks) == 2
    with rasterio.open(inputs["strata"]) as src:
        crs, res = src.crs, src.res
    for img, msk in zip(images, masks, strict=True):
        with rasterio.open(img) as a, rasterio.open(msk) as b:
            assert a.crs == b.crs == crs and a.res == b.res == res and a.transform == b.transform
            assert a.count == 3 and b.count == 1
            assert b.colormap(1)[1] == styles.colormap()[1]  # the FLAIR colour table (1 building)
        item = json.loads(img.with_name(img.stem + ".stac.json").read_text())
        record = json.loads((out / "tiles" / f"{img.stem[4:]}.json").read_text())
        assert item["properties"]["seg2sat:seed"] == record["seed"] and record["score"] is None
        assert item["assets"]["mask"]["roles"] == ["data", "labels"]
    collection = json.loads((out / "collection.json").read_text())
    assert sum(link["rel"] == "item" for link in collection["links"]) == 2
    report = json.loads((out / "report.json").read_text())
    assert report["accepted"] == 2 and report["score"] is None  # no prepared dataset: kept unjudged
    assert "give PREPARED" in qgis_run["runs"]["synthesize_classes"]["error"]
