"""Styles for every legend: QGIS QML and OGC SLD, GeoTIFF colour tables, a styled drawing layer.

A land-cover raster or polygon layer opened in QGIS shows numbers in grey until it is styled.
Each legend (FLAIR's, and every product of `conf/legend/`) gets here:
- a raster style (`<legend>.qml`, `<legend>.sld`): a paletted renderer, one entry per value;
- a polygon style (`<legend>_polygons.qml`, `..._polygons.sld`): categories on the `class` column,
  and (QML) a value-map editor on that column, so drawing a polygon offers the class names;
- for FLAIR, a GeoTIFF colour table (`colormap`), so generated masks show their classes anywhere.

Labels say the source class and the FLAIR class it becomes ("41 deciduous forest -> deciduous");
colours are the product's own where its legend lists them (`colors:`), else the FLAIR colour of
the class it maps to. Everything is derived from `labels.py` and `conf/legend/`: nothing is
written twice.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import quoteattr

from seg2sat.atomic import atomic_path, write_text
from seg2sat.errors import LegendError, VectorError
from seg2sat.geo.legends import KNOWN_LEGENDS, load_named_legend
from seg2sat.geo.raster import FLAIR_CRS
from seg2sat.labels import BY_CODE, CLASSES

FLAIR = "flair"  # the FLAIR legend itself (labels.py), beside the products of conf/legend/
STYLE_LEGENDS: tuple[str, ...] = (FLAIR, *KNOWN_LEGENDS)
CLASS_FIELD = "class"  # the column our polygon styles and drawing layers use (infer's class_column default)
QGIS_VERSION = "3.22.16"  # the version the QML was checked with (headless test); later versions read it
OUTLINE = "35,35,35,255"


@dataclass(frozen=True)
class StyleClass:
    """One entry of a style: the value in the data, its label, its colour."""

    value: float
    label: str
    hex: str

    @property
    def text(self) -> str:
        """The value as written in a style (11, not 11.0)."""
        return f"{self.value:g}"

    @property
    def rgba(self) -> tuple[int, int, int, int]:
        """(R, G, B, 255)."""
        h = self.hex.lstrip("#")
        return int(h[0:2], 16), int(h[2:4], 16), int(h[4:6], 16), 255


def legend_classes(name: str) -> list[StyleClass]:
    """The entries of legend `name` (`flair` or a name in `conf/legend/`), by value.

    Raises:
        LegendError: unknown legend (the message lists the known ones).
    """
    if name == FLAIR:
        return [StyleClass(c.code, f"{c.code} {c.name}", c.hex) for c in CLASSES]
    legend = load_named_legend(name)
    names: dict[float, str] = {}
    for label, value in legend.labels.items():
        names.setdefault(value, label)
    out = []
    for value in sorted(legend.mapping):
        flair = BY_CODE[legend.mapping[value]]
        label = f"{value:g} {names[value]} -> {flair.name}" if value in names else f"{value:g} -> {flair.name}"
        out.append(StyleClass(value, label, legend.colors.get(value, flair.hex)))
    return out


def colormap(name: str = FLAIR) -> dict[int, tuple[int, int, int, int]]:
    """A GeoTIFF colour table (value -> RGBA) for a uint8/uint16 raster of legend `name`.

    Value 0 (never a class) gets black; a TIFF palette has no alpha, so nodata shows as nodata
    only through the file's nodata value.

    Raises:
        LegendError: a legend whose values are not whole numbers in 0..65535.
    """
    table = {0: (0, 0, 0, 0)}
    for c in legend_classes(name):
        if c.value != int(c.value) or not 0 <= c.value <= 65535:
            raise LegendError(f"legend {name}: value {c.text} cannot go in a colour table (0..65535)")
        table[int(c.value)] = c.rgba
    return table


# ---------------------------------------------------------------------------------------------
# QGIS QML
# ---------------------------------------------------------------------------------------------


def _qml(body: str, categories: str) -> str:
    return (f"<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>\n"
            f'<qgis version="{QGIS_VERSION}" styleCategories="{categories}">\n{body}</qgis>\n')


def raster_qml(classes: Sequence[StyleClass]) -> str:
    """A paletted (unique values) renderer on band 1."""
    entries = "\n".join(f'        <paletteEntry value="{c.text}" color="{c.hex}" alpha="255" label={quoteattr(c.label)}/>'
                        for c in classes)
    body = ("  <pipe>\n"
            '    <rasterrenderer type="paletted" band="1" opacity="1" alphaBand="-1" nodataColor="">\n'
            "      <rasterTransparency/>\n"
            f"      <colorPalette>\n{entries}\n      </colorPalette>\n"
            "    </rasterrenderer>\n"
            '    <brightnesscontrast brightness="0" contrast="0" gamma="1"/>\n'
            '    <rasterresampler maxOversampling="2"/>\n'
            "  </pipe>\n  <blendMode>0</blendMode>\n")
    return _qml(body, "Symbology")


def _fill_symbol(index: int, c: StyleClass) -> str:
    r, g, b, a = c.rgba
    options = {"color": f"{r},{g},{b},{a}", "outline_color": OUTLINE, "outline_style": "solid",
               "outline_width": "0.26", "outline_width_unit": "MM", "style": "solid", "joinstyle": "bevel"}
    opts = "\n".join(f'            <Option type="QString" name="{k}" value="{v}"/>' for k, v in options.items())
    return (f'      <symbol type="fill" name="{index}" alpha="1" clip_to_extent="1" force_rhr="0">\n'
            '        <layer class="SimpleFill" enabled="1" locked="0" pass="0">\n'
            f'          <Option type="Map">\n{opts}\n          </Option>\n'
            "        </layer>\n      </symbol>")


def vector_qml(classes: Sequence[StyleClass], field: str = CLASS_FIELD) -> str:
    """Categories on `field` (one fill per class) and a value-map editor offering the labels."""
    cats = "\n".join(f'      <category value="{c.text}" label={quoteattr(c.label)} symbol="{i}" render="true"/>'
                     for i, c in enumerate(classes))
    symbols = "\n".join(_fill_symbol(i, c) for i, c in enumerate(classes))
    value_map = "\n".join(f'              <Option type="Map"><Option type="QString" name={quoteattr(c.label)} '
                          f'value="{c.text}"/></Option>' for c in classes)
    body = (f'  <renderer-v2 type="categorizedSymbol" attr={quoteattr(field)} symbollevels="0" enableorderby="0" '
            'forceraster="0">\n'
            f"    <categories>\n{cats}\n    </categories>\n"
            f"    <symbols>\n{symbols}\n    </symbols>\n"
            "  </renderer-v2>\n"
            "  <fieldConfiguration>\n"
            f'    <field name={quoteattr(field)} configurationFlags="None">\n'
            '      <editWidget type="ValueMap">\n        <config>\n          <Option type="Map">\n'
            f'            <Option type="List" name="map">\n{value_map}\n            </Option>\n'
            "          </Option>\n        </config>\n      </editWidget>\n    </field>\n"
            "  </fieldConfiguration>\n")
    return _qml(body, "Symbology|Fields|Forms")


# ---------------------------------------------------------------------------------------------
# OGC SLD 1.0 (GeoServer, MapServer, and QGIS's "Load SLD")
# ---------------------------------------------------------------------------------------------

_SLD_HEAD = ('<?xml version="1.0" encoding="UTF-8"?>\n'
             '<StyledLayerDescriptor version="1.0.0" xmlns="http://www.opengis.net/sld" '
             'xmlns:ogc="http://www.opengis.net/ogc" xmlns:xlink="http://www.w3.org/1999/xlink" '
             'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" '
             'xsi:schemaLocation="http://www.opengis.net/sld http://schemas.opengis.net/sld/1.0.0/StyledLayerDescriptor.xsd">\n')


def _sld(name: str, rules: str) -> str:
    return (f"{_SLD_HEAD}  <NamedLayer>\n    <Name>{name}</Name>\n    <UserStyle>\n      <Title>{name}</Title>\n"
            f"      <FeatureTypeStyle>\n{rules}\n      </FeatureTypeStyle>\n    </UserStyle>\n  </NamedLayer>\n"
            "</StyledLayerDescriptor>\n")


def raster_sld(name: str, classes: Sequence[StyleClass]) -> str:
    """A RasterSymbolizer with a `values` ColorMap."""
    entries = "\n".join(f'              <ColorMapEntry color="{c.hex}" quantity="{c.text}" label={quoteattr(c.label)} '
                        'opacity="1"/>' for c in classes)
    rules = ("        <Rule>\n          <RasterSymbolizer>\n            <Opacity>1.0</Opacity>\n"
             f'            <ColorMap type="values">\n{entries}\n            </ColorMap>\n'
             "          </RasterSymbolizer>\n        </Rule>")
    return _sld(name, rules)


def vector_sld(name: str, classes: Sequence[StyleClass], field: str = CLASS_FIELD) -> str:
    """One rule per class: `field` = value -> a fill of the class colour."""
    rules = "\n".join(
        f"        <Rule>\n          <Name>{c.text}</Name>\n          <Title>{_escape(c.label)}</Title>\n"
        f"          <ogc:Filter><ogc:PropertyIsEqualTo><ogc:PropertyName>{field}</ogc:PropertyName>"
        f"<ogc:Literal>{c.text}</ogc:Literal></ogc:PropertyIsEqualTo></ogc:Filter>\n"
        f'          <PolygonSymbolizer><Fill><CssParameter name="fill">{c.hex}</CssParameter></Fill>'
        '<Stroke><CssParameter name="stroke">#232323</CssParameter>'
        '<CssParameter name="stroke-width">0.5</CssParameter></Stroke></PolygonSymbolizer>\n'
        "        </Rule>" for c in classes)
    return _sld(name, rules)


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def style_files(name: str) -> dict[str, str]:
    """The four style files of legend `name`: file name -> text."""
    classes = legend_classes(name)
    return {f"{name}.qml": raster_qml(classes), f"{name}_polygons.qml": vector_qml(classes),
            f"{name}.sld": raster_sld(name, classes), f"{name}_polygons.sld": vector_sld(name, classes)}


def write_styles(folder: str | Path, names: Sequence[str] = STYLE_LEGENDS) -> list[Path]:
    """Write the style files of every legend in `names` into `folder` (atomically); returns them."""
    folder = Path(folder)
    return [write_text(folder / file, text) for name in names for file, text in style_files(name).items()]


def write_drawing_layer(path: str | Path, legend: str = FLAIR, crs: str = FLAIR_CRS.to_string(),
                        field: str = CLASS_FIELD, overwrite: bool = False) -> Path:
    """An empty polygon GeoPackage to draw land cover in, styled for `legend`.

    QGIS opens `<name>.gpkg` with `<name>.qml` beside it as its default style: the polygons show
    their classes' colours and the attribute form offers the class names (a value map that
    stores the value `infer` reads with `class_column=class legend=<legend>`).

    Raises:
        LegendError: unknown legend.
        VectorError: not a .gpkg path, or the file exists and `overwrite` is false.
    """
    import geopandas as gpd
    import pandas as pd

    path = Path(path)
    if path.suffix.lower() != ".gpkg":
        raise VectorError(f"{path}: a drawing layer is a GeoPackage (.gpkg)")
    if path.exists() and not overwrite:
        raise VectorError(f"{path}: already exists (pass overwrite=true to replace it)")
    classes = legend_classes(legend)
    integer = all(c.value == int(c.value) for c in classes)
    empty = gpd.GeoDataFrame({field: pd.Series([], dtype="int32" if integer else "float64")},
                             geometry=gpd.GeoSeries([], crs=crs), crs=crs)
    with atomic_path(path) as tmp:
        empty.to_file(tmp, layer=path.stem, driver="GPKG", geometry_type="MultiPolygon")
    write_text(path.with_suffix(".qml"), vector_qml(classes, field))
    return path

