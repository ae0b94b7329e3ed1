"""Inference on the tiny random model: georeferencing kept, seamless tiling, resume, edits, bad inputs."""

import json

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from affine import Affine
from PIL import Image

from seg2sat.errors import LegendError, RasterError, Seg2SatError
from seg2sat.geo.geotiff import write_geotiff
from seg2sat.geo.raster import FLAIR_CRS
from seg2sat.hints import codes_to_hint, hint_to_codes
from seg2sat.stages import infer

FAST = ["model_path=tiny-random", "sampling.steps=2", "sampling.guidance_scale=1.0", "sampling.batch_size=8", "preview=false", "cog=false"]


@pytest.fixture
def infer_cfg(stage_cfg, tmp_path):
    def make(input_, *overrides):
        return stage_cfg("infer", f"input={input_}", f"output_dir={tmp_path / 'out'}", *FAST, *overrides)

    return make


@pytest.fixture
def real_msk(flair_samples, tmp_path):
    """A real FLAIR mask (512 px) as a GeoTIFF at its real Lambert-93 origin."""
    meta = json.loads((flair_samples / "tiles" / "META_066278.json").read_text())
    codes = hint_to_codes(np.asarray(Image.open(flair_samples / "tiles" / "MSK_066278.png").convert("RGB")))
    transform = Affine(0.2, 0, meta["origin"][0], 0, -0.2, meta["origin"][1])
    return write_geotiff(tmp_path / "MSK_066278.tif", codes[None], FLAIR_CRS, transform)


def _read(path):
    with rasterio.open(path) as src:
        return src.read(), src.crs, src.transform, src.dataset_mask(), src.profile


def test_flair_tile_keeps_crs_transform_size(infer_cfg, real_msk, tmp_path):
    result = infer.run(infer_cfg(real_msk, "preview=true"))
    out = tmp_path / "out" / "MSK_066278.tif"
    assert result.outputs == [out] and result.windows == 11 * 11  # 512 px, tile 64, stride 48
    rgb, crs, transform, mask, profile = _read(out)
    with rasterio.open(real_msk) as src:
        assert crs == src.crs == FLAIR_CRS and transform == src.transform
        assert rgb.shape == (3, src.height, src.width) and rgb.dtype == np.uint8
    assert (mask == 255).all() and profile["compress"] == "deflate" and profile["blockysize"] == 512
    assert rgb.std() > 1  # an image, not a constant
    sidecar = json.loads((tmp_path / "out" / "MSK_066278.tif.json").read_text())
    assert sidecar["seed"] == 0 and sidecar["steps"] == 2 and sidecar["scheduler"] == "unipc"
    assert sidecar["prompt"].startswith("Aerial view of France. ") and sidecar["versions"]["diffusers"]
    assert Image.open(tmp_path / "out" / "MSK_066278_preview.png").size == (512, 512)


def test_nodata_stays_nodata(infer_cfg, tmp_path):
    codes = np.full((96, 80), 6, np.uint8)
    codes[:, 40:] = 11
    codes[10:30, 5:25] = 0  # nodata
    src = write_geotiff(tmp_path / "msk.tif", codes[None], FLAIR_CRS, Affine(0.2, 0, 1000, 0, -0.2, 2000), nodata=0)
    infer.run(infer_cfg(src))
    rgb, crs, transform, mask, _ = _read(tmp_path / "out" / "msk.tif")
    assert rgb.shape == (3, 96, 80) and transform == Affine(0.2, 0, 1000, 0, -0.2, 2000)
    np.testing.assert_array_equal(mask == 0, codes == 0)
    assert (rgb[:, codes == 0] == 0).all()


def test_foreign_legend_raster(infer_cfg, geo_samples, tmp_path):
    src = geo_samples / "strata.tif"
    infer.run(infer_cfg(src, "legend=nc_landsat96", "work_resolution=null"))
    rgb, crs, transform, mask, _ = _read(tmp_path / "out" / "strata.tif")
    with rasterio.open(src) as s:
        values = s.read(1)
        assert crs == s.crs and crs.to_epsg() == 3358 and transform == s.transform
        assert rgb.shape == (3, s.height, s.width)
        np.testing.assert_array_equal(mask == 0, values == s.nodata)
    assert (mask == 0).sum() == 1


