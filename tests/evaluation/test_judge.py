import numpy as np
import pytest
import torch

from seg2sat.errors import DatasetError
from seg2sat.evaluation.judge import JudgeConfig, load_or_train_judge, split_arrays, train_judge
from seg2sat.evaluation.scores import mask_fidelity, segmentation_scores, vae_round_trip
from seg2sat.labels import PALETTE

# Small enough to train in seconds on 2 cores, large enough to learn the sample classes.
FAST = JudgeConfig(widths=(16, 32, 32), steps=150, batch_size=8, learning_rate=4e-3)


@pytest.fixture(scope="module")
def judged(prepared_tiny):
    judge, trained_now = load_or_train_judge(prepared_tiny, FAST)
    return judge, trained_now, split_arrays(prepared_tiny, "val")


def test_judge_scores_real_images_far_above_shuffled_maps(judged):
    judge, trained_now, (_, images, codes) = judged
    assert trained_now
    real = mask_fidelity(judge, images, codes)
    assert real["miou"] > 0.45 and real["pixel_accuracy"] > 0.7
    # The same images scored against another tile's map: a layout that does not match.
    shuffled = mask_fidelity(judge, images, np.roll(codes, 1, axis=0))
    assert shuffled["miou"] < 0.4 * real["miou"]
    assert set(real["per_class_iou"]) >= {"water", "impervious surface"}


def test_judge_reads_the_photo_not_the_hint_colours(judged):
    judge, _, (_, images, codes) = judged
    # Pasting the legend colours as the "generated image" is not what the judge learned.
    pasted = mask_fidelity(judge, PALETTE[codes], codes)
    assert pasted["miou"] < 0.5 * mask_fidelity(judge, images, codes)["miou"]


def test_judge_is_cached_per_dataset(judged, prepared_tiny):
    judge, _, (_, images, _) = judged
    again, trained_now = load_or_train_judge(prepared_tiny, FAST)
    assert not trained_now
    np.testing.assert_array_equal(again.classify(images[:3]), judge.classify(images[:3]))
    assert again.classify(images[0]).shape == images.shape[1:3] and again.classify(images[0]).dtype == np.uint8
    # Another judge config is another cache entry (the fixture's dataset is shared with other tests).
    before = set((prepared_tiny / "cache").glob("judge-*"))
    _, other_now = load_or_train_judge(prepared_tiny, JudgeConfig(widths=(8, 16, 16), steps=2, batch_size=2))
    assert other_now
    assert len(set((prepared_tiny / "cache").glob("judge-*")) - before) == 1


def test_classify_pads_sides_that_are_not_multiples_of_four(judged):
    judge, _, (_, images, _) = judged
    assert judge.classify(images[0, :62, :61]).shape == (62, 61)


def test_segmentation_scores_by_hand():
    target = np.array([[[1, 1], [5, 5]]], np.uint8)
    pred = np.array([[[1, 5], [5, 5]]], np.uint8)
    scores = segmentation_scores(pred, target)
    # building: inter 1, union 2; water: inter 2, union 3
    assert scores["per_class_iou"] == {"building": pytest.approx(0.5), "water": pytest.approx(2 / 3)}
    assert scores["miou"] == pytest.approx((0.5 + 2 / 3) / 2)
    assert scores["pixel_accuracy"] == pytest.approx(0.75)
    # A class predicted but absent from the targets is in no mean, but costs the others IoU.
    scores = segmentation_scores(np.array([[[3, 1], [5, 5]]], np.uint8), target)
    assert set(scores["per_class_iou"]) == {"building", "water"}
    assert scores["per_class_iou"]["building"] == pytest.approx(0.5)


def test_train_judge_refuses_no_images():
    with pytest.raises(DatasetError, match="no training images"):
        train_judge(np.zeros((0, 8, 8, 3), np.uint8), np.zeros((0, 8, 8), np.uint8), FAST)


def test_split_arrays_names_the_missing_split(prepared_tiny):
    with pytest.raises(DatasetError, match="no 'test' tiles"):
        split_arrays(prepared_tiny, "test")


def test_vae_round_trip_is_the_vae_image_by_image_whatever_the_batch():
    from seg2sat.generation.tiny import build_tiny_components

    vae = build_tiny_components(0)["vae"].eval()
    images = np.random.default_rng(0).integers(0, 255, (3, 32, 32, 3), dtype=np.uint8)
    with torch.no_grad():
        out = vae_round_trip(vae, images, batch_size=2)
        one_by_one = np.concatenate([vae_round_trip(vae, images[i:i + 1], batch_size=1) for i in range(3)])
        # the decoded posterior mean, by hand, for the first image
        x = torch.from_numpy(images[:1]).permute(0, 3, 1, 2).float() / 127.5 - 1
        by_hand = ((vae.decode(vae.encode(x).latent_dist.mean).sample.clamp(-1, 1) + 1) * 127.5).round()
    assert out.shape == images.shape and out.dtype == np.uint8
    assert np.abs(out.astype(int) - one_by_one.astype(int)).max() <= 1  # batching changes nothing
    assert np.abs(out[0].astype(int) - by_hand[0].permute(1, 2, 0).numpy().astype(int)).max() <= 1
    assert np.abs(out.astype(int) - images.astype(int)).mean() > 10  # a random VAE: not the identity


def test_the_judge_trains_on_fixed_size_crops_whatever_the_tile_size(monkeypatch):
    """A 512 px tile costs a judge step what a 64 px tile does: the network sees crops only."""
    from seg2sat.evaluation import judge as judge_module

    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (3, 512, 512, 3), dtype=np.uint8)
    codes = rng.integers(1, 20, (3, 512, 512), dtype=np.uint8)
    seen = []
    forward = judge_module.SegNet.forward
    monkeypatch.setattr(judge_module.SegNet, "forward", lambda self, x: seen.append(tuple(x.shape)) or forward(self, x))
    config = JudgeConfig(widths=(8, 16, 16), steps=3, batch_size=4, crop_size=64)
    big = train_judge(images, codes, config)
    assert seen == [(4, 3, 64, 64)] * 3
    monkeypatch.undo()
    assert big.classify(images[0]).shape == (512, 512)  # it still reads whole tiles


def test_tiles_no_larger_than_the_crop_train_exactly_as_before_crops(judged, prepared_tiny):
    """The demo's 64 px judge is unchanged by cropping: no crop offsets are drawn for it."""
    _, images, codes = split_arrays(prepared_tiny, "train")
    small = JudgeConfig(widths=(8, 16, 16), steps=3, batch_size=4)
    a = train_judge(images, codes, small).net.state_dict()
    b = train_judge(images, codes, JudgeConfig(**{**small.__dict__, "crop_size": 128})).net.state_dict()
    assert images.shape[1:3] == (64, 64) and small.crop_size == 64
    for name in a:
        assert torch.equal(a[name], b[name]), name
