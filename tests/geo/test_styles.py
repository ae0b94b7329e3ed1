"""Styles for every legend: QML/SLD that parse and say the right colours, colour tables on masks."""

import xml.etree.ElementTree as ET

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from affine import Affine

from seg2sat.errors import LegendError, RasterError, VectorError
from seg2sat.geo import styles
from seg2sat.geo.geotiff import write_geotiff
from seg2sat.geo.legends import KNOWN_LEGENDS, load_named_legend
from seg2sat.geo.raster import FLAIR_CRS
from seg2sat.geo.recognise import detect_legend
from seg2sat.labels import BY_CODE, CLASSES

GRID = Affine(0.2, 0, 1000, 0, -0.2, 2000)


def test_every_known_legend_has_a_style():
    assert set(styles.STYLE_LEGENDS) == {"flair", *KNOWN_LEGENDS}


@pytest.mark.parametrize("name", styles.STYLE_LEGENDS)
def test_styles_parse_and_list_every_value_of_the_legend(name, tmp_path):
    written = styles.write_styles(tmp_path, [name])
    assert sorted(p.name for p in written) == sorted([f"{name}.qml", f"{name}_polygons.qml", f"{name}.sld",
                                                      f"{name}_polygons.sld"])
    values = sorted(c.code for c in CLASSES) if name == "flair" else sorted(load_named_legend(name).mapping)
    raster = ET.parse(tmp_path / f"{name}.qml").getroot()
    entries = raster.findall(".//rasterrenderer[@type='paletted']/colorPalette/paletteEntry")
    assert [float(e.get("value")) for e in entries] == values
    polygons = ET.parse(tmp_path / f"{name}_polygons.qml").getroot()
    cats = polygons.findall(".//renderer-v2[@type='categorizedSymbol']/categories/category")
    assert [float(c.get("value")) for c in cats] == values
    assert len(polygons.findall(".//symbols/symbol")) == len(values)
    assert len(polygons.findall(".//editWidget[@type='ValueMap']//Option[@name='map']/Option")) == len(values)
    ns = {"sld": "http://www.opengis.net/sld"}
    sld = ET.parse(tmp_path / f"{name}.sld").getroot()
    assert [float(e.get("quantity")) for e in sld.findall(".//sld:ColorMapEntry", ns)] == values
    assert len(ET.parse(tmp_path / f"{name}_polygons.sld").getroot().findall(".//sld:Rule", ns)) == len(values)


def test_labels_and_colours_come_from_the_legends():
    flair = styles.legend_classes("flair")
    assert (flair[0].value, flair[0].label, flair[0].hex) == (1, "1 building", "#db0e9a")
    nlcd = {c.value: c for c in styles.legend_classes("nlcd")}
    # the product's own colour where its legend has one, and the FLAIR class it becomes
    assert nlcd[41].hex == load_named_legend("nlcd").colors[41] == "#68ab5f"
    assert nlcd[41].label == "41 deciduous forest -> deciduous"
    nc = {c.value: c for c in styles.legend_classes("nc_landsat96")}  # no colours listed: FLAIR's
    assert nc[6].hex == BY_CODE[5].hex and nc[6].label == "6 water -> water"


def test_unknown_legend_is_refused():
    with pytest.raises(LegendError, match="no such legend"):
        styles.legend_classes("nope")


def test_generated_masks_carry_the_flair_colour_table(tmp_path):
    codes = np.array([[1, 5, 19], [7, 11, 0]], np.uint8)
    path = write_geotiff(tmp_path / "MSK.tif", codes, FLAIR_CRS, GRID, nodata=0, colormap=styles.colormap())
    with rasterio.open(path) as src:
        table = src.colormap(1)
        assert src.read(1).tolist() == codes.tolist()
    for c in CLASSES:
        assert table[c.code] == (*c.rgb, 255)
    assert len(table) == 256 and table[0][:3] == (0, 0, 0)  # the unused values stay black
    assert detect_legend(path) is None  # still read as FLAIR codes, not mistaken for a product


def test_the_sample_data_masks_carry_it(stage_cfg, tmp_path):
    from seg2sat.stages import sample_data

    sample_data.run(stage_cfg("sample_data", "domains=[D064_2021]", "tiles_per_domain=1"))
    msk = next((tmp_path / "data").rglob("MSK_*.tif"))
    with rasterio.open(msk) as src:
        assert src.colormap(1)[5] == (*BY_CODE[5].rgb, 255)


def test_a_colour_table_on_an_rgb_image_is_refused(tmp_path):
    with pytest.raises(RasterError, match="colour table needs one uint8/uint16 band, not 3 of uint8"):
        write_geotiff(tmp_path / "rgb.tif", np.zeros((3, 4, 4), np.uint8), FLAIR_CRS, GRID,
                      colormap=styles.colormap())


def test_drawing_layer_is_an_empty_styled_geopackage(tmp_path):
    path = styles.write_drawing_layer(tmp_path / "draw.gpkg", legend="nlcd", crs="EPSG:5070")
    layer = gpd.read_file(path)
    assert len(layer) == 0 and layer.crs.to_epsg() == 5070 and "class" in layer.columns
    qml = ET.parse(tmp_path / "draw.qml").getroot()
    assert qml.find(".//renderer-v2").get("attr") == "class"
    assert len(qml.findall(".//category")) == len(load_named_legend("nlcd").mapping)
    with pytest.raises(VectorError, match="already exists"):
        styles.write_drawing_layer(path)
    with pytest.raises(VectorError, match="a drawing layer is a GeoPackage"):
        styles.write_drawing_layer(tmp_path / "draw.shp")
