"""The screenshots of docs/qgis.md, taken from QGIS itself (headless): dialogs and rendered maps.

    seg2sat qgis install plugins_dir=<work dir>/plugins
    QT_QPA_PLATFORM=offscreen PYTHONPATH=<work dir>/plugins /usr/bin/python3 tests/qgis/screenshots.py \\
        "<seg2sat command>" <model> <geo_samples dir> <work dir> docs/screenshots/qgis

Runs the plugin's algorithms on the real sample data (as a geographer would from the toolbox),
then renders each algorithm's dialog and the map canvas (styled land cover beside the generated
image, a repainted orthophoto, a drawing layer) to PNG. Prints each algorithm's wall time.
"""

import sys
import time
from pathlib import Path

from qgis.core import (
    QgsApplication,
    QgsMapRendererParallelJob,
    QgsMapSettings,
    QgsRasterLayer,
    QgsRectangle,
    QgsVectorLayer,
)
from qgis.PyQt.QtCore import QSize
from qgis.PyQt.QtGui import QColor


def render(layers, extent, path, size=(640, 640)):
    """The layers (top first) over `extent`, as the map canvas draws them, to a PNG."""
    settings = QgsMapSettings()
    settings.setLayers(layers)
    settings.setDestinationCrs(layers[-1].crs())
    settings.setExtent(extent)
    settings.setOutputSize(QSize(*size))
    settings.setBackgroundColor(QColor(255, 255, 255))
    job = QgsMapRendererParallelJob(settings)
    job.start()
    job.waitForFinished()
    job.renderedImage().save(str(path))


def dialog(app, algorithm_id, path):
    """The algorithm's Processing dialog, as QGIS shows it."""
    from processing.gui.AlgorithmDialog import AlgorithmDialog

    alg = QgsApplication.processingRegistry().createAlgorithmById(algorithm_id)
    d = AlgorithmDialog(alg)
    d.resize(900, 640)
    d.show()
    app.processEvents()
    d.grab().save(str(path))
    d.close()


def main():
    command, model, samples, work, shots = sys.argv[1:6]
    samples, work, shots = Path(samples), Path(work), Path(shots)
    work.mkdir(parents=True, exist_ok=True)
    shots.mkdir(parents=True, exist_ok=True)
    QgsApplication.setPrefixPath("/usr", True)
    app = QgsApplication([], True)
    app.initQgis()
    sys.path.append("/usr/share/qgis/python/plugins")
    import processing
    from processing.core.Processing import Processing
    from processing.core.ProcessingConfig import ProcessingConfig
    from seg2sat_qgis.provider import Seg2SatProvider
    from seg2sat_qgis.runner import SETTING

    Processing.initialize()
    provider = Seg2SatProvider()  # kept referenced: QGIS does not own a Python provider
    QgsApplication.processingRegistry().addProvider(provider)
    ProcessingConfig.setSettingValue(SETTING, command)
    for alg in ("generate", "repaint", "mosaic", "drawing_layer"):
        dialog(app, f"seg2sat:{alg}", shots / f"dialog_{alg}.png")
    # 1. Generate from the styled land cover on an extent (what the map canvas shows).
    strata = QgsRasterLayer(str(samples / "strata.tif"), "land cover")
    strata.loadNamedStyle(str(work / "styles" / "nc_landsat96.qml"))
    extent = QgsRectangle(633384.0, 222528.0, 636120.0, 225264.0)
    sampling = {"MODEL": model, "SEED": 0}
    t0 = time.time()
    out = processing.run("seg2sat:generate", {"INPUT": strata, "LEGEND": "nc_landsat96", "EXTENT": extent,
                                             "RESOLUTION": 0, **sampling, "OUTPUT": str(work / "aerial.tif")})
    print(f"generate: {time.time() - t0:.1f} s")
    aerial = QgsRasterLayer(out["OUTPUT"], "aerial")
    render([strata], extent, shots / "landcover.png")
    render([aerial], extent, shots / "generated.png")
    # 2. Repaint: the polygons of new land cover over the generated image.
    polygons = QgsVectorLayer(str(samples / "landsat96_polygons.shp"), "polygons", "ogr")
    polygons.setSubsetString("\"label\" IN ('water', 'developed')")  # the new land cover: a lake, a town
    t0 = time.time()
    out = processing.run("seg2sat:repaint", {"IMAGE": aerial, "REGION": polygons, "CLASS_FIELD": "label",
                                            "LEGEND": "nc_landsat96", "MARGIN": 2, **sampling,
                                            "OUTPUT": str(work / "repainted.tif")})
    print(f"repaint: {time.time() - t0:.1f} s")
    polygons.loadNamedStyle(str(work / "styles" / "nc_landsat96_polygons.qml"))
    polygons.renderer().setClassAttribute("label")  # this file's column holds the labels
    render([QgsRasterLayer(out["OUTPUT"], "repainted")], extent, shots / "repainted.png")
    render([polygons, aerial], extent, shots / "repaint_region.png")
    # 3. A drawing layer opens with its legend's classes.
    out = processing.run("seg2sat:drawing_layer", {"LEGEND": "flair", "CRS": "EPSG:3358",
                                                  "OUTPUT": str(work / "draw.gpkg")})
    print("drawing layer:", out["OUTPUT"])
    app.exitQgis()


if __name__ == "__main__":
    main()
