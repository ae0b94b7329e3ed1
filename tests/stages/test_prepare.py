import json

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from PIL import Image

from seg2sat.data.prepare import chunks_of, split_domains
from seg2sat.errors import DatasetError, RasterError
from seg2sat.hints import hint_to_codes
from seg2sat.labels import class_name, code_of
from seg2sat.stages import prepare, sample_data


@pytest.fixture
def sample_root(stage_cfg):
    res = sample_data.run(stage_cfg("sample_data", "tiles_per_domain=3", "size=32"))
    assert res.n_tiles == 12
    return res.root


def _manifest(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_prepare_writes_the_documented_layout(stage_cfg, sample_root):
    res = prepare.run(stage_cfg("prepare", "workers=2"))
    out = res.prepared_dir
    assert (res.n_done, res.n_skipped, res.n_failed) == (12, 0, 0)
    rows = _manifest(res.manifest_path)
    assert [r["id"] for r in rows] == sorted(r["id"] for r in rows) and len(rows) == 12
    r = rows[0]
    hint = np.asarray(Image.open(out / r["hint"]))
    image = np.asarray(Image.open(out / r["image"]))
    assert hint.shape == image.shape == (32, 32, 3)
    codes = hint_to_codes(hint)  # legend colours only
    assert sum(r["shares"].values()) == pytest.approx(1.0)
    assert r["caption"].startswith(f"Aerial view of Pyrénées-Atlantiques. {next(iter(r['shares']))}")
    # shares and pixel counts, recomputed from the source mask read with rasterio
    with rasterio.open(r["source_msk"]) as src:
        counts = np.bincount(src.read(1).ravel(), minlength=20)
    expected = {class_name(c): counts[c] / counts.sum() for c in np.flatnonzero(counts)}
    assert r["shares"] == pytest.approx(expected, rel=1e-12) and list(r["shares"]) == sorted(
        expected, key=lambda name: (-expected[name], code_of(name)))
    assert r["pixels"] == counts[1:].tolist() == np.bincount(codes.ravel(), minlength=20)[1:].tolist()
    # footprints: one polygon per tile, EPSG:2154, bounds of the tile
    fp = gpd.read_file(out / "footprints.gpkg", layer="tiles")
    assert fp.crs.to_epsg() == 2154 and len(fp) == 12
    row = fp.set_index("id").loc[r["id"]]
    assert row.geometry.bounds == pytest.approx(tuple(r["bounds"]))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_tiles"] == 12 and sum(summary["per_split"].values()) == 12
    assert (out / "class_histogram.png").stat().st_size > 1000


def test_split_is_by_domain_without_leakage(stage_cfg, sample_root):
    rows = _manifest(prepare.run(stage_cfg("prepare")).manifest_path)
    train = {r["domain"] for r in rows if r["split"] == "train"}
    val = {r["domain"] for r in rows if r["split"] == "val"}
    assert train and val and not (train & val)
    rows = _manifest(prepare.run(stage_cfg("prepare", "split.val_domains=[D033_2020,D075_2019]")).manifest_path)
    assert {r["domain"] for r in rows if r["split"] == "val"} == {"D033_2020", "D075_2019"}
    with pytest.raises(DatasetError, match="split.val_domains: D999_2020 not in the data"):
        prepare.run(stage_cfg("prepare", "split.val_domains=[D999_2020]"))


def test_split_domains_rules():
    assert split_domains(["A"], None, 0.5, 0) == {"A": "train"}
    s = split_domains(["A", "B", "C", "D"], None, 0.25, 0)
    assert sorted(s.values()) == ["train", "train", "train", "val"]
    assert sorted(split_domains(["A", "B"], None, 0.9, 0).values()) == ["train", "val"]
    assert s == split_domains(["D", "C", "B", "A"], None, 0.25, 0)  # order does not matter


def test_rerun_skips_finished_and_redoes_killed_tiles(stage_cfg, sample_root):
    res = prepare.run(stage_cfg("prepare"))
    out = res.prepared_dir
    rows = _manifest(res.manifest_path)
    keep = out / rows[1]["hint"]
    mtime = keep.stat().st_mtime_ns
    # A killed run: tile 0's images were written but its record line only half (the worker died
    # mid-write); a temp file is left over.
    shard = out / "records" / "records.jsonl"
    assert [json.loads(line)["id"] for line in shard.read_text().splitlines()] == [r["id"] for r in rows]
    lines = shard.read_text().splitlines(keepends=True)
    shard.write_text("".join(lines[1:]))
    (out / "records" / "part-killed.jsonl").write_text(lines[0][: len(lines[0]) // 2])
    (out / "hints" / ".tmp-dead-000000.png").write_bytes(b"half")
    again = prepare.run(stage_cfg("prepare"))
    assert (again.n_done, again.n_skipped) == (1, 11)
    assert keep.stat().st_mtime_ns == mtime
    assert not list((out / "hints").glob(".tmp-*"))
    assert _manifest(again.manifest_path) == rows
    # the shards were merged back into one file, in id order
    assert sorted(p.name for p in (out / "records").iterdir()) == ["records.jsonl"]
    assert [json.loads(line)["id"] for line in shard.read_text().splitlines()] == [r["id"] for r in rows]


def test_rerun_with_nothing_to_do_rewrites_nothing(stage_cfg, sample_root):
    res = prepare.run(stage_cfg("prepare"))
    out = res.prepared_dir
    outputs = ["manifest.jsonl", "footprints.gpkg", "summary.json", "class_histogram.png", "records/records.jsonl"]
    before = {name: (out / name).stat().st_mtime_ns for name in outputs}
    again = prepare.run(stage_cfg("prepare"))
    assert (again.n_done, again.n_skipped) == (0, 12)
    assert {name: (out / name).stat().st_mtime_ns for name in outputs} == before
    # a changed split is a change: the manifest is rewritten with it
    third = prepare.run(stage_cfg("prepare", "split.val_domains=[D033_2020]"))
    assert third.n_done == 0 and (out / "manifest.jsonl").stat().st_mtime_ns != before["manifest.jsonl"]
    assert {r["domain"] for r in _manifest(third.manifest_path) if r["split"] == "val"} == {"D033_2020"}


def test_chunks_bound_the_work_in_flight():
    tiles = list(range(1000))
    chunks = chunks_of(tiles, workers=2, chunk_size=64)
    assert [len(c) for c in chunks] == [64] * 15 + [40] and sum(chunks, []) == tiles
    small = chunks_of(tiles[:12], workers=2, chunk_size=64)
    assert [len(c) for c in small] == [2] * 6  # small jobs still reach every worker


def test_merge13_and_resize(stage_cfg, sample_root):
    res = prepare.run(stage_cfg("prepare", "merge13=true", "size=16"))
    for r in _manifest(res.manifest_path):
        codes = hint_to_codes(np.asarray(Image.open(res.prepared_dir / r["hint"])))
        assert codes.shape == (16, 16) and codes.max() <= 19 and not (set(np.unique(codes)) & set(range(13, 19)))


def test_bad_tile_raises_or_is_skipped(stage_cfg, sample_root):
    bad = sorted(sample_root.rglob("IMG_*.tif"))[0]
    bad.write_bytes(b"garbage")
    with pytest.raises(RasterError, match=rf"{bad.name}: not a readable raster"):
        prepare.run(stage_cfg("prepare"))
    res = prepare.run(stage_cfg("prepare", "on_error=skip"))
    # tiles converted before the error were kept: the second run only finishes the rest
    assert res.n_failed == 1 and res.n_done + res.n_skipped == 11 and res.n_skipped > 0
    summary = json.loads((res.prepared_dir / "summary.json").read_text())
    assert list(summary["failed"]) == [bad.stem.split("_")[1]]


def test_missing_root_is_a_clear_error(stage_cfg, tmp_path):
    with pytest.raises(DatasetError, match="FLAIR root is not a folder"):
        prepare.run(stage_cfg("prepare", f"data_root={tmp_path}/nope"))


def test_flair2_tree_keeps_its_flair1_codes(stage_cfg, tmp_path):
    from affine import Affine

    from seg2sat.geo.geotiff import write_geotiff
    from seg2sat.geo.raster import FLAIR_CRS

    root = tmp_path / "flair2"
    codes = (np.arange(16 * 16).reshape(16, 16) % 19 + 1).astype(np.uint8)  # every code 1..19
    for tid, dom, tree in (("077001", "D013_2020", "train"), ("080001", "D077_2021", "2_test")):
        t = Affine(0.2, 0, 893000.0, 0, -0.2, 6247000.0)
        img = np.stack([codes * 10, codes, codes, codes, codes])
        aerial = "flair_aerial_train" if tree == "train" else "flair_2_aerial_test"
        labels = "flair_labels_train" if tree == "train" else "flair_2_labels_test"
        write_geotiff(root / aerial / dom / "Z1_UA" / "img" / f"IMG_{tid}.tif", img, FLAIR_CRS, t)
        write_geotiff(root / labels / dom / "Z1_UA" / "msk" / f"MSK_{tid}.tif", codes[None], FLAIR_CRS, t)
    (root / "flair_sen_train").mkdir()
    res = prepare.run(stage_cfg("prepare", f"data_root={root}", "workers=0"))
    assert res.n_done == 2
    for r in _manifest(res.manifest_path):
        np.testing.assert_array_equal(hint_to_codes(np.asarray(Image.open(res.prepared_dir / r["hint"]))), codes)
        assert r["layout"] == "flair2" and r["nodata_pixels"] == 0 and r["valid"] is None
    assert json.loads((res.prepared_dir / "summary.json").read_text())["layout"] == "flair2"


def test_tiles_outside_france_are_captioned_with_their_real_place(stage_cfg, tmp_path):
    from affine import Affine

    from seg2sat.data.flair import METADATA_NAME
    from seg2sat.geo.geotiff import write_geotiff

    root = tmp_path / "nc"
    codes = np.full((16, 16), 7, np.uint8)
    t = Affine(0.2, 0, 637000.0, 0, -0.2, 222000.0)  # EPSG:3358, the North Carolina sample's area
    write_geotiff(root / "IMG_000001.tif", np.stack([codes] * 5), "EPSG:3358", t)
    write_geotiff(root / "MSK_000001.tif", codes[None], "EPSG:3358", t)
    (root / METADATA_NAME).write_text(json.dumps({"IMG_000001": {"domain": "NC_2020"}}))
    res = prepare.run(stage_cfg("prepare", f"data_root={root}", "workers=0"))
    (row,) = _manifest(res.manifest_path)
    assert row["caption"] == "Aerial view of West Raleigh, Wake County, North Carolina, United States. deciduous"
    assert row["crs"] == "EPSG:3358"
