"""A read-only output folder (from the start, or remounted read-only mid-batch) and inputs removed mid-batch.

A folder that cannot be written is one line before anything loads; a folder that turns
read-only mid-run stops the run with one line and leaves the finished files whole. An input
that disappears mid-batch is that input's failure only: the batch goes on, reports it, and a
rerun with the input back does only that one.
"""

from __future__ import annotations

import shutil
import subprocess

import pytest
from faultkit import cli, differences, leftovers, products, tally
from test_full_disk import FAST, MOSAIC, _map

from seg2sat import faults
from seg2sat.config import compose
from seg2sat.errors import BatchError, WriteError


def _read_only(small_disk):
    disk = small_disk("1m")
    subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
    return disk


@pytest.fixture(scope="module")
def sources(tmp_path_factory, prepared_tiny):
    """What each stage reads: maps, a FLAIR tree, prepared data, a training run."""
    from seg2sat.stages import sample_data, train

    root = tmp_path_factory.mktemp("sources")
    _map(root / "maps" / "a.tif", shape=(64, 128))
    sample_data.run(compose("sample_data", [f"paths.root_dir={root}", "domains=[D064_2021]", "tiles_per_domain=2"]))
    run = train.run(compose("train", [f"paths.root_dir={root}", f"prepared_dir={prepared_tiny}", "batch_size=4",
                                      "validation_steps=0", "max_steps=1", "model.random_weights=true"]))
    return {"infer": [f"input={root / 'maps'}", *FAST], "mosaic": [f"input={root / 'maps'}", *MOSAIC],
            "prepare": [f"data_root={root / 'data' / 'sample_flair'}"],
            "train": [f"prepared_dir={prepared_tiny}", "max_steps=1", "batch_size=4", "validation_steps=0"],
            "export": [f"run_dir={run.run_dir}"]}


@pytest.mark.parametrize("stage", ["infer", *(pytest.param(s, marks=pytest.mark.faults)
                                              for s in ("mosaic", "prepare", "train", "export"))])
def test_read_only_output_folder_is_one_line_before_any_work(stage, sources, small_disk, tmp_path):
    disk = _read_only(small_disk)
    target = {"train": f"run_dir={disk}", "export": f"output_dir={disk / 'model'}"}.get(stage, f"output_dir={disk}")
    done = cli(stage, *sources[stage], target, f"paths.root_dir={tmp_path}", cwd=tmp_path)
    expected = f"seg2sat {stage}: error: {disk}: read-only file system; cannot write there"
    ok = done.returncode == 2 and done.stderr.strip().splitlines()[-1] == expected and "Traceback" not in done.stderr
    tally("read-only", stage, ok)
    assert ok, done.stderr[-2000:]


def test_folder_turned_read_only_mid_batch_stops_with_one_line(small_disk, tmp_path):
    from seg2sat.stages import infer

    disk = small_disk("2m")
    for i, name in enumerate("abc"):
        _map(tmp_path / "maps" / f"{name}.tif", seed=i)
    cfg = compose("infer", [f"paths.root_dir={tmp_path}", f"input={tmp_path / 'maps'}", f"output_dir={disk}", *FAST])

    def remount(n):
        if n == 1:
            subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)

    with faults.on_progress("infer.file", remount), pytest.raises(WriteError) as info:
        infer.run(cfg)
    problems = [] if str(info.value) == f"{disk}: read-only file system; cannot write there" else [str(info.value)]
    subprocess.run(["mount", "-o", "remount,rw", str(disk)], check=True)
    problems += [f"left {p}" for p in leftovers(disk)]
    finished = products(disk)
    problems += [] if sorted(finished) == ["a.stac.json", "a.tif", "a.tif.json", "a_preview.png"] \
        else [f"files: {sorted(finished)}"]
    infer.run(cfg)  # writable again: b and c only
    problems += [] if sorted(products(disk, ("report.json",))) == sorted(
        [f"{n}{s}" for n in "abc" for s in (".stac.json", ".tif", ".tif.json", "_preview.png")] + ["collection.json"]) \
        else ["rerun incomplete"]
    tally("read-only", "infer", not problems)
    assert problems == []


def test_input_removed_mid_batch_fails_alone_and_the_batch_goes_on(tmp_path):
    from seg2sat.stages import infer

    maps = tmp_path / "maps"
    for i, name in enumerate("abc"):
        _map(maps / f"{name}.tif", seed=i)
    kept = shutil.copy(maps / "b.tif", tmp_path / "b.tif")
    cfg = compose("infer", [f"paths.root_dir={tmp_path}", f"input={maps}", f"output_dir={tmp_path / 'out'}", *FAST])

    def remove(n):
        if n == 1:
            (maps / "b.tif").unlink()

    with faults.on_progress("infer.file", remove), pytest.raises(BatchError) as info:
        infer.run(cfg)
    problems = [] if info.value.exit_code == 1 and "\n" not in str(info.value) else [str(info.value)]
    problems += [] if list(info.value.report["failed"]) == [str(maps / "b.tif")] else [str(info.value.report)]
    problems += [] if "b.tif: file not found" in str(info.value) else [str(info.value)]
    problems += [] if info.value.report["done"] == [str(tmp_path / "out" / n) for n in ("a.tif", "c.tif")] else ["done"]
    shutil.copy(kept, maps / "b.tif")
    again = infer.run(cfg)
    problems += [] if [p.name for p in again.outputs] == ["b.tif"] else [f"rerun did {again.outputs}"]
    infer.run(compose("infer", [f"paths.root_dir={tmp_path}", f"input={maps}", f"output_dir={tmp_path / 'ref'}",
                                *FAST]))
    problems += differences(products(tmp_path / "out", ("report.json",)), products(tmp_path / "ref", ("report.json",)))
    tally("input removed", "infer", not problems)
    assert problems == []


@pytest.mark.faults
def test_mosaic_source_removed_mid_run_fails_its_blocks_and_the_rest_goes_on(tmp_path):
    """Two source files side by side; the east one disappears after the first block."""
    import rasterio
    from affine import Affine

    from seg2sat.geo.geotiff import write_geotiff
    from seg2sat.stages import mosaic

    whole = _map(tmp_path / "whole.tif", shape=(64, 128))
    with rasterio.open(whole) as src:
        codes, t, crs = src.read(1), src.transform, src.crs
    pieces = tmp_path / "pieces"
    write_geotiff(pieces / "west.tif", codes[None, :, :64], crs, t, nodata=0)
    east = write_geotiff(pieces / "east.tif", codes[None, :, 64:], crs, t * Affine.translation(64, 0), nodata=0)
    kept = shutil.copy(east, tmp_path / "east.tif")
    args = [f"paths.root_dir={tmp_path}", f"input={pieces}", *MOSAIC]
    mosaic.run(compose("mosaic", [*args, f"output_dir={tmp_path / 'ref'}"]))

    def remove(n):
        if n == 1 and east.exists():
            east.unlink()

    cfg = compose("mosaic", [*args, f"output_dir={tmp_path / 'out'}", "max_attempts=1"])
    with faults.on_progress("mosaic.block", remove), pytest.raises(BatchError) as info:
        mosaic.run(cfg)
    problems = [] if set(info.value.report["failed"]) == {"r00000_c00001"} else [str(info.value)]
    shutil.copy(kept, east)
    mosaic.run(compose("mosaic", [*args, f"output_dir={tmp_path / 'out'}", "max_attempts=2"]))
    problems += differences(products(tmp_path / "out", ("run.json",)), products(tmp_path / "ref", ("run.json",)))
    tally("input removed", "mosaic", not problems)
    assert problems == []
