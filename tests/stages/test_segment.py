"""`seg2sat segment`: mixes and schedules run and are recorded; bad sets are refused before any training."""

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio

from seg2sat.config import compose
from seg2sat.data.flair import METADATA_NAME
from seg2sat.errors import ConfigError, DatasetError
from seg2sat.evaluation.segmenter import Augment, SegmenterConfig
from seg2sat.labels import IGNORE_CODE
from seg2sat.stages import segment

DOMAINS = ["D064_2021", "D033_2020", "D075_2019"]
FAST = ["steps=4", "batch_size=4", "network.widths=[8,8,16]", "crop_size=32"]


@pytest.fixture(scope="module")
def sample_root(tmp_path_factory) -> Path:
    """The sample generator's FLAIR tree: 3 domains x 4 tiles of 64 px."""
    from seg2sat.atomic import write_json
    from seg2sat.data.synthetic import generate

    root = tmp_path_factory.mktemp("segment") / "sample_flair"
    tiles, _ = generate(root, DOMAINS, 4, 64, 0)
    write_json(root / METADATA_NAME, {f"IMG_{t.id}": t.meta for t in tiles})
    return root


def synthetic_tree(sample_root: Path, out: Path, domain: str = "D033_2020", legend: str | None = None,
                   shift: int = 17) -> Path:
    """A synthesize-like tree from `domain`'s tiles: new ids, 3 shifted bands, a corner of each mask ignored."""
    meta = json.loads((sample_root / METADATA_NAME).read_text())
    out_meta = {}
    for n, img in enumerate(sorted(sample_root.glob(f"flair_aerial_train/{domain}/*/img/IMG_*.tif"))):
        tid, new = img.stem[4:], f"{90_000_000 + n}"
        msk = next(sample_root.rglob(f"MSK_{tid}.tif"))
        with rasterio.open(img) as a, rasterio.open(msk) as b:
            bands, codes, profile, mprofile = a.read()[:3], b.read(), a.profile, b.profile
        codes[:, :8, :8] = IGNORE_CODE
        for path, array, prof in ((out / "flair_aerial_train" / domain / "Z1_SY" / "img" / f"IMG_{new}.tif",
                                   (bands.astype(np.int16) + shift).clip(0, 255).astype(np.uint8),
                                   {**profile, "count": 3}),
                                  (out / "flair_labels_train" / domain / "Z1_SY" / "msk" / f"MSK_{new}.tif", codes,
                                   mprofile)):
            path.parent.mkdir(parents=True, exist_ok=True)
            with rasterio.open(path, "w", **prof) as dst:
                dst.write(array)
        out_meta[f"IMG_{new}"] = {**meta[f"IMG_{tid}"], "bands": ["red", "green", "blue"], "synthetic": True,
                                  "source": f"prepared:{tid}", "ignore_code": IGNORE_CODE,
                                  **({"legend": legend} if legend else {})}
    (out / METADATA_NAME).write_text(json.dumps(out_meta))
    return out


def _cfg(tmp_path, sample_root, *overrides):
    return compose("segment", [f"paths.root_dir={tmp_path}", f"train.real.path={sample_root}",
                               f"test.path={sample_root}", "train.real.domains=[D033_2020,D075_2019]",
                               "test.domains=[D064_2021]", *FAST, *overrides])


def test_a_weighted_mix_of_two_sets_is_trained_scored_and_recorded(sample_root, tmp_path):
    synth = synthetic_tree(sample_root, tmp_path / "synthetic")
    result = segment.run(_cfg(tmp_path, sample_root, f"+train.synthetic={{path: {synth}, weight: 2.0}}",
                              "seeds=[0,0]"))
    rec = json.loads(result.json_path.read_text())
    assert rec == json.loads(json.dumps(result.record))
    # the mix: 8 real tiles at weight 1, 4 synthetic at weight 2: half the samples each
    assert rec["phases"] == [{"sets": ["real", "synthetic"], "probabilities": [0.5, 0.5], "steps": 4}]
    assert rec["train"]["real"]["tiles"] == 8 and rec["train"]["synthetic"]["tiles"] == 4
    assert rec["train"]["synthetic"]["ignored_share"] == pytest.approx(4 * 64 / (4 * 64 * 64), abs=1e-5)
    assert rec["test"]["tiles"] == 4 and rec["test"]["ignored_share"] == 0
    # seeds are explicit: one seed twice gives the same segmenter, so the same scores
    a, b = ({k: v for k, v in r.items() if k != "seconds"} for r in rec["runs"])
    assert a == b and 0 < a["miou"] <= 1 and rec["miou_std"] == 0 and rec["seeds"] == [0, 0]
    assert set(a["per_class_iou"]) == set(rec["per_class_iou"]) and len(a["per_class_iou"]) >= 3
    matrix = np.array(rec["confusion"])
    assert matrix.shape == (20, 20) and matrix.sum() == 2 * 4 * 64 * 64  # every test pixel, both seeds
    assert result.png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_pretrain_then_finetune_and_a_replacement_rate(sample_root, tmp_path):
    synth = synthetic_tree(sample_root, tmp_path / "synthetic")
    schedule = "schedule=[{sets: [synthetic], steps: 3}, {sets: [synthetic, real], steps: 2}]"
    result = segment.run(_cfg(tmp_path, sample_root, f"+train.synthetic={{path: {synth}, rate: 0.25}}", schedule))
    assert result.record["phases"] == [{"sets": ["synthetic"], "probabilities": [1.0], "steps": 3},
                                       {"sets": ["synthetic", "real"], "probabilities": [0.25, 0.75], "steps": 2}]
    assert result.record["runs"][0]["final_loss"] > 0 and 0 < result.record["miou_mean"] <= 1


