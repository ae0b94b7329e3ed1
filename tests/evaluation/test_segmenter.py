"""The reference segmenter: ignored pixels count nowhere, mixes draw as configured, overlaps are refused."""

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from seg2sat.errors import ConfigError, DatasetError
from seg2sat.evaluation.scores import segmentation_scores
from seg2sat.evaluation.segmenter import (
    MERGED_LEGEND,
    Augment,
    Phase,
    SegmenterConfig,
    TileSet,
    check_sets,
    class_weights,
    confusion,
    confusion_scores,
    mix_probabilities,
    segmentation_loss,
    train_segmenter,
)
from seg2sat.labels import IGNORE_CODE, PALETTE

TINY = SegmenterConfig(widths=(8, 8, 8), batch_size=4, crop_size=16)


def _tiles(name: str, n: int = 4, seed: int = 0, ids: list[str] | None = None) -> TileSet:
    """n 16-px tiles of two classes (water left of a random column, buildings right), coloured by class."""
    rng = np.random.default_rng(seed)
    codes = np.full((n, 16, 16), 1, np.uint8)
    for i in range(n):
        codes[i, :, : int(rng.integers(4, 12))] = 5
    images = (PALETTE[codes].astype(np.int16) + rng.integers(-20, 20, (n, 16, 16, 3))).clip(0, 255).astype(np.uint8)
    return TileSet(name, Path(name), ids or [f"{seed}{i:03d}" for i in range(n)], images, codes,
                   np.ones(codes.shape, bool), [None] * n)


def _state(judge) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in judge.net.state_dict().items()}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


def test_ignored_pixels_train_as_if_their_labels_were_absent():
    """Wrong labels under ignored pixels give the same network, bit for bit, as right ones; unignored, they do not."""
    phase = [Phase((0,), (1.0,), 4)]
    right = _tiles("right")
    region = np.zeros(right.codes.shape, bool)
    region[:, 4:12, 2:10] = True
    wrong = TileSet("wrong", right.path, right.ids, right.images, np.where(region, 13, right.codes).astype(np.uint8),
                    ~region, right.sources)
    ignored_right = TileSet("r", right.path, right.ids, right.images, right.codes, ~region, right.sources)
    a = _state(train_segmenter([wrong], phase, TINY, seed=3))
    b = _state(train_segmenter([ignored_right], phase, TINY, seed=3))
    assert _same(a, b)
    used = TileSet("used", right.path, right.ids, right.images, wrong.codes, np.ones(region.shape, bool), right.sources)
    assert not _same(a, _state(train_segmenter([used], phase, TINY, seed=3)))  # the labels do reach the loss


def test_the_loss_is_the_mean_over_labelled_pixels_and_ignored_ones_get_no_gradient():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 20, 4, 4, generator=g, requires_grad=True)
    targets = torch.randint(1, 6, (2, 4, 4), generator=g)
    targets[0, :2] = IGNORE_CODE
    weights = class_weights([targets.numpy().astype(np.uint8)])
    loss = segmentation_loss(logits, targets, weights)
    keep = targets != IGNORE_CODE
    per_pixel = F.cross_entropy(logits, targets.clamp_max(19), weight=weights, reduction="none")
    expected = per_pixel[keep].sum() / weights[targets[keep]].sum()
    assert float(loss.detach()) == pytest.approx(float(expected), rel=1e-6)
    loss.backward()
    assert torch.all(logits.grad[0, :, :2] == 0) and torch.any(logits.grad[1] != 0)


def test_class_weights_count_no_ignored_pixel():
    codes = np.array([[1, 1, 5, IGNORE_CODE]], np.uint8)
    with_ignored = class_weights([codes])
    without = class_weights([codes[:, :3]])
    assert torch.allclose(with_ignored, without) and with_ignored.shape == (20,)


def test_scores_match_segmentation_scores_and_leave_ignored_pixels_out():
    rng = np.random.default_rng(0)
    targets = rng.integers(1, 6, (3, 8, 8)).astype(np.uint8)
    preds = np.where(rng.random((3, 8, 8)) < 0.7, targets, rng.integers(1, 6, (3, 8, 8))).astype(np.uint8)
    mine = confusion_scores(confusion(preds, targets))
    theirs = segmentation_scores(list(preds), list(targets))
    assert mine["miou"] == pytest.approx(theirs["miou"]) and mine["per_class_iou"] == pytest.approx(
        theirs["per_class_iou"]) and mine["pixel_accuracy"] == pytest.approx(theirs["pixel_accuracy"])
    # every wrong prediction on an ignored pixel: a perfect score
    ignored = np.where(preds != targets, IGNORE_CODE, targets).astype(np.uint8)
    perfect = confusion_scores(confusion(preds, ignored))
    assert perfect["miou"] == 1.0 and perfect["pixel_accuracy"] == 1.0


