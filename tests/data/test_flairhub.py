"""FLAIR-HUB: the COSIA -> FLAIR-1 remap, a small tree built from the documented patterns, prepare on it."""

import json

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from affine import Affine
from PIL import Image
from shapely.geometry import box

from seg2sat.data.flairhub import parse_date, read_splits
from seg2sat.data.tiles import detect_layout, discover
from seg2sat.errors import DatasetError, LegendError
from seg2sat.hints import hint_to_codes
from seg2sat.labels import BY_CODE, FLAIRHUB_CLASSES, OTHER_CODE, code_of, remap_flairhub
from seg2sat.stages import prepare

# IGNF/FLAIR-HUB configs/train/config_supervision.yaml, AERIAL_LABEL-COSIA value_name, in order.
IGN_COSIA = ["building", "greenhouse", "swimming_pool", "impervious surface", "pervious surface", "bare soil",
             "water", "snow", "herbaceous vegetation", "agricultural land", "plowed land", "vineyard", "deciduous",
             "coniferous", "brushwood", "clear cut", "ligneous", "mixed", "undefined"]
# Our FLAIR-1 code for each COSIA code 0..18, written out by hand from the two legends (None: nodata).
EXPECTED = [1, 18, 13, 3, 2, 4, 5, 14, 10, 11, 12, 9, 7, 6, 8, 15, 17, 16, None]
T0 = (400000.0, 6300000.0)
SIZE = 16


def test_remap_table_value_by_value():
    assert [c.cosia for c in FLAIRHUB_CLASSES] == list(range(19))
    assert [c.name.replace(" ", "_") for c in FLAIRHUB_CLASSES] == [n.replace(" ", "_") for n in IGN_COSIA]
    assert [c.flair for c in FLAIRHUB_CLASSES] == EXPECTED
    for c in FLAIRHUB_CLASSES[:-1]:
        # same class name and the same colour in IGN's README as in our legend
        assert code_of(c.name) == c.flair and BY_CODE[c.flair].hex == c.hex
    codes, valid = remap_flairhub(np.arange(19, dtype=np.uint8))
    assert codes.tolist() == [e or OTHER_CODE for e in EXPECTED]
    assert valid.tolist() == [e is not None for e in EXPECTED]


def test_remap_refuses_codes_outside_cosia():
    with pytest.raises(LegendError, match=r"m.tif: codes outside the FLAIR-HUB legend 0..18 \(19: 3 px, 255: 1 px\)"):
        remap_flairhub(np.array([0, 19, 19, 19, 255], np.uint8), "m.tif")
    with pytest.raises(LegendError, match="must be integers"):
        remap_flairhub(np.zeros(3, np.float32))


def _write(path, array, transform):
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", driver="GTiff", width=array.shape[2], height=array.shape[1], count=array.shape[0],
                       dtype=array.dtype, crs="EPSG:2154", transform=transform) as dst:
        dst.write(array)


def _patch(root, domain_year, roi, rc, label, modalities=("AERIAL_RGBI", "AERIAL_LABEL-COSIA")):
    """Write one patch in every modality folder named; returns its id."""
    r, c = map(int, rc.split("-"))
    transform = Affine(0.2, 0, T0[0] + c * SIZE * 0.2, 0, -0.2, T0[1] - r * SIZE * 0.2)
    for modality in modalities:
        dy = domain_year.split("-")[0] + "-195X" if modality == "AERIAL-RLT_PAN" else domain_year
        path = root / f"{dy}_{modality}" / roi / f"{dy}_{modality}_{roi}_{rc}.tif"
        if modality == "AERIAL_LABEL-COSIA":
            _write(path, label[None].astype(np.uint8), transform)
        elif modality == "AERIAL_RGBI":
            rgbi = np.stack([label * 10 + k for k in range(4)]).astype(np.uint8)
            _write(path, rgbi, transform)
        else:
            _write(path, np.zeros((1, SIZE, SIZE), np.uint8), transform)
    return f"{domain_year}_{roi}_{rc}"


