"""`seg2sat evaluate`: fidelity.json + grid for an exported model; clear errors on bad inputs."""

import json

import numpy as np
import pytest
from PIL import Image

from seg2sat.errors import DatasetError, ModelError
from seg2sat.evaluation.judge import find_prepared
from seg2sat.generation.models import MODEL_INFO
from seg2sat.stages import evaluate, export, train

FAST_JUDGE = ["judge.widths=[8,16,16]", "judge.steps=20", "judge.batch_size=4"]


@pytest.fixture
def exported(train_cfg, stage_cfg, tmp_path):
    run = train.run(train_cfg("max_steps=2", "checkpointing_steps=2"))
    return export.run(stage_cfg("export", f"run_dir={run.run_dir}", f"output_dir={tmp_path / 'models' / 'm'}")).model_dir


def test_evaluate_writes_scores_grid_and_model_card(exported, prepared_tiny, stage_cfg, tmp_path):
    out = tmp_path / "eval"
    result = evaluate.run(stage_cfg("evaluate", f"model_path={exported}", f"data_dir={prepared_tiny}",
                                    f"output_dir={out}", "num_images=3", "sampling.steps=2", "grid_images=2",
                                    *FAST_JUDGE))
    report = json.loads((out / "fidelity.json").read_text())
    assert result.json_path == out / "fidelity.json" and report["num_images"] == 3
    for key in ("generated", "untrained", "real_images", "vae_round_trip"):
        assert 0.0 <= report[key]["miou"] <= 1.0 and 0.0 <= report[key]["pixel_accuracy"] <= 1.0
    assert report["fidelity_ratio"] == pytest.approx(report["generated"]["miou"] / report["real_images"]["miou"])
    assert report["floor_ratio"] == pytest.approx(report["untrained"]["miou"] / report["real_images"]["miou"])
    assert report["sampling"]["steps"] == 2 and report["split"] == "val"
    # grid: 2 rows of (map | generated | re-segmented | real), 64 px cells at scale 2, 4 px gaps
    grid = np.asarray(Image.open(out / "grid.png"))
    assert grid.shape == (2 * 128 + 4, 4 * 128 + 3 * 4, 3)
    # the scores are in the model card
    info = json.loads((exported / MODEL_INFO).read_text())
    assert info["fidelity"]["fidelity_ratio"] == pytest.approx(report["fidelity_ratio"])
    assert "Fidelity ratio (generated / real)" in (exported / "README.md").read_text()
    assert not list(out.glob(".tmp-*"))


def test_evaluate_finds_prepared_under_a_data_root(prepared_tiny):
    assert find_prepared(prepared_tiny.parent) == prepared_tiny
    with pytest.raises(DatasetError, match="no prepared dataset"):
        find_prepared(prepared_tiny / "images")


def test_evaluate_refuses_a_dataset_without_validation_split(exported, prepared_tiny, stage_cfg, tmp_path):
    lonely = tmp_path / "lonely"
    lonely.mkdir()
    rows = [r for r in prepared_tiny.joinpath("manifest.jsonl").read_text().splitlines() if '"train"' in r]
    (lonely / "manifest.jsonl").write_text("\n".join(rows) + "\n")
    with pytest.raises(DatasetError, match=r"lonely: no 'val' tiles to evaluate on"):
        evaluate.run(stage_cfg("evaluate", f"model_path={exported}", f"data_dir={lonely}", *FAST_JUDGE))


def test_evaluate_refuses_a_folder_without_controlnet(exported, prepared_tiny, stage_cfg, tmp_path):
    base_only = exported / "base"
    with pytest.raises(ModelError, match=r"base: no ControlNet here"):
        evaluate.run(stage_cfg("evaluate", f"model_path={base_only}", f"data_dir={prepared_tiny}", *FAST_JUDGE))