def test_the_dry_run_trains_nothing(sample_root, tmp_path, monkeypatch, capsys):
    def no_training(*args, **kwargs):
        raise AssertionError("trained")

    monkeypatch.setattr(segment, "train_segmenter", no_training)
    result = segment.run(_cfg(tmp_path, sample_root, "check=true"))
    out = capsys.readouterr().out
    assert "train.real: 8 tiles" in out and "phase 0   4 steps, samples from train.real 1.00" in out
    assert result.json_path is None and not (tmp_path / "data" / "outputs" / "segment").exists()


@pytest.mark.parametrize(("overrides", "error", "message"), [
    (["test.domains=[D033_2020]"], DatasetError, r"'train.real' overlaps the test set .* same tile id"),
    (["train.real.domains=[D999_2000]"], DatasetError, r"dataset 'train.real' selects no tiles"),
    (["+train.synthetic={path: SYNTH_TEST}"], DatasetError, r"'train.synthetic' overlaps the test set .*rendered "
                                                            r"from 4 test tile map"),
    (["+train.synthetic={path: SYNTH13}"], DatasetError, r"'train.synthetic' uses legend flair13, the test set"),
    (["schedule=[{sets: [nothing], steps: 2}]"], ConfigError, r"schedule\[0\].sets=\['nothing'\]: name training sets"),
    (["train.real.rate=2"], ConfigError, r"train.real.rate=2: a share of the samples"),
    (["network.kind=vit"], ConfigError, r"judge.kind='vit': choose one of unet, atrous"),
    (["+augment.blur=1"], ConfigError, r"augment: unknown key\(s\) blur"),
    (["train.real.path=/nowhere"], DatasetError, r"/nowhere: dataset 'train.real' not found"),
    (["~train.real"], ConfigError, r"train: give at least one training set"),
])
def test_bad_sets_are_one_line_errors_before_any_training(sample_root, tmp_path, monkeypatch, overrides, error,
                                                          message):
    def no_training(*args, **kwargs):
        raise AssertionError("trained")

    monkeypatch.setattr(segment, "train_segmenter", no_training)
    swap = {"SYNTH_TEST": lambda: synthetic_tree(sample_root, tmp_path / "s1", domain="D064_2021"),
            "SYNTH13": lambda: synthetic_tree(sample_root, tmp_path / "s2", legend="flair13")}
    for key, make in swap.items():
        if any(key in o for o in overrides):
            overrides = [o.replace(key, str(make())) for o in overrides]
    with pytest.raises(error, match=message):
        segment.run(_cfg(tmp_path, sample_root, *overrides))


def test_the_same_image_under_another_id_is_an_overlap(sample_root, tmp_path):
    """A test tile copied into a training set under a new id (shift 0: the same bytes) is refused."""
    copy = synthetic_tree(sample_root, tmp_path / "copy", domain="D064_2021", shift=0)
    meta = json.loads((copy / METADATA_NAME).read_text())
    (copy / METADATA_NAME).write_text(json.dumps({k: {**v, "source": None} for k, v in meta.items()}))
    with pytest.raises(DatasetError, match=r"'train.copy' overlaps the test set .*4 tile\(s\) with the same image bytes"):
        segment.run(_cfg(tmp_path, sample_root, f"+train.copy={{path: {copy}}}"))


def test_the_config_holds_the_segmenter_defaults():
    """conf/segment.yaml and SegmenterConfig/Augment state the same recipe (a default lives in both)."""
    cfg = compose("segment")
    config, seeds = segment.settings(cfg)
    assert config == SegmenterConfig() and config.augment == Augment() and seeds == [0]
