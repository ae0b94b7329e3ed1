"""A real full disk (a small tmpfs filled at the chosen write) at each write point of each stage.

Each stage runs once cleanly on the small disk to list its write points (`seg2sat.faults` logs
them); then, for each point, a run from nothing meets "No space left on device" exactly there.
It must stop with the one-line error, leave no temp file and nothing corrupt under a final name,
and once the space is freed a rerun must make what the uninterrupted run made. The default run
tries the first write of every kind (folder and file type); `-m faults` tries every write.
"""

from __future__ import annotations

import re
import shutil

import numpy as np
import pytest
from affine import Affine
from faultkit import (
    cli,
    one_of_each,
    products,
    sample_flair_tree,
    survive_full_disk,
    tally,
    write_points,
)

from seg2sat.config import compose
from seg2sat.geo.geotiff import write_geotiff
from seg2sat.geo.raster import FLAIR_CRS

EVERY = pytest.param(True, marks=pytest.mark.faults, id="every-write")
SAMPLE = pytest.param(False, id="each-kind")
FAST = ["model_path=tiny-random", "sampling.steps=2", "sampling.guidance_scale=1.0"]
GRID = Affine(0.2, 0, 1280 * 0.2, 0, -0.2, 6_000_000.0)  # on the mosaic lattice: blocks line up


