import json

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.crs import CRS

from seg2sat.data.flair import METADATA_NAME, Flair1, FlairTile
from seg2sat.data.tiles import detect_layout, discover
from seg2sat.errors import DatasetError, GeoreferenceError, LegendError, RasterError

T = Affine(0.2, 0, 400000.0, 0, -0.2, 6200000.0)


def _tif(path, bands=1):
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", driver="GTiff", width=8, height=8, count=bands, dtype="uint8",
                       crs="EPSG:2154", transform=T) as dst:
        dst.write(np.ones((bands, 8, 8), np.uint8))


def test_official_layout_pairs_across_sibling_trees(tmp_path):
    for split in ("train", "test"):
        for tid, dom, zone in (("000001", "D064_2021", "Z7_UA"), ("000002", "D033_2020", "Z1_AU")):
            tid = tid if split == "train" else str(int(tid) + 100).zfill(6)
            _tif(tmp_path / f"flair_aerial_{split}" / dom / zone / "img" / f"IMG_{tid}.tif", 5)
            _tif(tmp_path / f"flair_labels_{split}" / dom / zone / "msk" / f"MSK_{tid}.tif")
    found = discover(tmp_path)
    assert [t.id for t in found.tiles] == ["000001", "000002", "000101", "000102"]
    t = found.tiles[0]
    assert (t.domain, t.zone) == ("D064_2021", "Z7_UA")
    assert t.img.name == "IMG_000001.tif" and t.msk.name == "MSK_000001.tif"
    assert "flair_labels_train" in t.msk.parts
    assert found.orphan_images == [] and found.orphan_masks == []


def test_flat_folder_with_orphans_and_metadata(tmp_path):
    for tid in ("000010", "000011"):
        _tif(tmp_path / f"IMG_{tid}.tif", 5)
    _tif(tmp_path / "MSK_000010.tif")
    _tif(tmp_path / "MSK_000099.tif")
    meta = {"IMG_000010": {"domain": "D075_2019", "zone": "Z2_UU", "date": "2019-06-01",
                           "patch_centroid_x": 1.0, "display_name": "Paris, France"}}
    (tmp_path / METADATA_NAME).write_text(json.dumps(meta))
    found = discover(tmp_path)
    assert [t.id for t in found.tiles] == ["000010"]
    assert found.tiles[0].domain == "D075_2019" and found.tiles[0].meta["display_name"] == "Paris, France"
    assert [p.name for p in found.orphan_images] == ["IMG_000011.tif"]
    assert [p.name for p in found.orphan_masks] == ["MSK_000099.tif"]
    assert found.metadata_file == tmp_path / METADATA_NAME
    assert "1 tiles, 1 images without mask, 1 masks without image" in found.summary()


def test_nothing_found_names_the_root(tmp_path):
    (tmp_path / "readme.txt").write_text("hi")
    with pytest.raises(DatasetError, match=rf"{tmp_path}: no FLAIR tiles found"):
        discover(tmp_path)
    with pytest.raises(DatasetError, match="FLAIR root is not a folder"):
        discover(tmp_path / "missing")


def test_duplicate_ids_and_bad_metadata(tmp_path):
    _tif(tmp_path / "a" / "IMG_000001.tif", 5)
    _tif(tmp_path / "b" / "IMG_000001.tif", 5)
    with pytest.raises(DatasetError, match="image id 000001 appears twice"):
        discover(tmp_path)
    (tmp_path / "b" / "IMG_000001.tif").unlink()
    (tmp_path / METADATA_NAME).write_text("{not json")
    with pytest.raises(DatasetError, match=rf"{METADATA_NAME}: unreadable metadata JSON"):
        discover(tmp_path)


def test_flair2_layout_is_detected_and_read_like_flair1(tmp_path):
    # FLAIR-2 (IGNF/FLAIR-2 flair-2-config.yml, torchgeo flair2.py): flair_aerial_train,
    # flair_sen_train, flair_labels_train; test trees flair_2_aerial_test / flair_2_labels_test;
    # aerial metadata in flair_aerial_metadata.json; masks in the same 1..19 codes.
    _tif(tmp_path / "flair_aerial_train" / "D013_2020" / "Z10_AU" / "img" / "IMG_077001.tif", 5)
    _tif(tmp_path / "flair_labels_train" / "D013_2020" / "Z10_AU" / "msk" / "MSK_077001.tif")
    (tmp_path / "flair_sen_train" / "D013_2020" / "Z10_AU" / "sen").mkdir(parents=True)
    np.save(tmp_path / "flair_sen_train" / "D013_2020" / "Z10_AU" / "sen" / "SEN2_sp_D013_2020-Z10_AU_data.npy",
            np.zeros((2, 10, 4, 4), np.int16))
    _tif(tmp_path / "flair_2_aerial_test" / "D077_2021" / "Z1_NF" / "img" / "IMG_080001.tif", 5)
    _tif(tmp_path / "flair_2_labels_test" / "D077_2021" / "Z1_NF" / "msk" / "MSK_080001.tif")
    meta = {"IMG_077001": {"domain": "D013_2020", "zone": "Z10_AU", "date": "2020-09-14", "time": "11h20",
                           "camera": "UCE-M3-f120-s06"}}
    (tmp_path / "flair_aerial_metadata.json").write_text(json.dumps(meta))
    assert detect_layout(tmp_path) == "flair2"
    found = discover(tmp_path)
    assert found.layout == "flair2" and [t.id for t in found.tiles] == ["077001", "080001"]
    assert found.tiles[0].meta["date"] == "2020-09-14" and found.tiles[0].layout == "flair2"
    assert found.metadata_file == tmp_path / "flair_aerial_metadata.json"
    assert (found.tiles[1].domain, found.tiles[1].zone) == ("D077_2021", "Z1_NF")
    assert found.orphan_images == [] and found.orphan_masks == []


