"""The legends of the land-cover products geographers hold, and recognising them in a file.

Each product's raster is built here with all of its codes: read with its legend name, with
legend="auto" (from the colour table and from the values alone), and without a legend, where a
raster that clearly is not FLAIR must be refused rather than read as FLAIR codes.
"""

import logging
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from affine import Affine
from omegaconf import OmegaConf
from rasterio.crs import CRS
from shapely.geometry import box

from seg2sat.config import compose
from seg2sat.errors import LegendError
from seg2sat.geo.geotiff import geotiff_profile, write_geotiff
from seg2sat.geo.landcover import read_landcover
from seg2sat.geo.legends import AUTO, KNOWN_LEGENDS, LEGEND_DIR, Legend, load_named_legend
from seg2sat.geo.recognise import detect_legend, resolve_legend
from seg2sat.labels import CODES, OTHER_CODE, check_codes, code_of

# Short names for the FLAIR classes, so each product's expected mapping fits on a few lines.
F = {"bldg": "building", "perv": "pervious surface", "imp": "impervious surface", "bare": "bare soil",
     "water": "water", "conif": "coniferous", "decid": "deciduous", "brush": "brushwood", "vine": "vineyard",
     "herb": "herbaceous vegetation", "agri": "agricultural land", "snow": "snow", "mixed": "mixed",
     "lign": "ligneous"}

# product -> {its code: the FLAIR class it must become}. Every code of the product's official
# nomenclature, and nothing else; the judgement calls are pinned here and explained in the YAML.
EXPECTED: dict[str, dict[int, str]] = {
    "nlcd": dict(zip(
        [11, 12, 21, 22, 23, 24, 31, 41, 42, 43, 51, 52, 71, 72, 73, 74, 81, 82, 90, 95],
        "water snow herb herb imp bldg bare decid conif mixed brush brush herb herb herb herb herb agri decid "
        "herb".split(), strict=True)),
    "corine": dict(zip(
        [111, 112, 121, 122, 123, 124, 131, 132, 133, 141, 142,
         211, 212, 213, 221, 222, 223, 231, 241, 242, 243, 244,
         311, 312, 313, 321, 322, 323, 324, 331, 332, 333, 334, 335,
         411, 412, 421, 422, 423, 511, 512, 521, 522, 523],
        "bldg bldg bldg imp imp imp bare bare bare herb herb "
        "agri agri agri vine lign lign herb agri agri agri lign "
        "decid conif mixed herb brush brush brush bare bare bare bare snow "
        "herb herb herb bare bare water water water water water".split(), strict=True)),
    "worldcover": dict(zip(
        [10, 20, 30, 40, 50, 60, 70, 80, 90, 95, 100],
        "mixed brush herb agri bldg bare snow water herb decid herb".split(), strict=True)),
    "dynamic_world": dict(zip(
        range(9), "water mixed herb herb agri brush bldg bare snow".split(), strict=True)),
    "oso": dict(zip(
        range(1, 24),
        "bldg bldg bldg imp agri agri agri agri agri agri agri agri herb lign vine decid conif herb brush bare bare "
        "snow water".split(), strict=True)),
    "ocsge": dict(zip(
        [1111, 1112, 1121, 1122, 121, 122, 123, 2111, 2112, 2113, 212, 213, 221, 222],
        "bldg imp perv perv bare water snow decid conif mixed brush lign herb herb".split(), strict=True)),
    "nc_landsat96": dict(zip(range(1, 8), "imp agri herb brush decid water bare".split(), strict=True)),
}
# The CORINE raster's grid codes 1..44 are the CLC codes in order.
EXPECTED["corine_grid"] = dict(zip(range(1, 45), EXPECTED["corine"].values(), strict=True))

# product -> how its raster is written here: CRS, pixel size, a top-left corner inside the product's
# coverage, dtype, the nodata value placed in one pixel (None: the product has none), whether the
# file declares it, and a few official colours typed from the product's documentation (the YAML's
# full table must agree with them).
DENVER = ("EPSG:5070", 30.0, (-770_000.0, 1_870_000.0))
PARIS_LAEA = ("EPSG:3035", 100.0, (3_760_000.0, 2_890_000.0))
TOULOUSE = ("EPSG:2154", 10.0, (574_000.0, 6_280_000.0))
LYON_DEG = ("EPSG:4326", 1 / 12000, (4.8, 45.75))
RASTERS = {
    "nlcd": (*DENVER, "uint8", 0, False, {11: "#466b9f", 42: "#1c5f2c", 82: "#ab6c28"}),
    "corine": (*PARIS_LAEA, "uint16", 999, False, {111: "#e6004d", 312: "#00a600", 523: "#e6f2ff"}),
    "corine_grid": (*PARIS_LAEA, "uint8", 48, False, {1: "#e6004d", 24: "#00a600", 44: "#e6f2ff"}),
    "worldcover": (*LYON_DEG, "uint8", 0, True, {10: "#006400", 50: "#fa0000", 100: "#fae6a0"}),
    "dynamic_world": (*LYON_DEG, "uint8", None, False, {0: "#419bdf", 6: "#c4281b", 8: "#b39fe1"}),
    "oso": (*TOULOUSE, "uint8", 0, False, {1: "#ff00ff", 17: "#003200", 23: "#0000ff"}),
}
PRODUCTS = sorted(RASTERS)


