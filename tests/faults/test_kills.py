"""SIGKILL at moments taken from each stage's own progress (`seg2sat.faults`), then a rerun.

The command runs in a subprocess with `SEG2SAT_FAULT=kill@<point>:<n>`: it dies there with no
cleanup, exactly as under the OOM killer or a pulled plug of the process. What it left must hold
nothing corrupt under a final name; the rerun must finish and make exactly what an uninterrupted
run (in this process, one thread, as the subprocesses run) makes. The default run kills each
stage once; `-m faults` at every moment listed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
from faultkit import (
    REPO,
    differences,
    killed,
    products,
    sample_flair_tree,
    survive_kill,
    tally,
    write_points,
)
from test_full_disk import FAST, FAST_JUDGE, MOSAIC, RNG_FILES, _map

from seg2sat.config import compose
from seg2sat.faults import FAULT_ENV


def _every(*moments):
    """The first moment in the default run, all of them under `-m faults`."""
    return [pytest.param(m, marks=() if i == 0 else pytest.mark.faults, id=m) for i, m in enumerate(moments)]


@pytest.fixture(scope="module")
def maps(tmp_path_factory):
    folder = tmp_path_factory.mktemp("maps")
    _map(folder / "a.tif")
    _map(folder / "b.tif", seed=1)
    return folder


@pytest.mark.parametrize("moment", _every("kill@infer.window:3", "kill@infer.file:1", "kill@write:2"))
def test_infer(moment, maps, one_thread, tmp_path):
    from seg2sat.stages import infer

    ref = tmp_path / "ref"
    infer.run(compose("infer", [f"paths.root_dir={tmp_path}", f"input={maps}", f"output_dir={ref}", *FAST]))
    reference = products(ref, ignore=("report.json",))
    out = tmp_path / "out"
    args = ["infer", f"input={maps}", f"output_dir={out}", f"paths.root_dir={tmp_path}", *FAST]
    assert survive_kill("infer", args, moment, out, reference, tmp_path, ignore=("report.json",)) == []


@pytest.fixture(scope="module")
def flair_tree(tmp_path_factory):
    return sample_flair_tree(tmp_path_factory.mktemp("flair"), 3)


@pytest.mark.parametrize("moment", _every("kill@prepare.tile:2", "kill@write:3", "kill@prepare.tile:6"))
def test_prepare(moment, flair_tree, tmp_path):
    from seg2sat.stages import prepare

    common = [f"paths.root_dir={tmp_path}", f"data_root={flair_tree}", "workers=0"]
    prepare.run(compose("prepare", [*common, f"output_dir={tmp_path / 'ref'}"]))
    reference = products(tmp_path / "ref", ignore=("prepare_config.yaml",))
    out = tmp_path / "out"
    assert survive_kill("prepare", ["prepare", *common, f"output_dir={out}"], moment, out, reference, tmp_path,
                        ignore=("prepare_config.yaml",)) == []


@pytest.mark.parametrize("moment", _every("kill@train.step:3", "kill@train.step:2", "checkpoint-4 commit"))
def test_train(moment, prepared_tiny, one_thread, tmp_path, monkeypatch):
    """Checkpoints every 2 steps of 4: killed mid-interval, right after a checkpoint, or inside one."""
    from seg2sat.stages import train

    def setup(root):
        shutil.copytree(prepared_tiny, root / "prepared", ignore=shutil.ignore_patterns("cache"))
        return [f"paths.root_dir={root}", f"prepared_dir={root / 'prepared'}", "batch_size=4", "log_every=1",
                "validation_steps=0", "max_steps=4", "checkpointing_steps=2", "resume=latest",
                "model.random_weights=true"]

    ref_args = setup(tmp_path / "ref")
    points = write_points(lambda: train.run(compose("train", ref_args)), tmp_path / "points.log", monkeypatch)
    ignore = (*RNG_FILES, r".*/config\.yaml", r"data/logs/.*")  # the run's own paths; Hydra's logs
    reference = products(tmp_path / "ref", ignore=ignore)
    if moment == "checkpoint-4 commit":  # the temp folder complete, killed before its rename
        moment = f"kill@write:{points.index(str(tmp_path / 'ref' / 'data/runs/tiny/checkpoints/checkpoint-4')) + 1}"
    args = setup(tmp_path / "out")
    assert survive_kill("train", ["train", *args], moment, tmp_path / "out", reference, tmp_path, ignore=ignore) == []


_CACHE_SCRIPT = """
import sys
from pathlib import Path
import torch
torch.set_num_threads(1)
from seg2sat.config import compose
from seg2sat.data.latent_cache import LatentCache
from seg2sat.generation.models import load_components
cfg = compose("train", ["model.random_weights=true"])
comps = load_components(cfg.model)
LatentCache.build_or_load(Path(sys.argv[1]), "train", comps, 64, shard_size=4)
"""


@pytest.mark.parametrize("moment", _every("kill@cache.shard:2", "kill@write:1", "kill@cache.shard:4"))
def test_latent_cache(moment, prepared_tiny, one_thread, tmp_path):
    """A cache of 4 shards, built by the real code in a subprocess, killed part way; then built again."""
    def fresh(name):
        return shutil.copytree(prepared_tiny, tmp_path / name, ignore=shutil.ignore_patterns("cache"))

    def build(prepared, spec=None):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
        env.pop(FAULT_ENV, None)
        if spec:
            env[FAULT_ENV] = spec
        return subprocess.run([sys.executable, "-c", _CACHE_SCRIPT, str(prepared)], env=env, capture_output=True,
                              text=True, timeout=600)

    ref = fresh("ref")
    assert build(ref).returncode == 0
    reference = products(ref / "cache")
    assert len([k for k in reference if "shard-" in k]) == 4
    out = fresh("out")
    first = build(out, moment)
    problems = [] if killed(first) else [f"not killed: {first.stderr[-800:]}"]
    again = build(out)
    problems += [] if again.returncode == 0 else [f"rerun: {again.stderr[-800:]}"]
    problems += differences(products(out / "cache"), reference)
    tally("SIGKILL", "cache", not problems)
    assert problems == []


@pytest.fixture(scope="module")
def mosaic_input(tmp_path_factory):
    return _map(tmp_path_factory.mktemp("lc") / "lc.tif", shape=(64, 128))


@pytest.mark.faults
@pytest.mark.parametrize("moment", _every("kill@mosaic.block:1", "kill@mosaic.compose:1", "kill@write:12"))
def test_mosaic(moment, mosaic_input, one_thread, tmp_path):
    """The driver killed after a block, after a composition, or before a file's rename (test_scale kills workers)."""
    from seg2sat.stages import mosaic

    common = [f"paths.root_dir={tmp_path}", f"input={mosaic_input}", *MOSAIC]
    mosaic.run(compose("mosaic", [*common, f"output_dir={tmp_path / 'ref'}"]))
    reference = products(tmp_path / "ref")
    out = tmp_path / "out"
    assert survive_kill("mosaic", ["mosaic", *common, f"output_dir={out}"], moment, out, reference, tmp_path) == []