def test_layout_detection_and_explicit_dataset(tmp_path):
    _tif(tmp_path / "IMG_000001.tif", 5)
    _tif(tmp_path / "MSK_000001.tif")
    assert detect_layout(tmp_path) == "flair1"
    assert discover(tmp_path, dataset="flair2").layout == "flair2"
    with pytest.raises(DatasetError, match=r"unknown dataset='flair3'; expected auto, flairhub, flair2, flair1"):
        discover(tmp_path, dataset="flair3")
    with pytest.raises(DatasetError, match="no FLAIR-HUB patches found"):
        discover(tmp_path, dataset="flairhub")

# ---------------------------------------------------------------------------------------------
# Reading an IMG/MSK pair through the FLAIR-1 layout (what `prepare` reads)
# ---------------------------------------------------------------------------------------------

TP = Affine(0.2, 0, 407473.0, 0, -0.2, 6260587.6)  # conftest.L93_GRID
CRS_L93 = CRS.from_epsg(2154)


def _pair(img, msk):
    return Flair1.read_pair(FlairTile(id="1", img=img, msk=msk))


def test_read_pair_keeps_georeferencing(img_msk):
    img, codes, valid = _pair(*img_msk)
    assert img.array.shape == (5, 32, 48) and img.array.dtype == np.uint8
    assert codes.shape == (32, 48) and valid is None
    assert img.crs == CRS_L93 and img.transform == TP
    assert img.rgb().shape == (32, 48, 3)
    assert img.bounds == pytest.approx((407473.0, 6260587.6 - 6.4, 407473.0 + 9.6, 6260587.6))


def test_wrong_band_count(tmp_path, geotiff):
    p = geotiff(tmp_path / "IMG_1.tif", np.zeros((3, 8, 8), np.uint8))
    with pytest.raises(RasterError, match=r"IMG_1.tif: expected 5 bands .*found 3"):
        _pair(p, geotiff(tmp_path / "MSK_ok.tif", np.ones((1, 8, 8), np.uint8)))
    p = geotiff(tmp_path / "MSK_1.tif", np.ones((2, 8, 8), np.uint8))
    with pytest.raises(RasterError, match=r"MSK_1.tif: expected 1 band of class codes, found 2"):
        _pair(geotiff(tmp_path / "IMG_ok.tif", np.zeros((5, 8, 8), np.uint8)), p)


def test_wrong_dtype(tmp_path, geotiff):
    p = geotiff(tmp_path / "IMG_1.tif", np.zeros((5, 8, 8), np.uint16))
    with pytest.raises(RasterError, match=r"IMG_1.tif: expected uint8 bands, found uint16"):
        _pair(p, geotiff(tmp_path / "MSK_ok.tif", np.ones((1, 8, 8), np.uint8)))
    p = geotiff(tmp_path / "MSK_1.tif", np.ones((1, 8, 8), np.float32))
    with pytest.raises(RasterError, match=r"MSK_1.tif: expected uint8 class codes, found float32"):
        _pair(geotiff(tmp_path / "IMG_ok.tif", np.zeros((5, 8, 8), np.uint8)), p)


def test_codes_outside_legend(tmp_path, geotiff):
    a = np.ones((1, 8, 8), np.uint8)
    a[0, 0, :3] = 0
    a[0, 1, 0] = 42
    p = geotiff(tmp_path / "MSK_1.tif", a)
    with pytest.raises(LegendError, match=r"MSK_1.tif: codes outside the FLAIR legend 1..19 \(0: 3 px, 42: 1 px\)"):
        _pair(geotiff(tmp_path / "IMG_ok.tif", np.zeros((5, 8, 8), np.uint8)), p)


def test_size_and_georef_mismatch(tmp_path, geotiff):
    img = geotiff(tmp_path / "IMG_1.tif", np.zeros((5, 8, 8), np.uint8))
    small = geotiff(tmp_path / "MSK_1.tif", np.ones((1, 8, 4), np.uint8))
    with pytest.raises(GeoreferenceError, match=r"IMG_1.tif and .*MSK_1.tif: size mismatch, 8x8 vs 4x8$"):
        _pair(img, small)
    moved = geotiff(tmp_path / "MSK_2.tif", np.ones((1, 8, 8), np.uint8), transform=TP @ Affine.translation(1, 0))
    with pytest.raises(GeoreferenceError, match=r"MSK_2.tif: georeferencing mismatch"):
        _pair(img, moved)