def _codes(names: list[str]) -> list[int]:
    return [code_of(F[n]) for n in names]


def _rgba(hex_: str) -> tuple[int, int, int, int]:
    return int(hex_[1:3], 16), int(hex_[3:5], 16), int(hex_[5:7], 16), 255


def _write(path: Path, values: np.ndarray, crs: str, res: float, corner: tuple[float, float],
           nodata: float | None = None, colours: dict[float, str] | None = None) -> Path:
    """A one-band GeoTIFF; with `colours`, a colour table (write_geotiff writes none)."""
    array = values[None]
    transform = Affine(res, 0, corner[0], 0, -res, corner[1])
    if colours is None:
        return write_geotiff(path, array, crs, transform, nodata)
    profile = geotiff_profile(array.shape[2], array.shape[1], 1, array.dtype, crs, transform, nodata)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(array)
        dst.write_colormap(1, {int(v): _rgba(h) for v, h in colours.items()})
    return path


def _product_raster(tmp_path: Path, name: str, with_colours: bool) -> tuple[Path, np.ndarray, np.ndarray]:
    """Every code of the product in one row (plus its nodata pixel), and the expected codes and mask."""
    crs, res, corner, dtype, nodata, declared, _ = RASTERS[name]
    src = list(EXPECTED[name])
    expected = _codes(list(EXPECTED[name].values()))
    valid = [True] * len(src)
    if nodata is not None:
        src, expected, valid = [*src, nodata], [*expected, OTHER_CODE], [*valid, False]
    colours = load_named_legend(name).colors if with_colours else None
    path = _write(tmp_path / f"{name}.tif", np.array([src], dtype), crs, res, corner,
                  nodata if declared else None, colours)
    return path, np.array([expected], np.uint8), np.array([valid])


# ---------------------------------------------------------------------------------------------
# The legend files
# ---------------------------------------------------------------------------------------------


def test_known_legends_are_the_legend_files():
    # auto.yaml is the `legend=auto` switch of the Hydra group, not a legend
    assert sorted(KNOWN_LEGENDS) == sorted(p.stem for p in LEGEND_DIR.glob("*.yaml") if p.stem != AUTO)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_legend_maps_every_class_of_its_product(name):
    legend = load_named_legend(name)
    assert legend.name == name
    # the exact class list of the product: none missing, none invented
    assert sorted(legend.mapping) == sorted(EXPECTED[name])
    assert {int(k): v for k, v in legend.mapping.items()} == {k: code_of(F[v]) for k, v in EXPECTED[name].items()}
    check_codes(np.array(list(legend.mapping.values()), np.uint8), name)
    assert set(legend.labels.values()) == set(legend.mapping)  # every class has a label, every label a class


def test_product_class_counts():
    counts = {name: len(load_named_legend(name).mapping) for name in EXPECTED}
    assert counts == {"nlcd": 20, "corine": 44, "corine_grid": 44, "worldcover": 11, "dynamic_world": 9,
                      "oso": 23, "ocsge": 14, "nc_landsat96": 7}


@pytest.mark.parametrize("name", PRODUCTS)
def test_product_colours_are_official(name):
    legend = load_named_legend(name)
    assert set(legend.colors) == set(legend.mapping)  # a full table: every class has its colour
    for value, hex_ in RASTERS[name][-1].items():
        assert legend.colors[float(value)] == hex_


@pytest.mark.parametrize(("name", "nodata"), [("nlcd", 0.0), ("corine", 999.0), ("corine_grid", 48.0),
                                              ("worldcover", 0.0), ("dynamic_world", None), ("oso", 0.0),
                                              ("ocsge", None)])
def test_product_nodata(name, nodata):
    assert load_named_legend(name).nodata == nodata