def test_foreign_legend_resampled_to_work_resolution(infer_cfg, geo_samples, tmp_path):
    # 28.5 m pixels generated at 57 m (half the size), written back at the input's 28.5 m
    infer.run(infer_cfg(geo_samples / "strata.tif", "legend=nc_landsat96", "work_resolution=57.0"))
    sidecar = json.loads((tmp_path / "out" / "strata.tif.json").read_text())
    assert sidecar["work_resolution"] == pytest.approx(57.0, rel=0.01)
    rgb, _, transform, _, _ = _read(tmp_path / "out" / "strata.tif")
    assert rgb.shape == (3, 443, 489) and transform.a == pytest.approx(28.5)


def test_vector_layer_with_labels(infer_cfg, geo_samples, tmp_path):
    src = geo_samples / "landsat96_polygons.shp"
    infer.run(infer_cfg(src, "legend=nc_landsat96", "class_column=label", "vector_resolution=60",
                        "work_resolution=null"))
    rgb, crs, transform, mask, _ = _read(tmp_path / "out" / "landsat96_polygons.tif")
    layer = gpd.read_file(src)
    assert crs.to_epsg() == 3358 and transform.a == 60 and transform.e == -60
    xmin, ymin, xmax, ymax = layer.total_bounds
    assert transform.c <= xmin < transform.c + 60 and transform.f - 60 < ymax <= transform.f
    assert rgb.shape[1] == pytest.approx((ymax - ymin) / 60, abs=2)
    # polygons are data, the rest nodata
    assert 0 < (mask == 255).mean() < 1


def test_rerun_skips_finished_and_redoes_unfinished(infer_cfg, tmp_path):
    maps = tmp_path / "maps"
    for i, code in enumerate((1, 5, 10)):
        codes = np.full((64, 64), code, np.uint8)
        write_geotiff(maps / f"m{i}.tif", codes[None], FLAIR_CRS, Affine(0.2, 0, 100 * i, 0, -0.2, 500))
    first = infer.run(infer_cfg(maps))
    assert len(first.outputs) == 3 and not first.skipped
    mtime = (tmp_path / "out" / "m0.tif").stat().st_mtime_ns
    (tmp_path / "out" / "m2.tif.json").unlink()  # as if killed before the sidecar
    second = infer.run(infer_cfg(maps))
    assert second.outputs == [tmp_path / "out" / "m2.tif"]
    assert sorted(p.name for p in second.skipped) == ["m0.tif", "m1.tif"]
    assert (tmp_path / "out" / "m0.tif").stat().st_mtime_ns == mtime
    assert not list((tmp_path / "out").glob(".tmp-*"))


def test_same_seed_same_image_and_seed_matters(infer_cfg, tmp_path):
    codes = np.full((64, 64), 6, np.uint8)
    codes[20:40] = 5
    src = write_geotiff(tmp_path / "a.tif", codes[None], FLAIR_CRS, Affine(0.2, 0, 0, 0, -0.2, 100))
    infer.run(infer_cfg(src, f"output_dir={tmp_path}/o1"))
    infer.run(infer_cfg(src, f"output_dir={tmp_path}/o2"))
    infer.run(infer_cfg(src, f"output_dir={tmp_path}/o3", "sampling.seed=1"))
    a, b, c = (_read(tmp_path / o / "a.tif")[0] for o in ("o1", "o2", "o3"))
    np.testing.assert_array_equal(a, b)
    assert np.abs(a.astype(int) - c.astype(int)).mean() > 1