@pytest.mark.faults
def test_export(trained_run, tmp_path, monkeypatch):
    """Killed with the model folder complete under its temp name: the rerun sweeps it and exports again."""
    from seg2sat.stages import export

    common = [f"paths.root_dir={tmp_path}", f"run_dir={trained_run.run_dir}"]
    ref = tmp_path / "ref" / "model"  # the same folder name: a model is named after its folder
    points = write_points(lambda: export.run(compose("export", [*common, f"output_dir={ref}"])),
                          tmp_path / "points.log", monkeypatch)
    reference = products(ref.parent)  # rooted one folder up, as the killed run's products are
    commit = points.index(str(ref)) + 1
    out = tmp_path / "out" / "model"
    assert survive_kill("export", ["export", *common, f"output_dir={out}"], f"kill@write:{commit}", out.parent,
                        reference, tmp_path,
                        ignore=(r"(?!model/).*",)) == []


@pytest.mark.faults
@pytest.mark.parametrize("moment", ["kill@judge.step:10", "fidelity.json commit"])
def test_evaluate(moment, trained_run, prepared_tiny, one_thread, tmp_path, monkeypatch):
    from seg2sat.stages import evaluate, export

    export.run(compose("export", [f"paths.root_dir={tmp_path}", f"run_dir={trained_run.run_dir}",
                                  f"output_dir={tmp_path / 'model'}"]))

    def setup(root):
        shutil.copytree(prepared_tiny, root / "prepared", ignore=shutil.ignore_patterns("cache"))
        shutil.copytree(tmp_path / "model", root / "model")
        return [f"paths.root_dir={root}", f"model_path={root / 'model'}", f"data_dir={root / 'prepared'}",
                f"output_dir={root / 'eval'}", "num_images=2", "sampling.steps=2", "grid_images=2",
                "untrained=false", "vae_round_trip=false", "realism.enabled=false", *FAST_JUDGE]

    ref_args = setup(tmp_path / "ref")
    points = write_points(lambda: evaluate.run(compose("evaluate", ref_args)), tmp_path / "points.log", monkeypatch)
    reference = products(tmp_path / "ref")
    if moment == "fidelity.json commit":
        moment = f"kill@write:{points.index(str(tmp_path / 'ref' / 'eval' / 'fidelity.json')) + 1}"
    out = tmp_path / "out"
    logs = (r"data/logs/.*",)  # Hydra's logs of the command-line runs
    assert survive_kill("evaluate", ["evaluate", *setup(out)], moment, out, reference, tmp_path, ignore=logs) == []


@pytest.mark.faults  # the default run kills synthesize once already (tests/synthesis)
@pytest.mark.parametrize("moment", ["kill@synthesize.tile:2", "kill@write:2", "metadata commit"])
def test_synthesize(moment, trained_run, prepared_tiny, one_thread, tmp_path, monkeypatch):
    """Killed after a tile, before a pair's first rename, and before the dataset's metadata lands."""
    from seg2sat.evaluation.judge import JudgeConfig, load_or_train_judge
    from seg2sat.stages import export, synthesize

    export.run(compose("export", [f"paths.root_dir={tmp_path}", f"run_dir={trained_run.run_dir}",
                                  f"output_dir={tmp_path / 'model'}"]))
    common = [f"paths.root_dir={tmp_path}", f"paths.prepared_dir={prepared_tiny}", f"model_path={tmp_path / 'model'}",
              "target.n_tiles=3", "sampling.steps=2", "sampling.batch_size=1", "diversity.maps=0",
              "quality.threshold=0.0", *FAST_JUDGE]
    ref = tmp_path / "ref"
    cfg = compose("synthesize", [*common, f"output_dir={ref}"])
    load_or_train_judge(prepared_tiny, JudgeConfig.from_config(cfg.judge))  # cached before the writes are counted
    points = write_points(lambda: synthesize.run(compose("synthesize", [*common, f"output_dir={ref}"])),
                          tmp_path / "points.log", monkeypatch)
    reference = products(ref)
    if moment == "metadata commit":
        moment = f"kill@write:{points.index(str(ref / 'flair-1_metadata_aerial.json')) + 1}"
    out = tmp_path / "out"
    assert survive_kill("synthesize", ["synthesize", *common, f"output_dir={out}"], moment, out, reference,
                        tmp_path) == []