def test_corine_grid_is_corine_recoded():
    corine, grid = load_named_legend("corine"), load_named_legend("corine_grid")
    assert grid.mapping[1.0] == corine.mapping[111.0] and grid.mapping[44.0] == corine.mapping[523.0]
    assert grid.labels["sea and ocean"] == 44.0 and grid.colors[44.0] == corine.colors[523.0]
    assert not grid.detect_values


@pytest.mark.parametrize("name", KNOWN_LEGENDS)
def test_legend_group_composes_in_infer(name):
    cfg = compose("infer", [f"legend={name}"])
    assert Legend.from_config(OmegaConf.to_container(cfg.legend, resolve=True)) == load_named_legend(name)


@pytest.mark.parametrize(
    ("cfg", "match"),
    [
        ({"name": "x", "map": {1: "castle"}}, r"legend x: target 'castle' of 1: 'castle' is not a FLAIR class name"),
        ({"name": "x", "map": {1: 42}}, r"legend x: target 42 of 1 is not a FLAIR code"),
        ({"name": "x", "map": {1: "water"}, "colors": {1: "blue"}}, r"legend x: colour 'blue' of 1 is not"),
        ({"name": "x", "map": {1: "water"}, "colors": {2: "#0000ff"}}, r"legend x: colour of 2, a value that `map`"),
        ({"name": "x", "map": {1: "water"}, "labels": {"lake": 2}}, r"legend x: label 'lake' points to 2, a value"),
        ({"name": "x", "recode": {"legend": "corine", "values": {1: 110}}},
         r"legend x: recoded values 110 are not in legend corine"),
        ({"name": "x", "map": {1: "water"}, "recode": {"legend": "corine", "values": {1: 111}}},
         r"legend x: give `map` or `recode`, not both"),
        ({"name": "x", "map": {1: "water"}, "extent": [10, 0, 5, 1]},
         r"legend x: extent \[10, 0, 5, 1\] is not \[west, south, east, north\] in degrees"),
    ],
)
def test_bad_legend_configs_name_the_legend_and_entry(cfg, match):
    with pytest.raises(LegendError, match=match):
        Legend.from_config(cfg)


def test_resolve_legend_by_name_and_unknown_names():
    assert resolve_legend("any.tif", "nlcd") is load_named_legend("nlcd")
    assert resolve_legend("any.tif", None) is None
    legend = load_named_legend("oso")
    assert resolve_legend("any.tif", legend) is legend
    with pytest.raises(LegendError, match=r"nlcd2019.yaml: no such legend; known: corine, .*, worldcover, or auto"):
        resolve_legend("any.tif", "nlcd2019")
    with pytest.raises(LegendError, match=r"legend '../x' is not a legend name"):
        load_named_legend("../x")


# ---------------------------------------------------------------------------------------------
# Reading each product's raster
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", PRODUCTS)
@pytest.mark.parametrize("with_colours", [True, False], ids=["colour-table", "values-only"])
def test_product_raster_by_name(tmp_path, name, with_colours):
    path, expected, valid = _product_raster(tmp_path, name, with_colours)
    lc = read_landcover(path, legend=name)
    assert lc.codes.tolist() == expected.tolist() and lc.valid.tolist() == valid.tolist()
    with rasterio.open(path) as src:  # georeferencing is kept
        assert lc.crs == src.crs == CRS.from_user_input(RASTERS[name][0]) and lc.transform == src.transform


@pytest.mark.parametrize(("name", "with_colours"), [*((n, True) for n in PRODUCTS),
                                                    *((n, False) for n in ("nlcd", "corine", "worldcover",
                                                                           "dynamic_world", "oso"))])
def test_product_raster_auto_from_colour_table_or_values(tmp_path, caplog, name, with_colours):
    path, expected, valid = _product_raster(tmp_path, name, with_colours=with_colours)
    caplog.set_level(logging.INFO, logger="seg2sat.geo.recognise")
    lc = read_landcover(path, legend="auto")
    assert lc.codes.tolist() == expected.tolist() and lc.valid.tolist() == valid.tolist()
    evidence = "colour table" if with_colours else "values"
    assert f"{path}: legend auto -> {name} ({evidence})" in caplog.messages
    if with_colours:
        assert detect_legend(path) is load_named_legend(name)


def test_corine_grid_values_alone_are_not_recognised(tmp_path):
    # grid codes 1..44 could be FLAIR, OSO or WorldCover's tens: only the colour table tells
    path, _, _ = _product_raster(tmp_path, "corine_grid", with_colours=False)
    assert detect_legend(path) is None
    with pytest.raises(LegendError, match=r"corine_grid.tif: \d+ pixels hold class values outside the FLAIR legend"):
        read_landcover(path, legend="auto")


