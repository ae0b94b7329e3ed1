"""PreparedDataset: the augmentation keys reach the training batch; unknown keys are refused."""

import pytest
import torch

from seg2sat.data.dataset import PreparedDataset, read_manifest
from seg2sat.errors import ConfigError, DatasetError
from seg2sat.hints import is_legend_hint

N_ITEMS = 8


def _items(prepared, augment, **kw):
    ds = PreparedDataset(prepared, "train", resolution=64, augment=augment, **kw)
    return [ds[i] for i in range(N_ITEMS)]


@pytest.fixture(scope="module")
def plain(prepared_tiny):
    return _items(prepared_tiny, None)


@pytest.mark.parametrize(("key", "flip"), [("hflip", lambda t: t.flip(-1)), ("vflip", lambda t: t.flip(-2))])
def test_flip_with_probability_1_flips_pixels_and_hint(prepared_tiny, plain, key, flip):
    for a, b in zip(plain, _items(prepared_tiny, {key: 1.0}), strict=True):
        assert not torch.equal(a["pixel_values"], b["pixel_values"])
        torch.testing.assert_close(b["pixel_values"], flip(a["pixel_values"]), rtol=0, atol=0)
        torch.testing.assert_close(b["conditioning"], flip(a["conditioning"]), rtol=0, atol=0)


def test_rot90_with_probability_1_turns_every_sample(prepared_tiny, plain):
    turns = []
    for a, b in zip(plain, _items(prepared_tiny, {"rot90": 1.0}), strict=True):
        k = next(k for k in (1, 2, 3) if torch.equal(b["pixel_values"], torch.rot90(a["pixel_values"], k, (-2, -1))))
        assert torch.equal(b["conditioning"], torch.rot90(a["conditioning"], k, (-2, -1)))
        turns.append(k)
    assert len(set(turns)) >= 2


def test_crop_scale_changes_pixels_and_keeps_the_hint_in_the_legend(prepared_tiny, plain):
    for a, b in zip(plain, _items(prepared_tiny, {"crop_scale": [0.25, 0.5]}), strict=True):
        assert b["pixel_values"].shape == a["pixel_values"].shape == (3, 64, 64)
        assert not torch.equal(a["pixel_values"], b["pixel_values"])
        assert b["conditioning"].dtype == torch.uint8  # scaled to [0, 1] on the device (hint_to_float)
        assert is_legend_hint(b["conditioning"].permute(1, 2, 0).numpy())


def _hflips(items, plain):
    return [torch.equal(b["pixel_values"], a["pixel_values"].flip(-1)) for a, b in zip(plain, items, strict=True)]


def test_augment_seed_changes_the_draw_and_defaults_to_the_run_seed(prepared_tiny, plain):
    one = _hflips(_items(prepared_tiny, {"hflip": 0.5, "seed": 1}), plain)
    two = _hflips(_items(prepared_tiny, {"hflip": 0.5, "seed": 2}), plain)
    assert one != two and 0 < sum(one) < N_ITEMS
    assert one == _hflips(_items(prepared_tiny, {"hflip": 0.5}, seed=1), plain)
    # the augmentation seed leaves the run seed's other draws (empty prompts) alone
    empties = [it["empty_prompt"] for it in _items(prepared_tiny, {"hflip": 0.5, "seed": 1}, empty_prompt_prob=0.5)]
    assert empties == [it["empty_prompt"] for it in _items(prepared_tiny, None, empty_prompt_prob=0.5)]


def test_unknown_augmentation_key_is_refused(prepared_tiny):
    with pytest.raises(ConfigError, match=r"^augment: unknown key 'color_jitter'; accepted keys: hflip, vflip, "
                                            r"rot90, crop_scale, seed$"):
        PreparedDataset(prepared_tiny, "train", resolution=64, augment={"hflip": 0.5, "color_jitter": 0.2})


def test_missing_manifest_and_empty_split(prepared_tiny, tmp_path):
    with pytest.raises(DatasetError, match=r"manifest.jsonl: no manifest; run `seg2sat prepare` first"):
        read_manifest(tmp_path)
    assert {r["split"] for r in read_manifest(prepared_tiny)} == {"train", "val"}
    with pytest.raises(DatasetError, match=r": no 'test' tiles in the manifest"):
        PreparedDataset(prepared_tiny, "test")
    assert {r["split"] for r in read_manifest(prepared_tiny, "val")} == {"val"}
