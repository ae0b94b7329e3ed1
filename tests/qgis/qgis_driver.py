"""Runs inside QGIS's Python (`/usr/bin/python3`, headless): the plugin's algorithms through `processing.run`.

    QT_QPA_PLATFORM=offscreen PYTHONPATH=qgis_plugin /usr/bin/python3 tests/qgis/qgis_driver.py spec.json out.json

`spec.json`: {"command": the provider setting, "runs": {name: [algorithm, parameters]},
"styles": {name: [layer path, style path]}}. `out.json`: per run its outputs, seconds, progress
seen, error (a QgsProcessingException's message) and each output raster as QGIS reads it (CRS,
extent, size, pixels); per style what QGIS made of it; per algorithm its parameters' defaults.
Nothing of Seg2Sat is imported here: the plugin runs the CLI of the test's own environment.
"""

import json
import sys
import time

from qgis.core import (
    QgsApplication,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsRasterLayer,
    QgsVectorLayer,
)


class Feedback(QgsProcessingFeedback):
    """Records the progress the algorithm reports (percent)."""

    def __init__(self):
        super().__init__()
        self.seen = []
        self.progressChanged.connect(self.seen.append)


def raster(path):
    """A raster as QGIS opens it: CRS, extent, size, bands and every pixel (small outputs only)."""
    layer = QgsRasterLayer(path, "out")
    if not layer.isValid():
        return {"valid": False}
    provider, ext = layer.dataProvider(), layer.extent()
    w, h = layer.width(), layer.height()
    bands = []
    for b in range(1, layer.bandCount() + 1):
        block = provider.block(b, ext, w, h)
        bands.append([[None if block.isNoData(r, c) else block.value(r, c) for c in range(w)] for r in range(h)])
    return {"valid": True, "crs": layer.crs().authid(), "extent": [ext.xMinimum(), ext.yMinimum(), ext.xMaximum(),
            ext.yMaximum()], "width": w, "height": h, "bands": layer.bandCount(), "pixels": bands}


def styled(layer_path, style_path):
    """What QGIS makes of a style file on a layer: renderer type and its classes."""
    layer = QgsRasterLayer(layer_path, "l") if layer_path.endswith(".tif") else QgsVectorLayer(layer_path, "l", "ogr")
    if style_path.endswith(".sld"):
        message, ok = layer.loadSldStyle(style_path)
    elif style_path:
        message, ok = layer.loadNamedStyle(style_path)
    else:  # the layer's default style (a .qml beside it)
        ok, message = True, "default"
    renderer = layer.renderer() if layer.isValid() else None
    out = {"ok": bool(ok), "message": str(message), "valid": layer.isValid(), "type": renderer.type() if renderer else None}
    if renderer is None:
        return out
    if isinstance(layer, QgsRasterLayer) and renderer.type() == "paletted":
        out["classes"] = [[c.value, c.color.name(), c.label] for c in renderer.classes()]
    elif isinstance(layer, QgsVectorLayer) and renderer.type() == "categorizedSymbol":
        out["field"] = renderer.classAttribute()
        out["classes"] = [[str(c.value()), c.symbol().color().name(), c.label()] for c in renderer.categories()]
        index = layer.fields().indexOf(out["field"])
        out["widget"] = layer.editorWidgetSetup(index).type() if index >= 0 else None
    elif isinstance(layer, QgsVectorLayer) and renderer.type() == "RuleRenderer":
        out["classes"] = [[r.filterExpression(), r.symbol().color().name(), r.label()]
                          for r in renderer.rootRule().children()]
    return out


def defaults(algorithm):
    """{parameter: its default as the dialog shows it} (JSON-safe)."""
    out = {}
    for p in algorithm.parameterDefinitions():
        value = p.defaultValue()
        out[p.name()] = value if value is None or isinstance(value, (bool, int, float, str)) else str(value)
    return out


def main():
    with open(sys.argv[1]) as f:
        spec = json.load(f)
    QgsApplication.setPrefixPath("/usr", True)
    app = QgsApplication([], False)
    app.initQgis()
    sys.path.append("/usr/share/qgis/python/plugins")
    import processing
    from processing.core.Processing import Processing
    from processing.core.ProcessingConfig import ProcessingConfig
    from seg2sat_qgis.provider import Seg2SatProvider
    from seg2sat_qgis.runner import SETTING

    Processing.initialize()
    provider = Seg2SatProvider()
    QgsApplication.processingRegistry().addProvider(provider)
    out = {"algorithms": sorted(a.id() for a in provider.algorithms()), "runs": {}, "styles": {},
           "defaults": {a.name(): defaults(a) for a in provider.algorithms()}}
    for name, (algorithm, params, command) in spec["runs"].items():
        ProcessingConfig.setSettingValue(SETTING, command or spec["command"])
        feedback, t0 = Feedback(), time.time()
        record = {}
        try:
            record["outputs"] = processing.run(f"seg2sat:{algorithm}", params, feedback=feedback)
        except QgsProcessingException as exc:
            record["error"] = str(exc)
        record.update(seconds=round(time.time() - t0, 1), progress=feedback.seen)
        raster_out = (record.get("outputs") or {}).get("OUTPUT")
        if isinstance(raster_out, str) and raster_out.endswith((".tif", ".vrt")):
            record["raster"] = raster(raster_out)
        out["runs"][name] = record
    for name, (layer_path, style_path) in spec.get("styles", {}).items():
        out["styles"][name] = styled(layer_path, style_path)
    with open(sys.argv[2], "w") as f:
        json.dump(out, f)
    app.exitQgis()


if __name__ == "__main__":
    main()