def test_colour_table_tolerates_small_differences_and_needs_most_colours(tmp_path):
    nlcd = load_named_legend("nlcd")
    values = np.array([[11, 21, 41, 82]], np.uint8)
    shifted = {v: "#{:02x}{:02x}{:02x}".format(*(min(255, c + 5) for c in _rgba(h)[:3]))
               for v, h in nlcd.colors.items()}
    assert detect_legend(_write(tmp_path / "shifted.tif", values, *DENVER, colours=shifted)) is nlcd
    half = dict(list(nlcd.colors.items())[:10])  # 10 of 20 colours: not "most"
    # the values still say NLCD, so detection falls back to them
    assert detect_legend(_write(tmp_path / "half.tif", values, *DENVER, colours=half)) is nlcd
    with pytest.raises(LegendError, match=r"half.tif: values 11, 21, 41, 82 are not FLAIR codes; they look like nlcd"):
        read_landcover(tmp_path / "half.tif")


# ---------------------------------------------------------------------------------------------
# Without a legend: FLAIR codes stay FLAIR, another product is refused
# ---------------------------------------------------------------------------------------------


def test_nlcd_values_without_legend_are_refused(tmp_path, caplog):
    # 11, 12, 21 are also OSO codes: NLCD because the raster lies in Colorado
    path = _write(tmp_path / "nlcd.tif", np.array([[11, 12, 21, 21]], np.uint8), *DENVER)
    with pytest.raises(LegendError, match=r"^\S*nlcd.tif: values 11, 12, 21 are not FLAIR codes; they look like "
                                          r"nlcd; pass legend=nlcd \(or legend=auto\)$"):
        read_landcover(path)
    caplog.set_level(logging.INFO, logger="seg2sat.geo.recognise")
    assert read_landcover(path, legend=" Auto ").codes.tolist() == [_codes(["water", "snow", "herb", "herb"])]
    assert f"{path}: legend auto -> nlcd (values and location)" in caplog.messages


@pytest.mark.parametrize(
    ("place", "match"),
    [
        (TOULOUSE, r"they look like oso; pass legend=oso \(or legend=auto\)$"),  # rice, tubers, beaches
        (("EPSG:4326", 1 / 12000, (100.0, 15.0)), r"they look like nlcd or oso; pass legend=nlcd or legend=oso$"),
    ],
    ids=["france", "thailand"],
)
def test_location_tells_apart_products_with_the_same_codes(tmp_path, place, match):
    # 11, 12, 21 are NLCD (water, ice, open space) and OSO (rice, tubers, beaches) codes
    path = _write(tmp_path / "x.tif", np.array([[11, 12, 21]], np.uint8), *place)
    with pytest.raises(LegendError, match=r"x.tif: values 11, 12, 21 are not FLAIR codes; " + match):
        read_landcover(path)


def test_nlcd_colour_table_makes_flair_range_values_nlcd(tmp_path):
    # 11 and 12 alone are valid FLAIR codes (cropland, plowed land); the colour table says water and ice
    path = _write(tmp_path / "lake.tif", np.array([[11, 11, 12, 12]], np.uint8), *DENVER,
                  colours=load_named_legend("nlcd").colors)
    with pytest.raises(LegendError, match=r"lake.tif: its colour table is that of nlcd, so its values are not FLAIR "
                                          r"codes; pass legend=nlcd \(or legend=auto\)"):
        read_landcover(path)
    assert read_landcover(path, legend="auto").codes.tolist() == [_codes(["water", "water", "snow", "snow"])]


def test_flair_codes_stay_flair_with_auto(tmp_path, caplog):
    codes = np.array([CODES], np.uint8)  # 1..19, no colour table
    path = write_geotiff(tmp_path / "msk.tif", codes, "EPSG:2154", Affine(0.2, 0, 0, 0, -0.2, 100))
    caplog.set_level(logging.INFO, logger="seg2sat.geo.recognise")
    assert detect_legend(path) is None
    lc = read_landcover(path, legend="auto")
    assert lc.codes.tolist() == codes.tolist() and lc.valid.all()
    assert f"{path}: legend auto -> none (values are FLAIR codes)" in caplog.messages
    assert read_landcover(path).codes.tolist() == codes.tolist()