def test_augmentation_moves_image_and_labels_together_and_keeps_the_ignore_code():
    """Each sample's label still sits under its own colour after flips, turns and the scale crop."""
    tiles = _tiles("a", n=8)
    targets = tiles.targets()
    targets[:, :3] = IGNORE_CODE
    x = torch.from_numpy(targets.astype(np.float32) / 255.0)[:, None].repeat(1, 3, 1, 1)  # the label as the image
    y = torch.from_numpy(targets.astype(np.int64))
    aug = Augment(hflip=0.5, vflip=0.5, rot90=1.0, colour=0.0, crop_scale=(0.3, 1.0))
    g = torch.Generator().manual_seed(1)
    xa, ya = aug(x, y, g)
    assert set(torch.unique(ya).tolist()) <= {1, 5, IGNORE_CODE} and (ya == IGNORE_CODE).any()
    # bilinear blends the image at label edges: away from them, the image still holds the label
    inside = (F.max_pool2d(ya[:, None].float(), 3, 1, 1) == -F.max_pool2d(-ya[:, None].float(), 3, 1, 1))[:, 0]
    assert torch.allclose(xa[:, 0][inside] * 255, ya[inside].float(), atol=0.5)
    assert not torch.equal(ya, y)  # something moved


def test_mix_probabilities_weights_rates_and_refusals():
    assert mix_probabilities([10, 30], [None, None], [None, None], ["a", "b"]) == pytest.approx((0.25, 0.75))
    assert mix_probabilities([10, 30], [3.0, 1.0], [None, None], ["a", "b"]) == pytest.approx((0.5, 0.5))
    assert mix_probabilities([10, 30, 5], [None, None, None], [None, None, 0.5], ["a", "b", "c"]) == pytest.approx(
        (0.125, 0.375, 0.5))
    with pytest.raises(ConfigError, match=r"train.s.rate=1.5: a share of the samples"):
        mix_probabilities([1, 1], [None, None], [None, 1.5], ["train.r", "train.s"])
    with pytest.raises(ConfigError, match=r"rates add up to 1.2 > 1"):
        mix_probabilities([1, 1], [None, None], [0.6, 0.6], ["a", "b"])
    with pytest.raises(ConfigError, match=r"rates add up to 0.5 < 1 and no other set has a weight"):
        mix_probabilities([1, 1], [0.0, None], [None, 0.5], ["a", "b"])


def test_a_phase_draws_only_its_sets():
    """A phase on set 1 alone trains as a run given only set 1 (set 0 is never drawn)."""
    a, b = _tiles("a", seed=1), _tiles("b", seed=2)
    alone = _state(train_segmenter([b], [Phase((0,), (1.0,), 3)], TINY, seed=0))
    second = _state(train_segmenter([a, b], [Phase((1,), (1.0,), 3)], TINY, seed=0))
    assert _same(alone, second)


def test_check_sets_refuses_overlap_other_legends_and_empty_sets():
    train, test = _tiles("train.real", seed=1), _tiles("test", seed=2)
    check_sets([train], test)  # disjoint: accepted
    same_id = _tiles("train.real", seed=3, ids=[test.ids[0], "x1", "x2", "x3"])
    with pytest.raises(DatasetError, match=r"'train.real' overlaps the test set .*1 same tile id\(s\), first 2000"):
        check_sets([same_id], test)
    copied = TileSet("train.copy", Path("c"), ["c1"], test.images[1:2], test.codes[1:2], test.valid[1:2], [None])
    with pytest.raises(DatasetError, match=r"1 tile\(s\) with the same image bytes as a test tile, first c1"):
        check_sets([train, copied], test)
    rendered = _tiles("train.synthetic", seed=4, ids=["90000000", "90000001", "90000002", "90000003"])
    rendered.sources = [None, test.ids[2], None, None]
    with pytest.raises(DatasetError, match=r"rendered from 1 test tile map\(s\), first 2002"):
        check_sets([rendered], test)
    merged = _tiles("train.merged", seed=5)
    merged.legend = MERGED_LEGEND
    with pytest.raises(DatasetError, match=r"'train.merged' uses legend flair13, the test set .* uses flair19"):
        check_sets([merged], test)
    empty = TileSet("train.none", Path("n"), [], np.zeros((0, 1, 1, 3), np.uint8), np.zeros((0, 1, 1), np.uint8),
                    np.zeros((0, 1, 1), bool))
    with pytest.raises(DatasetError, match=r"dataset 'train.none' selects no tiles"):
        check_sets([empty], test)
