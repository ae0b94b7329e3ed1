"""Land-cover inputs -> FLAIR codes: rasters, colour hints, foreign legends, vector layers, bad inputs."""

from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from affine import Affine
from omegaconf import OmegaConf
from PIL import Image
from shapely.geometry import Polygon, box

from seg2sat.config import CONF_DIR
from seg2sat.errors import GeoreferenceError, LegendError, RasterError, VectorError
from seg2sat.geo.landcover import read_landcover
from seg2sat.geo.legends import Legend, map_values
from seg2sat.geo.raster import FLAIR_CRS
from seg2sat.labels import OTHER_CODE, code_of

GRID = Affine(0.2, 0, 0, 0, -0.2, 100)


@pytest.fixture(scope="module")
def landsat96():
    """The `conf/legend/nc_landsat96.yaml` legend (7 source classes)."""
    return Legend.from_config(OmegaConf.to_container(OmegaConf.load(CONF_DIR / "legend" / "nc_landsat96.yaml")))


def _tif(path, array, crs=FLAIR_CRS, transform=GRID, nodata=None):
    profile = {"driver": "GTiff", "width": array.shape[2], "height": array.shape[1], "count": array.shape[0],
               "dtype": array.dtype.name, "transform": transform, "nodata": nodata}
    if crs is not None:
        profile["crs"] = crs
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(array)
    return path


def _layer(path, geoms, column="class", values=None, crs="EPSG:2154"):
    data = {column: values or [1] * len(geoms)}
    gpd.GeoDataFrame(data, geometry=geoms, crs=crs).to_file(path)
    return path


# ---------------------------------------------------------------------------------------------
# Values -> codes
# ---------------------------------------------------------------------------------------------


def test_map_values_without_legend_keeps_whole_legend_codes():
    values = np.array([[1.0, 19.0, 0.0, 20.0]])
    valid = np.array([[True, True, True, False]])  # the 20 is nodata: never checked
    with pytest.raises(LegendError, match=r"^x.tif: 1 pixels hold class values outside the FLAIR legend 1..19 "
                                          r"\(0: 1 px\); pass legend=<name> \(or legend=auto\)"):
        map_values(values, valid, None, Path("x.tif"))
    out = map_values(values, valid, None, Path("x.tif"), unknown_to_other=True)
    assert out.dtype == np.uint8 and out.tolist() == [[1, 19, OTHER_CODE, OTHER_CODE]]


def test_unknown_legend_values_can_map_to_other(landsat96, tmp_path):
    values = np.ones((1, 64, 64), np.float32)
    values[0, :8] = 9  # not in the 7-class legend
    src = _tif(tmp_path / "nine.tif", values, nodata=-99999.0)
    with pytest.raises(LegendError, match=r"nine.tif: 512 pixels hold class values not in legend nc_landsat96 \(9: 512 px\)"):
        read_landcover(src, legend=landsat96)
    lc = read_landcover(src, legend=landsat96, unknown_to_other=True)
    assert (lc.codes[:8] == OTHER_CODE).all() and (lc.codes[8:] == code_of("impervious surface")).all()
    assert lc.valid.all() and lc.crs == FLAIR_CRS and lc.transform == GRID


# ---------------------------------------------------------------------------------------------
# Bad inputs: each names the file and the problem
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "array", "kwargs", "error", "match"),
    [
        ("nocrs.tif", np.ones((1, 64, 64), np.uint8), {"crs": None}, GeoreferenceError, r"nocrs.tif: no CRS"),
        ("rotated.tif", np.ones((1, 64, 64), np.uint8), {"transform": Affine(0.2, 0.05, 0, 0.05, -0.2, 100)},
         GeoreferenceError, r"rotated.tif: rotated or sheared"),
        ("float.tif", np.full((1, 64, 64), 2.5, np.float32), {"nodata": -1.0}, LegendError,
         r"float.tif: 4096 class values are not whole numbers"),
        ("allnodata.tif", np.full((1, 64, 64), -1.0, np.float32), {"nodata": -1.0}, RasterError,
         r"allnodata.tif: every pixel is nodata"),
        ("twoband.tif", np.ones((2, 64, 64), np.uint8), {}, RasterError, r"twoband.tif: 2 bands of uint8"),
        ("codes.tif", np.full((1, 64, 64), 42, np.uint8), {}, LegendError,
         r"codes.tif: 4096 pixels hold class values outside the FLAIR legend 1..19 \(42: 4096 px\)"),
        ("offlegend.tif", np.full((3, 64, 64), 77, np.uint8), {}, LegendError,
         r"offlegend.tif: 4096 pixels in 1 colours are not legend colours"),
    ],
)
def test_bad_rasters(tmp_path, name, array, kwargs, error, match):
    src = _tif(tmp_path / name, array, **kwargs)
    with pytest.raises(error, match=match):
        read_landcover(src)


def test_hand_drawn_png_needs_a_crs_or_snap(flair_samples):
    drawn = flair_samples / "drawn" / "handdrawn_01.png"
    with pytest.raises(GeoreferenceError, match="handdrawn_01.png: a plain image has no georeferencing"):
        read_landcover(drawn)
    with pytest.raises(LegendError, match="handdrawn_01.png: .* not legend colours"):
        read_landcover(drawn, crs="EPSG:2154")
    lc = read_landcover(drawn, crs="EPSG:2154", snap=True)
    assert lc.crs == FLAIR_CRS and lc.resolution == pytest.approx(0.2)
    assert lc.codes.shape == Image.open(drawn).size[::-1] and lc.valid.all()


def test_bad_vectors(tmp_path):
    square = box(0, 0, 20, 20)
    bowtie = Polygon([(0, 0), (10, 10), (10, 0), (0, 10)])
    with pytest.raises(VectorError, match=r"bow.gpkg: 1 invalid geometries"):
        read_landcover(_layer(tmp_path / "bow.gpkg", [square, bowtie]))
    with pytest.raises(VectorError, match=r"nocol.gpkg: no class column 'class'; columns: kind"):
        read_landcover(_layer(tmp_path / "nocol.gpkg", [square], column="kind"))
    with pytest.raises(LegendError, match=r"names.gpkg: class='castle' is not in the FLAIR legend"):
        read_landcover(_layer(tmp_path / "names.gpkg", [square], values=["castle"]))
    with pytest.raises(LegendError, match=r"half.gpkg: class=5.5 is not in the FLAIR legend"):
        read_landcover(_layer(tmp_path / "half.gpkg", [square], values=[5.5]))
    with pytest.raises(GeoreferenceError, match=r"deg.gpkg: CRS EPSG:4326 is in degrees"):
        read_landcover(_layer(tmp_path / "deg.gpkg", [box(2, 45, 2.001, 45.001)], crs="EPSG:4326"))
    # FLAIR class names work, and a degree layer works once reprojected
    ok = read_landcover(_layer(tmp_path / "ok.gpkg", [box(2, 45, 2.0001, 45.0001)], values=["water"],
                               crs="EPSG:4326"), crs="EPSG:2154", vector_resolution=0.5)
    assert ok.crs == FLAIR_CRS and ok.resolution == 0.5
    assert set(np.unique(ok.codes[ok.valid]).tolist()) == {code_of("water")}


def test_vector_codes_by_number(tmp_path):
    lc = read_landcover(_layer(tmp_path / "n.gpkg", [box(0, 0, 2, 2), box(2, 0, 4, 2)], values=[5, 19]),
                        vector_resolution=1.0)
    assert lc.codes.tolist() == [[5, 5, 19, 19], [5, 5, 19, 19]] and lc.valid.all()