def test_ambiguous_values_name_every_candidate(tmp_path):
    # 90 and 95: NLCD's two wetlands, or WorldCover's herbaceous wetland and mangroves, and in
    # Louisiana both products exist
    path = _write(tmp_path / "wet.tif", np.array([[90, 95]], np.uint8), "EPSG:4326", 1 / 12000, (-90.0, 30.0))
    with pytest.raises(LegendError, match=r"wet.tif: values 90, 95 are not FLAIR codes; they look like nlcd or "
                                          r"worldcover; pass legend=nlcd or legend=worldcover$"):
        read_landcover(path)
    with pytest.raises(LegendError, match=r"wet.tif: legend auto cannot choose: values 90, 95 could be nlcd or "
                                          r"worldcover"):
        read_landcover(path, legend="auto")
    assert read_landcover(path, legend="worldcover").codes.tolist() == [_codes(["herb", "decid"])]


def test_one_distinct_value_proves_nothing(tmp_path):
    # a uniform 42 is NLCD evergreen forest or a wrong file: read as FLAIR, it fails as out of legend
    path = _write(tmp_path / "uniform.tif", np.full((1, 4), 42, np.uint8), *DENVER)
    assert detect_legend(path) is None
    with pytest.raises(LegendError, match=r"uniform.tif: 4 pixels hold class values outside the FLAIR legend"):
        read_landcover(path)


def test_undeclared_zero_is_a_products_nodata_only_when_no_product_has_code_zero(tmp_path):
    # {0, 1, 4}: Dynamic World water, trees, crops; OSO would need 0 as its nodata: Dynamic World wins
    dw = _write(tmp_path / "dw.tif", np.array([[0, 1, 4]], np.uint8), *TOULOUSE)
    assert detect_legend(dw) is load_named_legend("dynamic_world")
    # {0, 11, 41}: only NLCD explains it, with 0 as its background
    nlcd = _write(tmp_path / "nlcd0.tif", np.array([[0, 11, 41]], np.uint8), *DENVER)
    lc = read_landcover(nlcd, legend="auto")
    assert lc.valid.tolist() == [[False, True, True]]
    assert lc.codes.tolist() == [[OTHER_CODE, *_codes(["water", "decid"])]]


def test_file_nodata_and_legend_nodata_are_both_masked(tmp_path):
    # Annual NLCD declares 250; 0 is the classic background
    path = _write(tmp_path / "annual.tif", np.array([[250, 0, 82]], np.uint8), *DENVER, nodata=250)
    lc = read_landcover(path, legend="nlcd")
    assert lc.valid.tolist() == [[False, False, True]] and lc.codes[0, 2] == code_of("agricultural land")
    assert lc.source_nodata == 250


def test_multiband_and_vector_inputs_are_not_detected(tmp_path):
    hint = write_geotiff(tmp_path / "hint.tif", np.zeros((3, 4, 4), np.uint8), "EPSG:2154",
                         Affine(0.2, 0, 0, 0, -0.2, 100))
    assert detect_legend(hint) is None
    assert detect_legend(tmp_path / "layer.gpkg") is None


# ---------------------------------------------------------------------------------------------
# OCS GE: a vector product with string codes
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".gpkg", ".geojson"])
def test_ocsge_layer_with_string_codes(tmp_path, suffix):
    path = tmp_path / f"ocsge{suffix}"
    squares = [box(0, 0, 2, 2), box(2, 0, 4, 2), box(4, 0, 6, 2)]
    # as in the product, plus the case and spacing of a hand-edited layer
    gpd.GeoDataFrame({"couverture": ["CS1.1.1.1", " cs2.1.1.2 ", "CS2.2.1"]}, geometry=squares,
                     crs="EPSG:2154").to_file(path)
    lc = read_landcover(path, legend="ocsge", column="couverture", vector_resolution=1.0)
    row = _codes(["bldg", "bldg", "conif", "conif", "herb", "herb"])
    assert lc.codes.tolist() == [row, row] and lc.valid.all()
    assert lc.crs == CRS.from_epsg(2154) and lc.transform == Affine(1.0, 0, 0, 0, -1.0, 2.0)


def test_ocsge_unknown_code_names_file_and_value(tmp_path):
    path = tmp_path / "bad.gpkg"
    gpd.GeoDataFrame({"couverture": ["CS1.1.1.1", "CS9.9"]}, geometry=[box(0, 0, 2, 2), box(2, 0, 4, 2)],
                     crs="EPSG:2154").to_file(path)
    with pytest.raises(LegendError, match=r"bad.gpkg: couverture='CS9.9' is not in legend ocsge"):
        read_landcover(path, legend="ocsge", column="couverture", vector_resolution=1.0)