def _map(path, shape=(64, 96), seed=0):
    rng = np.random.default_rng(seed)
    codes = np.repeat(np.repeat(rng.choice([1, 2, 6, 10, 11], size=(shape[0] // 16, shape[1] // 16)), 16, 0), 16, 1)
    codes = codes.astype(np.uint8)
    codes[:8, :8] = 0  # nodata stays nodata
    return write_geotiff(path, codes, FLAIR_CRS, GRID, nodata=0)


@pytest.fixture(scope="module")
def maps(tmp_path_factory):
    folder = tmp_path_factory.mktemp("maps")
    _map(folder / "a.tif")
    _map(folder / "b.tif", seed=1)
    return folder


def _indexes(points, every, keep=lambda path: True):
    return list(range(1, len(points) + 1)) if every else one_of_each(points, keep)


@pytest.fixture(scope="module")
def tiny_model():
    """The random tiny model, loaded once (infer.run takes a loaded model, as the app passes it)."""
    from seg2sat.generation.models import load_configured

    return load_configured(compose("infer", ["input=x", *FAST]))


@pytest.mark.parametrize("every", [SAMPLE, EVERY])
def test_infer(every, maps, tiny_model, small_disk, inject, monkeypatch, tmp_path):
    from seg2sat.stages import infer

    disk = small_disk("1m")
    out = disk / "out"
    cfg = compose("infer", [f"paths.root_dir={tmp_path}", f"input={maps}", f"output_dir={out}", *FAST])
    points = write_points(lambda: infer.run(cfg, tiny_model), tmp_path / "points.log", monkeypatch)
    reference = products(out, ignore=("report.json",))
    assert sorted(reference) == ["a.stac.json", "a.tif", "a.tif.json", "a_preview.png", "b.stac.json", "b.tif",
                                 "b.tif.json", "b_preview.png", "collection.json"]
    failures = survive_full_disk("infer", "infer", lambda: infer.run(cfg, tiny_model), out, disk,
                                 _indexes(points, every), reference, inject, ignore=("report.json",))
    assert not failures, "\n".join(failures)


def test_infer_strata_on_a_nearly_full_disk_is_one_line_and_leaves_no_raster(geo_samples, small_disk, tmp_path):
    """The issue's case: `seg2sat infer input=strata.tif` into a folder on a 300 kB disk."""
    disk = small_disk("300k")
    done = cli("infer", f"input={geo_samples / 'strata.tif'}", "work_resolution=null", "model_path=tiny-random",
               f"output_dir={disk / 'out'}", f"paths.root_dir={tmp_path}", cwd=tmp_path)
    tally("full disk", "infer", done.returncode == 2)
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.strip() == f"seg2sat infer: error: {disk / 'out'}: no space left on device (needs about 1.8 MB)"
    assert [p.name for p in (disk / "out").iterdir()] == []  # no strata.tif, no temp file


@pytest.mark.faults
def test_infer_strata_when_the_disk_fills_while_writing(geo_samples, small_disk, tmp_path):
    """The same run with room to start (past the pre-flight); the disk is full when the GeoTIFF's write starts.

    libtiff meeting ENOSPC mid-file corrupted its heap (malloc(): invalid size, SIGABRT): every
    checked write now looks at the free space first.
    """
    disk = small_disk("1m")
    args = ["infer", f"input={geo_samples / 'strata.tif'}", "work_resolution=null", "model_path=tiny-random",
            f"output_dir={disk / 'out'}", f"paths.root_dir={tmp_path}"]
    done = cli(*args, cwd=tmp_path, fault="fill@write:1")
    tally("full disk", "infer", done.returncode == 2)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert done.stderr.strip().splitlines()[-1] == (
        f"seg2sat infer: error: {disk / 'out'}: no space left on device (needs about 1.8 MB)")
    assert [p.name for p in (disk / "out").iterdir() if not p.name.startswith(".fault-fill")] == []


@pytest.fixture(scope="module")
def mosaic_input(tmp_path_factory):
    """128 x 64 px of land cover on the lattice: a mosaic of 2 blocks of 64 px (3 windows each)."""
    return _map(tmp_path_factory.mktemp("lc") / "lc.tif", shape=(64, 128))


MOSAIC = [*FAST, "block=64", "halo=64", "prompt.text=Aerial view"]


@pytest.mark.parametrize("every", [SAMPLE, EVERY])
def test_mosaic(every, mosaic_input, tiny_model, small_disk, inject, monkeypatch, tmp_path):
    from seg2sat.stages import mosaic

    disk = small_disk("2m")
    out = disk / "out"
    cfg = compose("mosaic", [f"paths.root_dir={tmp_path}", f"input={mosaic_input}", f"output_dir={out}", *MOSAIC])
    points = write_points(lambda: mosaic.run(cfg, tiny_model.pipe), tmp_path / "points.log", monkeypatch)
    reference = products(out)
    assert {"manifest.sqlite", "mosaic.vrt", "blocks/r00000_c00001.tif", "raw/r00000_c00000.tif"} <= set(reference)
    failures = survive_full_disk("mosaic", "mosaic", lambda: mosaic.run(cfg, tiny_model.pipe), out, disk,
                                 _indexes(points, every), reference, inject)
    assert not failures, "\n".join(failures)


@pytest.fixture(scope="module")
def flair_tree(tmp_path_factory):
    """A synthetic FLAIR tree: 2 domains of 2 tiles (64 px)."""
    return sample_flair_tree(tmp_path_factory.mktemp("flair"), 2)


@pytest.mark.parametrize("every", [SAMPLE, EVERY])
def test_prepare(every, flair_tree, small_disk, inject, monkeypatch, tmp_path):
    from seg2sat.stages import prepare

    disk = small_disk("2m")
    out = disk / "prepared"
    cfg = compose("prepare", [f"paths.root_dir={tmp_path}", f"data_root={flair_tree}", f"output_dir={out}", "workers=0"])
    points = write_points(lambda: prepare.run(cfg), tmp_path / "points.log", monkeypatch)
    reference = products(out)
    assert {"manifest.jsonl", "footprints.gpkg", "records/records.jsonl", "summary.json"} <= set(reference)
    failures = survive_full_disk("prepare", "prepare", lambda: prepare.run(cfg), out, disk,
                                 _indexes(points, every), reference, inject)
    assert not failures, "\n".join(failures)


# A resumed run's snapshot of the global RNGs differs from an uninterrupted run's (the resumed
# process built its data loader after loading it); no result depends on them: every draw of
# training comes from a generator seeded by (seed, step, rank), so weights and optimizer are equal.
RNG_FILES = (r".*/random_states_\d+\.pkl", r".*/checksums\.json")


def _train_cfg(root, *overrides):
    return compose("train", [f"paths.root_dir={root}", f"prepared_dir={root / 'prepared'}", "batch_size=4",
                             "log_every=1", "validation_steps=0", "max_steps=2", "checkpointing_steps=1",
                             "resume=latest", "model.random_weights=true", *overrides])


@pytest.mark.parametrize("every", [SAMPLE, EVERY])
def test_train_checkpoints_and_latent_cache(every, prepared_tiny, small_disk, inject, monkeypatch, tmp_path):
    """The prepared data (its latent cache is written there) and the run folder on the small disk."""
    from seg2sat.stages import train

    disk = small_disk("48m")

    def fresh():
        shutil.copytree(prepared_tiny, disk / "prepared", ignore=shutil.ignore_patterns("cache"))

    fresh()
    cfg = _train_cfg(disk)
    points = write_points(lambda: train.run(cfg), tmp_path / "points.log", monkeypatch)
    reference = products(disk, ignore=RNG_FILES)
    assert {"data/runs/tiny/checkpoints/checkpoint-2/controlnet/diffusion_pytorch_model.safetensors",
            "data/runs/tiny/checkpoints/checkpoint-2/optimizer.bin"} <= set(reference)
    # the default run: the config, a cache shard and its index, a checkpoint (not the files inside it)
    sample = _indexes(points, every, keep=lambda path: ".tmp-checkpoint" not in path and "empty" not in path)
    failures = survive_full_disk("train", "train", lambda: train.run(cfg), disk, disk, sample,
                                 reference, inject, ignore=RNG_FILES, fresh=fresh)
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("every", [SAMPLE, EVERY])
def test_export(every, trained_run, small_disk, inject, monkeypatch, tmp_path):
    from seg2sat.stages import export

    disk = small_disk("16m")
    out = disk / "model"
    cfg = compose("export", [f"paths.root_dir={tmp_path}", f"run_dir={trained_run.run_dir}", f"output_dir={out}"])
    points = write_points(lambda: export.run(cfg), tmp_path / "points.log", monkeypatch)
    reference = products(out)
    assert {"seg2sat.json", "controlnet/diffusion_pytorch_model.safetensors", "README.md"} <= set(reference)
    failures = survive_full_disk("export", "export", lambda: export.run(cfg), out, disk, _indexes(points, every),
                                 reference, inject)
    assert not failures, "\n".join(failures)


FAST_JUDGE = ["judge.widths=[8,16,16]", "judge.steps=20", "judge.batch_size=4"]


# Only under `-m faults`: each point retrains the judge and generates (about 4 min even for the
# sample), which would take the default run past its 15 minutes.
@pytest.mark.parametrize("every", [EVERY])
def test_evaluate_and_judge_cache(every, trained_run, prepared_tiny, small_disk, inject, monkeypatch, tmp_path):
    """Prepared data (the judge's cache), the model folder (its card is updated) and the scores on the disk."""
    from seg2sat.stages import evaluate, export

    disk = small_disk("24m")
    model = tmp_path / "model"
    export.run(compose("export", [f"paths.root_dir={tmp_path}", f"run_dir={trained_run.run_dir}", f"output_dir={model}"]))

    def fresh():
        shutil.copytree(prepared_tiny, disk / "prepared", ignore=shutil.ignore_patterns("cache"))
        shutil.copytree(model, disk / "model")

    fresh()
    cfg = compose("evaluate", [f"paths.root_dir={tmp_path}", f"model_path={disk / 'model'}",
                               f"data_dir={disk / 'prepared'}", f"output_dir={disk / 'eval'}", "num_images=2",
                               "sampling.steps=2", "grid_images=2", "untrained=false", "vae_round_trip=false", "realism.enabled=false",
                               *FAST_JUDGE])
    points = write_points(lambda: evaluate.run(cfg), tmp_path / "points.log", monkeypatch)
    reference = products(disk)
    assert {"eval/fidelity.json", "eval/grid.png", "model/seg2sat.json"} <= set(reference)
    # the default run: the judge's cache and the scores (not the model card's update)
    sample = _indexes(points, every, keep=lambda path: "/model/" not in path and not path.endswith(".png"))
    failures = survive_full_disk("evaluate", "evaluate", lambda: evaluate.run(cfg), disk, disk, sample,
                                 reference, inject, fresh=fresh)
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("every", [SAMPLE, EVERY])
def test_synthesize(every, trained_run, prepared_tiny, small_disk, inject, monkeypatch, tmp_path):
    """The synthetic pairs, their STAC Items and records, the dataset's metadata on the disk; the judge's cache off it."""
    from seg2sat.evaluation.judge import JudgeConfig, load_or_train_judge
    from seg2sat.stages import export, synthesize

    disk = small_disk("16m")
    model, out = tmp_path / "model", disk / "synthetic"
    export.run(compose("export", [f"paths.root_dir={tmp_path}", f"run_dir={trained_run.run_dir}", f"output_dir={model}"]))
    cfg = compose("synthesize", [f"paths.root_dir={tmp_path}", f"paths.prepared_dir={prepared_tiny}",
                                 f"model_path={model}", f"output_dir={out}", "target.n_tiles=3", "sampling.steps=2",
                                 "sampling.batch_size=1", "diversity.maps=0", "quality.threshold=0.0", *FAST_JUDGE])
    load_or_train_judge(prepared_tiny, JudgeConfig.from_config(cfg.judge))  # cached before the writes are counted
    points = write_points(lambda: synthesize.run(cfg), tmp_path / "points.log", monkeypatch)
    reference = products(out)
    assert {"flair-1_metadata_aerial.json", "collection.json", "report.json", "synthesis.jsonl"} <= set(reference)
    assert sum(name.endswith(".stac.json") for name in reference) == 3
    failures = survive_full_disk("synthesize", "synthesize", lambda: synthesize.run(cfg), out, disk,
                                 _indexes(points, every), reference, inject)
    assert not failures, "\n".join(failures)


SPACE_LINE = re.compile(r"^output {4}about (?P<need>[0-9.]+) MB to write in (?P<folder>\S+); (?P<free>[0-9.]+) MB free "
                        r"\((?P<verdict>[^)]*)\)", re.M)


def test_dry_runs_give_the_size_and_real_runs_refuse_a_folder_clearly_short(maps, small_disk,
                                                                            tiny_model, tmp_path, capsys):
    from seg2sat.atomic import free_bytes
    from seg2sat.errors import DiskFullError
    from seg2sat.stages import infer, mosaic

    # infer: two 64 x 96 outputs (GeoTIFF, mask, preview, sidecars) are about 0.1 MB; 16 kB is clearly short
    disk = small_disk("16k")
    args = [f"paths.root_dir={tmp_path}", f"input={maps}", f"output_dir={disk / 'out'}", *FAST]
    infer.run(compose("infer", [*args, "check=true"]))
    line = SPACE_LINE.search(capsys.readouterr().out)
    assert line and line["need"] == "0.1" and line["folder"] == str(disk / "out")
    assert line["verdict"] == "clearly too little: the run would refuse to start" and not (disk / "out").exists()
    with pytest.raises(DiskFullError, match=rf"^{disk / 'out'}: no space left on device \(needs about 0.1 MB\)$"):
        infer.run(compose("infer", args), tiny_model)
    assert list((disk / "out").iterdir()) == []
    # mosaic: 512 x 512 px in 64 blocks of 64 px (+ 64 px halos) need about 11 MB; the dry run writes the plan only
    disk = small_disk("512k")
    big = _map(tmp_path / "big.tif", shape=(512, 512))
    args = [f"paths.root_dir={tmp_path}", f"input={big}", f"output_dir={disk}", *MOSAIC]
    mosaic.run(compose("mosaic", [*args, "check=true"]))
    line = SPACE_LINE.search(capsys.readouterr().out)
    assert line and line["need"] == "11" and line["verdict"] == "clearly too little: the run would refuse to start"
    assert sorted(p.name for p in disk.iterdir() if not p.name.endswith(("-wal", "-shm"))) == ["manifest.sqlite"]
    with pytest.raises(DiskFullError, match=rf"^{disk}: no space left on device \(needs about 11 MB\)$"):
        mosaic.run(compose("mosaic", args), tiny_model.pipe)
    assert not (disk / "raw").exists() and 0 < free_bytes(disk) < 512 << 10
    tally("full disk", "pre-flight", True, tried=1)
