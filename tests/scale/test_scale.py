"""Country-scale mosaics on the tiny random model: plan, blocks, VRT, resume, faults, Ray, determinism."""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from affine import Affine

from seg2sat.atomic import sha256_of
from seg2sat.config import compose
from seg2sat.errors import BatchError, ConfigError
from seg2sat.geo.geotiff import write_geotiff
from seg2sat.geo.raster import FLAIR_CRS
from seg2sat.scale.blocks import axis_weight
from seg2sat.scale.grid import plan_grid
from seg2sat.scale.manifest import MANIFEST_NAME, opened
from seg2sat.stages import mosaic

REPO = Path(__file__).resolve().parent.parent
FAST = ["model_path=tiny-random", "sampling.steps=2", "sampling.guidance_scale=1.0", "sampling.batch_size=8", "block=128", "halo=64",
        "prompt.text=Aerial view"]
# The input: 232x240 px at 0.2 m whose top-left is lattice pixel (row -30_000_000 + 8, col 1296),
# inside a grid of 2x2 blocks of 128 px; a nodata hole at its top-left.
X0, Y0 = 1296 * 0.2, 6_000_000.0 - 8 * 0.2


def _landcover(path: Path, bad_block: bool = False) -> Path:
    rng = np.random.default_rng(0)
    codes = np.repeat(np.repeat(rng.choice([1, 2, 6, 10, 11], size=(8, 8)), 32, 0), 32, 1)[:240, :232]
    codes = codes.astype(np.uint8)
    codes[:20, :30] = 0  # nodata
    if bad_block:
        codes[200:210, 200:210] = 99  # not a FLAIR code: the bottom-right block fails to read
    return write_geotiff(path, codes[None], FLAIR_CRS, Affine(0.2, 0, X0, 0, -0.2, Y0), nodata=0)


@pytest.fixture(scope="module")
def lc_path(tmp_path_factory) -> Path:
    return _landcover(tmp_path_factory.mktemp("lc") / "landcover.tif")


def _cfg(out: Path, lc: Path, *overrides: str):
    return compose("mosaic", [f"paths.root_dir={out.parent}", f"input={lc}", f"output_dir={out}", *FAST, *overrides])


def _read(vrt: Path):
    with rasterio.open(vrt) as src:
        return src.read(), src.dataset_mask(), src.crs, src.transform, src.shape