def test_regional_edit_leaves_outside_pixels_identical(infer_cfg, tmp_path):
    rng = np.random.default_rng(0)
    aerial = rng.integers(0, 256, (3, 160, 160), dtype=np.uint8)
    t = Affine(0.2, 0, 5000, 0, -0.2, 9000)
    image = write_geotiff(tmp_path / "aerial.tif", aerial, FLAIR_CRS, t)
    new = np.full((40, 48), 5, np.uint8)  # a lake at rows 60..100, cols 50..98
    new_map = write_geotiff(tmp_path / "lake.tif", new[None], FLAIR_CRS, t * Affine.translation(50, 60))
    margin = 8
    infer.run(infer_cfg(new_map, f"edit.image={image}", f"edit.margin={margin}"))
    out, crs, transform, _, _ = _read(tmp_path / "out" / "lake.tif")
    assert crs == FLAIR_CRS and transform == t and out.shape == aerial.shape
    inside = np.zeros((160, 160), bool)
    inside[60:100, 50:98] = True
    from scipy import ndimage

    near = ndimage.distance_transform_edt(~inside) <= margin
    np.testing.assert_array_equal(out[:, ~near], aerial[:, ~near])
    assert np.abs(out[:, inside].astype(int) - aerial[:, inside].astype(int)).mean() > 20


def test_edit_region_on_another_grid_is_reprojected_not_misplaced(infer_cfg, tmp_path):
    from scipy import ndimage

    rng = np.random.default_rng(1)
    aerial = rng.integers(0, 256, (3, 160, 160), dtype=np.uint8)
    t = Affine(0.2, 0, 5000, 0, -0.2, 9000)
    image = write_geotiff(tmp_path / "aerial.tif", aerial, FLAIR_CRS, t)
    new_map = write_geotiff(tmp_path / "lake.tif", np.full((1, 40, 48), 5, np.uint8), FLAIR_CRS,
                            t * Affine.translation(50, 60))  # rows 60..100, cols 50..98
    # The region at 0.4 m: 10 x 10 of its pixels = rows 60..80, cols 50..70 of the image.
    region = write_geotiff(tmp_path / "region.tif", np.full((1, 10, 10), 1, np.uint8), FLAIR_CRS,
                           Affine(0.4, 0, 5000 + 50 * 0.2, 0, -0.4, 9000 - 60 * 0.2))
    infer.run(infer_cfg(new_map, f"edit.image={image}", f"edit.region={region}", "edit.margin=4"))
    out = _read(tmp_path / "out" / "lake.tif")[0]
    inside = np.zeros((160, 160), bool)
    inside[60:80, 50:70] = True
    near = ndimage.distance_transform_edt(~inside) <= 4
    np.testing.assert_array_equal(out[:, ~near], aerial[:, ~near])  # the lake below row 84 is not the region
    # every part of the region changed, its far corner too (rounding placed a 10 x 10 px region)
    for rows, cols in ((slice(60, 70), slice(50, 60)), (slice(70, 80), slice(60, 70))):
        assert np.abs(out[:, rows, cols].astype(int) - aerial[:, rows, cols].astype(int)).mean() > 20
    far = write_geotiff(tmp_path / "far.tif", np.full((1, 10, 10), 1, np.uint8), FLAIR_CRS,
                        Affine(0.4, 0, 0, 0, -0.4, 100))
    with pytest.raises(RasterError, match="far.tif: the edit region does not overlap .*aerial.tif"):
        infer.run(infer_cfg(new_map, f"edit.image={image}", f"edit.region={far}", "overwrite=true"))


# ---------------------------------------------------------------------------------------------
# Inputs: reading them is tested in tests/test_landcover.py; here, what infer does with them
# ---------------------------------------------------------------------------------------------


GRID = Affine(0.2, 0, 0, 0, -0.2, 100)


def test_bad_input_fails_before_writing_anything(infer_cfg, tmp_path):
    src = write_geotiff(tmp_path / "codes.tif", np.full((1, 64, 64), 42, np.uint8), FLAIR_CRS, GRID)
    with pytest.raises(LegendError, match=r"codes.tif: 4096 pixels hold class values outside the FLAIR legend"):
        infer.run(infer_cfg(src))
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_legend_options_reach_the_reader(infer_cfg, tmp_path):
    values = np.ones((1, 64, 64), np.float32)
    values[0, :8] = 9  # not in the 7-class legend
    src = write_geotiff(tmp_path / "nine.tif", values, FLAIR_CRS, GRID, nodata=-99999.0)
    with pytest.raises(LegendError, match=r"nine.tif: 512 pixels hold class values not in legend nc_landsat96"):
        infer.run(infer_cfg(src, "legend=nc_landsat96"))
    result = infer.run(infer_cfg(src, "legend=nc_landsat96", "unknown_to_other=true"))
    assert result.outputs == [tmp_path / "out" / "nine.tif"]