@pytest.fixture
def hub_root(tmp_path):
    """Five FLAIR-HUB patches in two domains, one orphan per side, split and dates GeoPackages."""
    root = tmp_path / "FLAIR-HUB"
    label = np.arange(SIZE * SIZE).reshape(SIZE, SIZE) % 19  # every COSIA code, undefined included
    ids = [
        _patch(root, "D004-2021", "AA-S1-32", "3-7", label, ("AERIAL_RGBI", "AERIAL_LABEL-COSIA", "DEM_ELEV",
                                                              "AERIAL-RLT_PAN")),
        _patch(root, "D004-2021", "AA-S1-32", "3-8", np.full((SIZE, SIZE), 12)),
        _patch(root, "D004-2021", "AB-S2-01", "0-0", np.full((SIZE, SIZE), 6)),
        _patch(root, "D024047-2021", "AC-S1-02", "1-1", np.full((SIZE, SIZE), 0)),
        _patch(root, "D024047-2021", "AC-S1-02", "1-2", np.full((SIZE, SIZE), 13)),
    ]
    _patch(root, "D004-2021", "AA-S1-32", "9-9", label, ("AERIAL_RGBI",))  # image without label
    _patch(root, "D004-2021", "AA-S1-32", "9-8", label, ("AERIAL_LABEL-COSIA",))  # label without image
    mtd = root / "GLOBAL_ALL_MTD"
    mtd.mkdir()
    gpd.GeoDataFrame({"patch_id": ids, "split_1": ["train", "train", "valid", "test", "train"],
                      "split_2": ["valid", "train", "train", "train", "test"]},
                     geometry=[box(0, 0, 1, 1)] * 5, crs="EPSG:2154").to_file(mtd / "GLOBAL_ALL_MTD_SPLIT.gpkg")
    gpd.GeoDataFrame({"patch_id": ids, "acquisition_dates": ['{"0": "20210715"}', '{"0": "20210105"}',
                                                             "2021-04-02", "garbage", '{"0": "20210101", "1": "20210601"}']},
                     geometry=[box(0, 0, 1, 1)] * 5, crs="EPSG:2154").to_file(mtd / "AERIAL_DATES.gpkg")
    return root, ids


def test_discovery_pairs_by_patch_id_with_splits_and_dates(hub_root):
    root, ids = hub_root
    assert detect_layout(root) == "flairhub"
    found = discover(root, dates_file=root / "GLOBAL_ALL_MTD" / "AERIAL_DATES.gpkg")
    assert found.layout == "flairhub" and [t.id for t in found.tiles] == sorted(ids)
    t = next(t for t in found.tiles if t.id == "D004-2021_AA-S1-32_3-7")
    assert (t.domain, t.zone, t.split, t.layout) == ("D004-2021", "AA-S1-32", "train", "flairhub")
    assert t.img.name == "D004-2021_AERIAL_RGBI_AA-S1-32_3-7.tif"
    assert t.msk.name == "D004-2021_AERIAL_LABEL-COSIA_AA-S1-32_3-7.tif"
    assert sorted(t.modalities) == ["AERIAL-RLT_PAN", "DEM_ELEV"]
    assert t.modalities["AERIAL-RLT_PAN"].endswith("D004-195X_AERIAL-RLT_PAN_AA-S1-32_3-7.tif")
    assert {x.id: x.split for x in found.tiles} == dict(zip(ids, ["train", "train", "val", "test", "train"], strict=True))
    assert {x.id: x.meta.get("date") for x in found.tiles} == dict(zip(
        ids, ["2021-07-15", "2021-01-05", "2021-04-02", None, None], strict=True))  # a series has no one season
    assert [p.name for p in found.orphan_images] == ["D004-2021_AERIAL_RGBI_AA-S1-32_9-9.tif"]
    assert [p.name for p in found.orphan_masks] == ["D004-2021_AERIAL_LABEL-COSIA_AA-S1-32_9-8.tif"]
    other = discover(root, split_column="split_2")
    assert [x.split for x in other.tiles if x.id == ids[0]] == ["val"]


def test_split_file_errors(hub_root, tmp_path):
    root, _ = hub_root
    gpkg = root / "GLOBAL_ALL_MTD" / "GLOBAL_ALL_MTD_SPLIT.gpkg"
    with pytest.raises(DatasetError, match=r"GLOBAL_ALL_MTD_SPLIT.gpkg: no column split_9 \(columns: patch_id, split_1"):
        read_splits(gpkg, "split_9")
    with pytest.raises(DatasetError, match="nope.gpkg: split file not found"):
        discover(root, split_file=tmp_path / "nope.gpkg")
    assert parse_date("20210715") == "2021-07-15" and parse_date(None) is None and parse_date("[]") is None