@pytest.fixture(scope="module")
def reference(lc_path, tmp_path_factory):
    """An uninterrupted local run: what every other way of making the mosaic must equal."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = tmp_path_factory.mktemp("ref") / "out"
        result = mosaic.run(_cfg(out, lc_path))
    finally:
        torch.set_num_threads(n)
    return result, _read(result.vrt)


# ---------------------------------------------------------------------------------------------
# Plan and weights (no model)
# ---------------------------------------------------------------------------------------------


def test_plan_grid_on_global_lattice():
    grid = plan_grid((X0, Y0 - 240 * 0.2, X0 + 232 * 0.2, Y0), FLAIR_CRS.to_wkt(), 0.2, 128, 64, 64)
    assert (grid.row0, grid.col0, grid.width, grid.height) == (-30_000_000, 1280, 256, 256)
    assert grid.transform == Affine(0.2, 0, 256.0, 0, -0.2, 6_000_000.0)
    assert grid.ext(0, 0) == (0, 0, 192, 192) and grid.ext(1, 1) == (64, 64, 256, 256)
    with pytest.raises(ConfigError, match="multiples of the tile 64"):
        plan_grid((0, 0, 10, 10), FLAIR_CRS.to_wkt(), 0.2, 100, 64, 64)
    with pytest.raises(ConfigError, match="larger than block"):
        plan_grid((0, 0, 10, 10), FLAIR_CRS.to_wkt(), 0.2, 128, 192, 64)


def test_noise_offset_is_the_noise_of_the_global_position():
    from seg2sat.generation.windows import initial_noise

    whole = initial_noise(7, 48, 64, 16, offset=(0, 0))
    piece = initial_noise(7, 32, 32, 16, offset=(1, 2))
    torch.testing.assert_close(piece, whole[:, :, 16:48, 32:64], rtol=0, atol=0)
    assert not torch.equal(initial_noise(7, 32, 32, 16), piece)


def test_origin_off_the_tile_is_refused():
    from seg2sat.errors import TilingError
    from seg2sat.generation.tiling import generate_tiled
    from seg2sat.generation.tiny import build_tiny_pipeline

    with pytest.raises(TilingError, match=r"origin \(8, 0\) must be a multiple of the tile 64"):
        generate_tiled(build_tiny_pipeline(0), np.full((64, 64), 6, np.uint8), "x", lambda r, rgb: None, steps=1,
                       tile=64, overlap=16, guidance_scale=1.0, origin=(8, 0))


def test_manifest_rows_and_bounds(tmp_path):
    grid = plan_grid((0, 0, 1000, 500), FLAIR_CRS.to_wkt(), 0.2, 512, 64, 64)
    with opened(tmp_path / "m.sqlite") as m:
        assert m.add_blocks(grid, chunk=7) == grid.rows * grid.cols == 10 * 5
        rows = m.blocks()
        assert rows[0]["id"] == "r00000_c00000" and rows[0]["state"] == "pending"
        assert (rows[0]["xmin"], rows[0]["ymax"]) == pytest.approx((0.0, 512 * 0.2 * 5))
        assert m.add_blocks(grid) == 50 and len(m.blocks()) == 50  # re-planning adds nothing
        assert m.counts() == {"pending": 50}


def test_cross_fade_weights_sum_to_one():
    total = np.zeros(384)
    for core0 in (0, 128, 256):
        start = max(0, core0 - 64)
        w = axis_weight(min(384, core0 + 192) - start, start, core0, core0 + 128, 384, 64)
        total[start:start + len(w)] += w
    np.testing.assert_allclose(total, 1.0)
    own = axis_weight(128, 128, 128, 256, 384, 64)
    assert own[0] == pytest.approx(0.5 + 0.5 / 128) and own.max() == pytest.approx(1 - 0.5 / 128)  # fades meet
    wide = axis_weight(512, 0, 0, 512, 1024, 64)  # a grid edge has no fade; the interior is 1
    assert wide[0] == 1.0 and wide[447] == 1.0 and wide[-1] == pytest.approx(0.5 + 0.5 / 128)


def test_dry_run_plans_extent_without_model(tmp_path, capsys):
    cfg = compose("mosaic", [f"paths.root_dir={tmp_path}", f"output_dir={tmp_path / 'plan'}", "crs=EPSG:2154",
                             "extent=[99000,6040000,101000,6041000]", "check=true", "model_path=tiny-random",
                             "block=1024", "halo=64", "sampling.steps=20"])
    result = mosaic.run(cfg)
    printed = capsys.readouterr().out
    assert result.grid.rows * result.grid.cols == 6 * 11 and result.counts == {"pending": 66}
    assert "66 (6x11) of 1024 px" in printed and "GPU-hours at 62.1 window-steps/s" in printed
    with pytest.raises(ConfigError, match="can only be planned"):
        mosaic.run(compose("mosaic", [f"paths.root_dir={tmp_path}", f"output_dir={tmp_path / 'plan'}",
                                      "crs=EPSG:2154", "extent=[99000,6040000,101000,6041000]",
                                      "model_path=tiny-random", "block=1024", "halo=64", "sampling.steps=20"]))


def test_engine_ray_without_ray_is_a_clear_error(monkeypatch, tmp_path, lc_path):
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(ConfigError, match=r'pip install "seg2sat\[ray\]"'):
        mosaic.run(_cfg(tmp_path / "out", lc_path, "engine=ray"))


# ---------------------------------------------------------------------------------------------
# Local engine
# ---------------------------------------------------------------------------------------------


def test_mosaic_is_one_georeferenced_raster(reference, lc_path):
    result, (rgb, mask, crs, transform, shape) = reference
    assert result.counts == {"done": 4} and sorted(result.composed) == [
        "r00000_c00000", "r00000_c00001", "r00001_c00000", "r00001_c00001"]
    assert crs == FLAIR_CRS and shape == (256, 256) and transform == Affine(0.2, 0, 256.0, 0, -0.2, 6_000_000.0)
    with rasterio.open(lc_path) as src:  # valid exactly where the input is (hole and outside masked)
        inside = np.zeros((256, 256), bool)
        inside[8:248, 16:248] = src.read(1) != 0
    np.testing.assert_array_equal(mask == 255, inside)
    assert rgb[:, inside].std() > 5 and (rgb[:, ~inside] == 0).all()
    with rasterio.open(result.out_dir / "blocks" / "r00001_c00000.tif") as blk:  # a block is a piece of it
        assert blk.transform == Affine(0.2, 0, 256.0, 0, -0.2, 6_000_000.0 - 128 * 0.2)
        np.testing.assert_array_equal(blk.read(), rgb[:, 128:, :128])
    side = json.loads((result.out_dir / "blocks" / "r00001_c00000.tif.json").read_text())
    assert side["sha256"] == sha256_of(result.out_dir / "blocks" / "r00001_c00000.tif")
    assert len(side["neighbours"]) == 4 and side["seam"] == "blend"
    record = json.loads((result.out_dir / "run.json").read_text())
    assert record["counts"] == {"done": 4} and record["failed"] == [] and record["grid"]["block"] == 128
    with rasterio.open(result.gti) as gti:  # the tile index that scales to a country: the same raster
        assert gti.driver == "GTI" and gti.crs == FLAIR_CRS and gti.transform == transform
        np.testing.assert_array_equal(gti.read(), rgb)
        np.testing.assert_array_equal(gti.dataset_mask(), mask)


def test_folder_of_pieces_equals_the_whole_raster(reference, lc_path, tmp_path, one_thread):
    _, (rgb, mask, *_) = reference
    with rasterio.open(lc_path) as src:
        codes, t = src.read(1), src.transform
    pieces = tmp_path / "pieces"  # the same map as two files side by side (a tiled product)
    write_geotiff(pieces / "west.tif", codes[None, :, :100], FLAIR_CRS, t, nodata=0)
    write_geotiff(pieces / "east.tif", codes[None, :, 100:], FLAIR_CRS, t * Affine.translation(100, 0), nodata=0)
    result = mosaic.run(_cfg(tmp_path / "out", pieces))
    got, got_mask, *_ = _read(result.vrt)
    np.testing.assert_array_equal(got_mask, mask)
    np.testing.assert_array_equal(got, rgb)


def test_vector_layer_input(tmp_path, one_thread):
    import geopandas as gpd
    from shapely.geometry import box

    x0, y1 = 1280 * 0.2, 6_000_000.0
    gdf = gpd.GeoDataFrame({"class": ["building", "deciduous"]},
                           geometry=[box(x0, y1 - 25.6, x0 + 20.0, y1), box(x0 + 20.0, y1 - 25.6, x0 + 51.2, y1)],
                           crs="EPSG:2154")
    gdf.to_file(tmp_path / "lc.gpkg")
    result = mosaic.run(_cfg(tmp_path / "out", tmp_path / "lc.gpkg"))
    assert result.counts == {"done": 2} and (result.grid.rows, result.grid.cols) == (1, 2)
    rgb, mask, crs, transform, shape = _read(result.vrt)
    assert crs == FLAIR_CRS and shape == (128, 256) and transform == Affine(0.2, 0, x0, 0, -0.2, y1)
    assert (mask == 255).all() and rgb.std() > 5


def test_resume_verifies_checksums_and_redoes_only_what_changed(reference, lc_path, tmp_path, one_thread):
    ref, (rgb, *_) = reference
    out = tmp_path / "out"
    shutil.copytree(ref.out_dir, out)
    again = mosaic.run(_cfg(out, lc_path))
    assert again.kept == 4 and again.generated == [] and again.composed == []
    (out / "blocks" / "r00000_c00001.tif").write_bytes(b"corrupt")  # a damaged block COG
    (out / "raw" / "r00001_c00001.tif").unlink()  # and a lost raw block
    (out / "blocks" / ".tmp-1234abcd-r00001_c00001.tif").write_bytes(b"half")  # a killed write
    fixed = mosaic.run(_cfg(out, lc_path))
    assert fixed.generated == ["r00001_c00001"] and sorted(fixed.composed) == ["r00000_c00001", "r00001_c00001"]
    assert not list((out / "blocks").glob(".tmp-*"))
    np.testing.assert_array_equal(_read(fixed.vrt)[0], rgb)


def test_settings_change_is_refused(reference, lc_path, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(reference[0].out_dir, out)
    with pytest.raises(ConfigError, match=r"other settings \(sampling differ\)"):
        mosaic.run(_cfg(out, lc_path, "sampling.seed=1"))


def test_failed_block_is_listed_masked_and_exits_nonzero(tmp_path, one_thread):
    lc = _landcover(tmp_path / "bad.tif", bad_block=True)
    with pytest.raises(BatchError, match=r"1 failed.*r00001_c00001: LegendError.*99") as info:
        mosaic.run(_cfg(tmp_path / "out", lc))
    assert info.value.exit_code == 1 and set(info.value.report["failed"]) == {"r00001_c00001"}
    record = json.loads((tmp_path / "out" / "run.json").read_text())
    assert [f["id"] for f in record["failed"]] == ["r00001_c00001"] and record["failed"][0]["attempts"] == 1
    assert sorted(record["not_composed"]) == ["r00000_c00000", "r00000_c00001", "r00001_c00000"]
    _, mask, *_ = _read(tmp_path / "out" / "mosaic.vrt")
    assert (mask == 0).all()  # its neighbours wait for it: nothing unfinished looks finished


# Ray clusters of 1 and 2 workers (tens of seconds): in CI's `-m slow` run, not the default one.
@pytest.mark.slow
def test_driver_killed_then_rerun_equals_uninterrupted(reference, lc_path, tmp_path):
    ref, (rgb, *_) = reference
    out = tmp_path / "out"
    args = [sys.executable, "-m", "seg2sat.cli", "mosaic", f"paths.root_dir={tmp_path}", f"input={lc_path}",
            f"output_dir={out}", *FAST]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    killed = subprocess.run([*args, "fault.kill_block=r00001_c00001"], env=env, cwd=REPO, capture_output=True,
                            text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    with opened(out / MANIFEST_NAME) as m:
        before = {r["id"]: r["state"] for r in m.blocks()}
    assert before["r00001_c00001"] == "running" and list(before.values()).count("generated") == 3
    assert not (out / "raw" / "r00001_c00001.tif").exists()  # nothing half-written looks finished
    rerun = subprocess.run(args, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    record = json.loads((out / "run.json").read_text())
    assert record["generated_this_run"] == 1 and record["composed_this_run"] == 4
    np.testing.assert_array_equal(_read(out / "mosaic.vrt")[0], rgb)


@pytest.mark.slow
@pytest.mark.multiproc
def test_accelerate_ranks_share_blocks_and_equal_one_process(reference, lc_path, tmp_path):
    _, (rgb, *_) = reference
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "1"}
    run = subprocess.run([str(Path(sys.executable).with_name("accelerate")), "launch", "--multi_gpu",
                          "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
                          "--dynamo_backend", "no", "--main_process_port", str(29600 + os.getpid() % 300),
                          "-m", "seg2sat.cli", "mosaic", f"paths.root_dir={tmp_path}", f"input={lc_path}",
                          f"output_dir={out}", *FAST], env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    np.testing.assert_array_equal(_read(out / "mosaic.vrt")[0], rgb)


# ---------------------------------------------------------------------------------------------
# Ray engine (a local Ray with 2 CPUs for the whole module)
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray", reason="the ray extra is not installed")
    temp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # short: Ray's socket paths are limited
    ray.init(num_cpus=2, _temp_dir=temp, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()
    shutil.rmtree(temp, ignore_errors=True)


# Ray clusters of 1 and 2 workers (tens of seconds): in CI's `-m slow` run, not the default one.
@pytest.mark.slow
def test_ray_one_and_two_workers_equal_local(ray_cluster, reference, lc_path, tmp_path):
    _, (rgb, mask, *_) = reference
    for n in (1, 2):
        result = mosaic.run(_cfg(tmp_path / f"w{n}", lc_path, "engine=ray", f"ray.workers={n}"))
        assert result.counts == {"done": 4}
        got, got_mask, *_ = _read(result.vrt)
        np.testing.assert_array_equal(got, rgb)
        np.testing.assert_array_equal(got_mask, mask)


# Ray clusters of 1 and 2 workers (tens of seconds): in CI's `-m slow` run, not the default one.
@pytest.mark.slow
def test_ray_worker_sigkill_mid_block_is_retried(ray_cluster, reference, lc_path, tmp_path):
    _, (rgb, *_) = reference
    out = tmp_path / "out"
    result = mosaic.run(_cfg(out, lc_path, "engine=ray", "ray.workers=2", "fault.kill_block=r00000_c00001"))
    assert (out / ".killed-r00000_c00001").exists()  # the actor really died mid-block
    assert result.counts == {"done": 4} and result.failed == {}
    np.testing.assert_array_equal(_read(result.vrt)[0], rgb)


@pytest.mark.slow
def test_two_ray_nodes_on_loopback(reference, lc_path, tmp_path):
    pytest.importorskip("ray", reason="the ray extra is not installed")
    _, (rgb, *_) = reference
    port = 26379 + os.getpid() % 1000
    temp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")
    ray_bin = str(Path(sys.executable).with_name("ray"))
    # `ray start` nodes on loopback, no token: a test cluster that lives for this test only
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RAY_AUTH_MODE": "disabled"}
    head = subprocess.Popen([ray_bin, "start", "--head", f"--port={port}", "--num-cpus=1", f"--temp-dir={temp}",
                             "--include-dashboard=false", "--block"], env=env, start_new_session=True)
    nodes = [head]
    try:
        import time

        time.sleep(8)
        nodes.append(subprocess.Popen([ray_bin, "start", f"--address=127.0.0.1:{port}", "--num-cpus=1", "--block"],
                                      env=env, start_new_session=True))
        time.sleep(8)
        run = subprocess.run([sys.executable, "-m", "seg2sat.cli", "mosaic", f"paths.root_dir={tmp_path}",
                              f"input={lc_path}", f"output_dir={tmp_path / 'out'}", *FAST, "engine=ray",
                              f"ray.address=127.0.0.1:{port}", "ray.workers=2"], env=env, cwd=REPO,
                             capture_output=True, text=True, timeout=600)
        assert run.returncode == 0, run.stderr[-2000:]
        np.testing.assert_array_equal(_read(tmp_path / "out" / "mosaic.vrt")[0], rgb)
    finally:
        for p in reversed(nodes):
            os.killpg(p.pid, signal.SIGTERM)
            p.wait(timeout=60)
        shutil.rmtree(temp, ignore_errors=True)


def test_every_block_and_the_mosaic_have_valid_stac_items(reference, stac_errors):
    result, (rgb, mask, crs, transform, shape) = reference
    out = result.out_dir
    collection = json.loads((out / "collection.json").read_text())
    assert stac_errors(collection) == []
    items = sorted(ln["href"] for ln in collection["links"] if ln["rel"] == "item")
    assert items == ["./blocks/r00000_c00000.stac.json", "./blocks/r00000_c00001.stac.json",
                     "./blocks/r00001_c00000.stac.json", "./blocks/r00001_c00001.stac.json", "./mosaic.stac.json"]
    whole = json.loads((out / "mosaic.stac.json").read_text())
    assert stac_errors(whole) == []
    assert whole["properties"]["proj:shape"] == list(shape) and whole["properties"]["proj:transform"] == list(transform)[:6]
    assert whole["assets"]["image"]["href"] == "./mosaic.vrt" and whole["assets"]["gti"]["href"] == "./mosaic.gti.gpkg"
    assert collection["extent"]["spatial"]["bbox"] == [whole["bbox"]]
    block = json.loads((out / "blocks" / "r00001_c00000.stac.json").read_text())
    assert stac_errors(block) == []
    assert block["properties"]["proj:transform"] == [0.2, 0.0, 256.0, 0.0, -0.2, 6_000_000.0 - 128 * 0.2]
    assert block["properties"]["seg2sat:model"] == "tiny-random" and block["properties"]["seg2sat:seed"] == 0
    assert block["assets"]["image"]["href"] == "./r00001_c00000.tif" and block["collection"] == "seg2sat-out"
    assert {ln["href"] for ln in block["links"]} == {"../collection.json"}
    # written before the sidecar, the block's completion mark
    side = out / "blocks" / "r00001_c00000.tif.json"
    assert (out / "blocks" / "r00001_c00000.stac.json").stat().st_mtime_ns <= side.stat().st_mtime_ns