def test_snapped_hand_drawn_png_is_generated_on_the_given_crs(infer_cfg, flair_samples):
    drawn = flair_samples / "drawn" / "handdrawn_01.png"
    result = infer.run(infer_cfg(drawn, "crs=EPSG:2154", "snap=true"))
    rgb, crs, transform, _, _ = _read(result.outputs[0])
    assert crs == FLAIR_CRS and transform.a == pytest.approx(0.2)
    assert rgb.shape[1:] == Image.open(drawn).size[::-1]


def test_missing_input_and_weights(infer_cfg, tmp_path):
    with pytest.raises(Seg2SatError, match="nowhere.tif: input not found"):
        infer.run(infer_cfg(tmp_path / "nowhere.tif"))
    src = write_geotiff(tmp_path / "a.tif", np.full((1, 64, 64), 1, np.uint8), FLAIR_CRS, GRID)
    from seg2sat.errors import ModelError

    with pytest.raises(ModelError, match="hf download"):
        infer.run(infer_cfg(src, "model_path=rgres/Seg2Sat-sd-controlnet", "base_model=stabilityai/stable-diffusion-2-1-base"))
    with pytest.raises(ModelError, match="needs its distillation LoRA"):
        infer.run(infer_cfg(src, "sampling.scheduler=lcm"))


def test_hint_geotiff_input(infer_cfg, tmp_path):
    codes = np.full((64, 64), 3, np.uint8)
    codes[:, :32] = 1
    src = write_geotiff(tmp_path / "hint.tif", np.moveaxis(codes_to_hint(codes), -1, 0), FLAIR_CRS,
                        Affine(0.2, 0, 10, 0, -0.2, 20))
    result = infer.run(infer_cfg(src))
    assert json.loads((tmp_path / "out" / "hint.tif.json").read_text())["prompt"].endswith(
        "building, impervious surface")
    assert result.outputs


def test_two_processes_share_the_files(tmp_path):
    import os
    import socket
    import subprocess
    import sys

    from seg2sat.config import CONF_DIR

    maps = tmp_path / "maps"
    for i in range(3):
        write_geotiff(maps / f"m{i}.tif", np.full((1, 64, 64), 1 + i, np.uint8), FLAIR_CRS,
                      Affine(0.2, 0, 100 * i, 0, -0.2, 500))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
           str(CONF_DIR / "accelerate" / "cpu_2proc.yaml"), "--main_process_port", str(port),
           str(CONF_DIR.parent / "infer.py"), f"input={maps}", f"output_dir={tmp_path / 'out'}",
           f"paths.root_dir={tmp_path}", *FAST]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    sidecars = sorted((tmp_path / "out").glob("*.tif.json"))
    assert [p.name for p in sidecars] == ["m0.tif.json", "m1.tif.json", "m2.tif.json"]
    # rank 0 took m0 and m2, rank 1 took m1: each file generated exactly once
    assert [json.loads(p.read_text())["process"] for p in sidecars] == ["0/2", "1/2", "0/2"]
    logs = proc.stdout + proc.stderr
    assert sum(logs.count(f"m{i}.tif -> ") for i in range(3)) == 3, logs[-2000:]