def test_prepare_remaps_codes_pixel_by_pixel(stage_cfg, hub_root):
    root, ids = hub_root
    res = prepare.run(stage_cfg("prepare", f"data_root={root}", "workers=0", "caption.season=true",
                                f"dates.file={root / 'GLOBAL_ALL_MTD' / 'AERIAL_DATES.gpkg'}"))
    assert (res.n_done, res.n_failed) == (5, 0)
    rows = {r["id"]: r for r in map(json.loads, res.manifest_path.read_text().splitlines())}
    r = rows["D004-2021_AA-S1-32_3-7"]
    label = np.arange(SIZE * SIZE).reshape(SIZE, SIZE) % 19
    codes = hint_to_codes(np.asarray(Image.open(res.prepared_dir / r["hint"])))
    expected = np.array([e or OTHER_CODE for e in EXPECTED])[label]
    np.testing.assert_array_equal(codes, expected)  # every pixel, undefined -> nodata (OTHER_CODE)
    valid = np.asarray(Image.open(res.prepared_dir / r["valid"]))
    np.testing.assert_array_equal(valid, np.where(label == 18, 0, 255))
    assert r["nodata_pixels"] == int((label == 18).sum()) and sum(r["pixels"]) == SIZE * SIZE - r["nodata_pixels"]
    assert "other" not in r["shares"] and sum(r["shares"].values()) == pytest.approx(1.0)
    assert r["caption"].startswith("Aerial view of Alpes-de-Haute-Provence. ") and r["caption"].endswith(". In summer.")
    # a domain of two departments; a uniform deciduous (COSIA 12) tile stays deciduous, not plowed land
    assert rows["D024047-2021_AC-S1-02_1-1"]["caption"] == "Aerial view of Dordogne and Lot-et-Garonne. building"
    assert rows["D004-2021_AA-S1-32_3-8"]["caption"] == "Aerial view of Alpes-de-Haute-Provence. deciduous. In winter."
    assert rows["D004-2021_AA-S1-32_3-8"]["valid"] is None
    assert {i: rows[i]["split"] for i in ids} == dict(zip(ids, ["train", "train", "val", "test", "train"], strict=True))
    image = np.asarray(Image.open(res.prepared_dir / r["image"]))
    np.testing.assert_array_equal(image[..., 0], (label * 10).astype(np.uint8))  # RGB of the RGBI patch
    summary = json.loads((res.prepared_dir / "summary.json").read_text())
    assert summary["layout"] == "flairhub" and summary["per_split"] == {"train": 3, "val": 1, "test": 1}
    assert len(summary["orphan_images"]) == 1 and len(summary["orphan_masks"]) == 1
    fp = gpd.read_file(res.prepared_dir / "footprints.gpkg", layer="tiles").set_index("id")
    assert fp.loc[r["id"]].geometry.bounds == pytest.approx((400000.0 + 7 * 3.2, 6300000.0 - 4 * 3.2,
                                                             400000.0 + 8 * 3.2, 6300000.0 - 3 * 3.2))


def test_patches_missing_from_the_split_file_are_reported(stage_cfg, hub_root):
    root, ids = hub_root
    _patch(root, "D004-2021", "AB-S2-01", "0-1", np.full((SIZE, SIZE), 3))
    res = prepare.run(stage_cfg("prepare", f"data_root={root}", "workers=0"))
    assert res.n_tiles == 5
    summary = json.loads((res.prepared_dir / "summary.json").read_text())
    assert summary["not_in_split"] == ["D004-2021_AB-S2-01_0-1"]
    # `split=split_2` is short for `split.column=split_2`
    other = prepare.run(stage_cfg("prepare", f"data_root={root}", "workers=0", "split=split_2"))
    rows = {r["id"]: r["split"] for r in map(json.loads, other.manifest_path.read_text().splitlines())}
    assert rows == dict(zip(ids, ["val", "train", "train", "train", "test"], strict=True))
