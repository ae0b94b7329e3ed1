"""The sharded latent cache: shards equal one file, ranks build disjoint shards, a killed build resumes."""

import pytest
import torch

import seg2sat.data.latent_cache as latent_cache
from seg2sat.data.dataset import PreparedDataset
from seg2sat.data.latent_cache import LatentCache


@pytest.fixture(scope="module")
def tiny_parts():
    from seg2sat.generation.models import load_components

    return load_components({"name": "tiny", "random_weights": True, "seed": 0})


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

    root = _copy_manifest(prepared_tiny, tmp_path / "p")
    encoded = []
    original = latent_cache._encode_rows

    def spy(ds, rows, *args):
        encoded.append((rows.start, rows.stop))
        return original(ds, rows, *args)

    monkeypatch.setattr(latent_cache, "_encode_rows", spy)
    # rank 1 of 2 encodes shards 1 and 3 (and writes no index); rank 0 then does 0 and 2 and the index
    folder = LatentCache.folder_for(root, "train", tiny_parts, 64)
    folder.mkdir(parents=True)
    assert latent_cache.encode_shards(PreparedDataset(root, "train", resolution=64), folder, tiny_parts, "cpu", rank=1,
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