def test_a_model_is_prompted_with_the_caption_template_it_was_trained_with(stage_cfg, tmp_path):
    """The template of the training captions travels with the model: infer, mosaic and the app use it."""
    from seg2sat.generation.models import load_model
    from seg2sat.serving.app_support import make_prompt
    from seg2sat.stages import export, mosaic, prepare, sample_data, train

    template = "Vue aérienne de {place}. {classes}"
    # 1. Data captioned with another template, two training steps, an exported model.
    sample_data.run(stage_cfg("sample_data", "domains=[D064_2021,D033_2020]", "tiles_per_domain=4"))
    prepared = prepare.run(stage_cfg("prepare", f"caption.template='{template}'")).prepared_dir
    assert "Vue aérienne de " in (prepared / "manifest.jsonl").read_text(encoding="utf-8")
    run = train.run(stage_cfg("train", "max_steps=2", "checkpointing_steps=2", "batch_size=4", "validation_steps=0"))
    model = export.run(stage_cfg("export", f"run_dir={run.run_dir}", f"output_dir={tmp_path / 'm'}")).model_dir
    # 2. infer and mosaic, with no template in their config, write prompts in the model's template.
    codes = np.full((1, 64, 64), 6, np.uint8)
    codes[0, :, 40:] = 5
    src = write_geotiff(tmp_path / "map.tif", codes, FLAIR_CRS, Affine(0.2, 0, 407000.0, 0, -0.2, 6260000.0))
    infer.run(stage_cfg("infer", f"input={src}", f"model_path={model}", f"output_dir={tmp_path / 'out'}",
                        "sampling.steps=1", "preview=false"))
    sidecar = json.loads((tmp_path / "out" / "map.tif.json").read_text(encoding="utf-8"))
    assert sidecar["prompt"] == "Vue aérienne de France. coniferous, water"
    planned = mosaic.run(stage_cfg("mosaic", f"input={src}", f"model_path={model}", "block=64", "halo=0",
                                   f"output_dir={tmp_path / 'mosaic'}", "check=true"))
    assert set(planned.counts) == {"pending"}  # planned only (a dry run)
    from seg2sat.scale.manifest import opened

    with opened(tmp_path / "mosaic" / "manifest.sqlite") as m:
        assert m.get_meta("prompt") == "Vue aérienne de France. coniferous, water"
    # 3. The app's prompt for the same map, with the model the app loads.
    app_cfg = stage_cfg("app", f"model_path={model}")
    assert make_prompt(codes[0], app_cfg, model=load_model(model)) == "Vue aérienne de France. coniferous, water"
    # an explicit template in the config still wins
    assert make_prompt(codes[0], stage_cfg("app", f"model_path={model}", "prompt.template='{classes}'"),
                       model=load_model(model)) == "coniferous, water"


def test_every_output_has_a_valid_stac_item_and_the_run_a_collection(infer_cfg, tmp_path, stac_errors):
    codes = np.full((64, 96), 6, np.uint8)
    codes[:, 50:] = 11
    maps = tmp_path / "maps"
    for name, origin in (("a", 1000.0), ("b", 2000.0)):
        write_geotiff(maps / f"{name}.tif", codes[None], FLAIR_CRS, Affine(0.2, 0, origin, 0, -0.2, 6_800_000.0))
    infer.run(infer_cfg(maps, "preview=true", "sampling.seed=7"))
    out = tmp_path / "out"
    item = json.loads((out / "a.stac.json").read_text())
    assert stac_errors(item) == []
    with rasterio.open(out / "a.tif") as src:
        assert item["properties"]["proj:code"] == "EPSG:2154" and item["properties"]["proj:shape"] == [src.height, src.width]
        assert item["properties"]["proj:transform"] == list(src.transform)[:6]
    sidecar = json.loads((out / "a.tif.json").read_text())
    p = item["properties"]
    assert p["seg2sat:generated"] is True and p["seg2sat:model"] == "tiny-random" and p["seg2sat:seed"] == 7
    assert p["seg2sat:landcover"] == str(maps / "a.tif") and p["seg2sat:prompt"] == sidecar["prompt"]
    assert p["processing:software"]["diffusers"] == sidecar["versions"]["diffusers"]
    assert {k: v["href"] for k, v in item["assets"].items()} == {
        "image": "./a.tif", "metadata": "./a.tif.json", "preview": "./a_preview.png"}
    collection = json.loads((out / "collection.json").read_text())
    assert stac_errors(collection) == []
    assert sorted(ln["href"] for ln in collection["links"] if ln["rel"] == "item") == ["./a.stac.json", "./b.stac.json"]
