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


# ---------------------------------------------------------------------------------------------
# The sharded latent cache
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_parts():
    from seg2sat.generation.models import load_components

    return load_components({"name": "tiny", "pretrained_dir": None, "seed": 0})


def _copy_manifest(prepared, dest):
    import shutil

    shutil.copytree(prepared, dest, ignore=shutil.ignore_patterns("cache"))
    return dest


def _rows(cache):
    return [cache.get(i, False) for i in range(len(cache))]


def _same_row(a, b):
    """Hints byte for byte; encodings up to float rounding (batches of another size)."""
    for x, y in zip(a[:3], b[:3], strict=True):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-5)
    assert torch.equal(a[3], b[3])


def test_shards_hold_the_same_rows_as_one_file(prepared_tiny, tiny_parts, tmp_path):
    from seg2sat.data.dataset import LatentCache

    one, built = LatentCache.build_or_load(_copy_manifest(prepared_tiny, tmp_path / "a"), "train", tiny_parts, 64)
    many, _ = LatentCache.build_or_load(_copy_manifest(prepared_tiny, tmp_path / "b"), "train", tiny_parts, 64,
                                        shard_size=5)
    assert built and len(one) == len(many) == 16
    assert sorted(p.name for p in many.folder.glob("shard-*")) == [f"shard-0000{i}.safetensors" for i in range(4)]
    for a, b in zip(_rows(one), _rows(many), strict=True):
        _same_row(a, b)
        assert a[3].dtype == torch.uint8 and a[3].shape == (3, 64, 64)
    # the cached hint is the prepared hint, byte for byte
    ds = PreparedDataset(tmp_path / "b", "train", resolution=64)
    assert torch.equal(many.get(7, False)[3], ds[7]["conditioning"])
    assert torch.equal(many.get(7, True)[2], many.empty[0])


def test_ranks_build_disjoint_shards_and_a_killed_build_resumes(prepared_tiny, tiny_parts, tmp_path, monkeypatch):
    import seg2sat.data.dataset as dataset
    from seg2sat.data.dataset import LatentCache

    root = _copy_manifest(prepared_tiny, tmp_path / "p")
    encoded = []
    original = dataset._encode_rows

    def spy(ds, rows, *args):
        encoded.append((rows.start, rows.stop))
        return original(ds, rows, *args)

    monkeypatch.setattr(dataset, "_encode_rows", spy)
    # rank 1 of 2 encodes shards 1 and 3 (and writes no index); rank 0 then does 0 and 2 and the index
    folder = LatentCache.folder_for(root, "train", tiny_parts, 64)
    folder.mkdir(parents=True)
    assert dataset.encode_shards(PreparedDataset(root, "train", resolution=64), folder, tiny_parts, "cpu", rank=1,
                                 world=2, shard_size=4) == [1, 3]
    assert encoded == [(4, 8), (12, 16)] and not (folder / "index.json").exists()
    # a build killed mid-shard leaves a temp file, swept by the next build
    (folder / ".tmp-shard-00000.safetensors").write_bytes(b"half")
    cache, built = LatentCache.build_or_load(root, "train", tiny_parts, 64, rank=0, world=2,
                                             barrier=lambda: None, shard_size=4)
    assert built and encoded[2:] == [(0, 4), (8, 12)] and not list(folder.glob(".tmp-*"))
    reference, _ = LatentCache.build_or_load(_copy_manifest(prepared_tiny, tmp_path / "q"), "train", tiny_parts, 64)
    for a, b in zip(_rows(cache), _rows(reference), strict=True):
        _same_row(a, b)
    # complete: a third call loads, encodes nothing
    again, built = LatentCache.build_or_load(root, "train", tiny_parts, 64, shard_size=4)
    assert not built and len(encoded) == 4 + 1  # + the reference build's single shard
