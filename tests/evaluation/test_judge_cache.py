"""What `evaluate` (and so `seg2sat demo`) does once instead of again: judges, sweep rows, FID."""

import json
import shutil

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from seg2sat.evaluation import scores
from seg2sat.evaluation.judge import JudgeConfig, load_or_train_judge, split_arrays
from seg2sat.evaluation.realism import fid

TINY = JudgeConfig(widths=(8, 16, 16), steps=3, batch_size=2)


@pytest.fixture
def own_prepared(prepared_tiny, tmp_path):
    """A private copy of the tiny dataset (these tests change its pixels and caches)."""
    copy = tmp_path / "prepared"
    shutil.copytree(prepared_tiny, copy, ignore=shutil.ignore_patterns("cache"))
    return copy


def test_a_cached_judge_reloads_bit_for_bit_and_a_changed_pixel_trains_another(own_prepared):
    judge, trained_now = load_or_train_judge(own_prepared, TINY)
    again, again_now = load_or_train_judge(own_prepared, TINY)
    assert (trained_now, again_now) == (True, False)
    for (name, a), (_, b) in zip(judge.net.state_dict().items(), again.net.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    # One pixel of one training image: another dataset, so another judge (the stale one is not reused).
    lines = (own_prepared / "manifest.jsonl").read_text().splitlines()
    image_path = own_prepared / next(r["image"] for r in map(json.loads, lines) if r["split"] == "train")
    pixels = np.array(Image.open(image_path))
    pixels[0, 0, 0] ^= 1
    Image.fromarray(pixels).save(image_path)
    _, changed_now = load_or_train_judge(own_prepared, TINY)
    assert changed_now
    assert len(list((own_prepared / "cache").glob("judge-*"))) == 2


def test_evaluate_loads_the_segmenter_the_reward_phase_trained(own_prepared):
    """The model folder's training config names the reward segmenter: evaluate finds it cached, trains nothing."""
    from seg2sat.config import compose
    from seg2sat.training.reward import RewardConfig, load_reward

    cfg = compose("train", ["experiment=demo_reward", "reward.segmenter.steps=2", "reward.segmenter.batch_size=2"])
    assert load_reward(cfg, own_prepared, torch.device("cpu")) is not None
    # What export writes (training_config.yaml) and evaluate reads back.
    written = OmegaConf.create(OmegaConf.to_yaml(OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))))
    segmenter = RewardConfig.from_config(written.get("reward")).segmenter
    assert segmenter == RewardConfig.from_config(cfg.reward).segmenter and segmenter.widths == (24, 48, 96)
    _, trained_now = load_or_train_judge(own_prepared, segmenter)
    assert not trained_now


def _dense_fid(real, fake):
    """The textbook formula: scipy's sqrtm of the product of the two covariances."""
    from scipy import linalg

    mu1, mu2 = real.mean(0), fake.mean(0)
    s1, s2 = np.cov(real, rowvar=False), np.cov(fake, rowvar=False)
    covmean = linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


@pytest.mark.parametrize("dims,n,m", [(128, 24, 20), (256, 24, 24), (64, 100, 30)])
def test_fid_of_fewer_images_than_dimensions_is_the_dense_formula(dims, n, m):
    rng = np.random.default_rng(dims)
    real, fake = np.abs(rng.normal(size=(n, dims))), np.abs(rng.normal(0.2, 1.3, size=(m, dims)))
    assert fid(real, fake) == pytest.approx(_dense_fid(real, fake), rel=1e-6)
    assert fid(real, real) == pytest.approx(0, abs=1e-6)


def test_fid_of_more_images_than_dimensions_keeps_the_dense_computation():
    rng = np.random.default_rng(1)
    real, fake = rng.normal(size=(30, 8)), rng.normal(0.5, 1, size=(40, 8))
    assert fid(real, fake) == _dense_fid(real, fake)


@pytest.fixture(scope="module")
def tiny_judges(prepared_tiny):
    main, _ = load_or_train_judge(prepared_tiny, JudgeConfig(widths=(8, 16, 16), steps=20, batch_size=4))
    second, _ = load_or_train_judge(prepared_tiny, JudgeConfig(kind="atrous", widths=(8, 16), steps=20,
                                                                batch_size=4, seed=2))
    return scores.Judges(main=main, second=second), split_arrays(prepared_tiny, "val")


def test_judged_equals_mask_fidelity_and_ratio_noise(tiny_judges):
    """Classifying each image set once gives the numbers of the two public functions, exactly."""
    judges, (_, real, codes) = tiny_judges
    generated = np.roll(real, 1, axis=0)
    judged = scores._judged(judges.second, generated, real, codes)
    assert judged["generated"] == scores.mask_fidelity(judges.second, generated, codes)
    assert judged["real_images"] == scores.mask_fidelity(judges.second, real, codes)
    assert judged["ratio_std"] == scores.ratio_noise(judges.second, generated, real, codes)


def test_the_sweep_reuses_the_main_generation_row_as_measured(tiny_judges, monkeypatch, tmp_path):
    """The model's own step count is generated and scored once; its row is what measuring it again gives."""
    from seg2sat.evaluation import realism

    judges, (records, real, codes) = tiny_judges
    calls = {"generate": [], "realism": 0}

    def fake_generate(pipe, codes_, captions, sampling, seed, batch_size=8):  # images that depend on the steps
        calls["generate"].append(int(sampling["steps"]))
        return np.roll(real, int(sampling["steps"]) % len(real), axis=0)

    def fake_realism(real_, fake, weights, real_features=None, seed=0):
        calls["realism"] += 1
        return {"kid_x1000": float(fake.mean()), "kid_std_x1000": 1.0, "fid": 2.0, "images": len(fake)}

    monkeypatch.setattr(scores, "generate_images", fake_generate)
    monkeypatch.setattr(realism, "realism_scores", fake_realism)
    monkeypatch.setattr(realism, "features", lambda images, weights: np.zeros((len(images), 4)))
    settings = scores.ReportSettings(sampling={"steps": 4, "guidance_scale": 1.0, "controlnet_scale": 1.0},
                                     vae_round_trip=False, realism_weights=tmp_path / "w.pt", sweep_steps=(1, 2, 4))
    report, _ = scores.fidelity_report(None, None, judges, records, real, codes, settings)
    assert calls == {"generate": [4, 1, 2], "realism": 3}  # 4 steps: once, for the report and its row
    row = scores._scored_at(None, 4, judges, [r["caption"] for r in records], real, codes, settings, None)
    assert report["steps_sweep"][2] == row
    assert [e["steps"] for e in report["steps_sweep"]] == [1, 2, 4]
    assert report["steps_sweep"][2]["fidelity_ratio"] == report["fidelity_ratio"]
