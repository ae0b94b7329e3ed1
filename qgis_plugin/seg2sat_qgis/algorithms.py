"""The Seg2Sat algorithms: QGIS layers and parameters in, the Seg2Sat command line run, layers out.

Each algorithm prepares files the command line reads (a layer clipped to an extent or a polygon,
a vector layer saved as a GeoPackage), runs one stage (`infer`, `mosaic`, `synthesize`, `qgis`)
through `runner.run_cli` with progress and cancel wired to QGIS's feedback, and returns the
files it wrote as layers. Outputs keep the input's CRS: the stages never reproject.
Parameter defaults are the CLI's (`runner.load_defaults`: the stages' configs own them), and an
error about a file the plugin made for the CLI names the user's layer instead (`runner.name_layers`).
"""

import re
import shutil
import tempfile
from pathlib import Path

import processing
from processing.core.ProcessingConfig import ProcessingConfig
from qgis.core import (
    QgsCoordinateReferenceSystem,
    QgsMapLayer,
    QgsProcessing,
    QgsProcessingAlgorithm,
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingOutputRasterLayer,
    QgsProcessingOutputString,
    QgsProcessingOutputVectorLayer,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterCrs,
    QgsProcessingParameterExtent,
    QgsProcessingParameterFeatureSource,
    QgsProcessingParameterField,
    QgsProcessingParameterFile,
    QgsProcessingParameterFileDestination,
    QgsProcessingParameterFolderDestination,
    QgsProcessingParameterMapLayer,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterDestination,
    QgsProcessingParameterRasterLayer,
    QgsProcessingParameterString,
    QgsProcessingParameterVectorLayer,
)

from .runner import (
    SETTING,
    CliCanceled,
    CliError,
    default_command,
    load_defaults,
    name_layers,
    run_cli,
)

RASTER_SUFFIXES = (".tif", ".tiff", ".vrt")  # read by the CLI as they are (others are converted)
_LEGEND = re.compile(r"^[A-Za-z0-9_-]+$")
_LOG_LINE = re.compile(r"^\[\d{4}-\d{2}-\d{2} ")  # Hydra's log lines, not a stage's printed output
_DEFAULTS = []  # the CLI's defaults, read once per QGIS session


def cli_default(stage, key):
    """The CLI's default of `key` in `stage`'s config (None when the CLI cannot tell: no default shown)."""
    if not _DEFAULTS:
        plugin_dir = Path(__file__).parent
        _DEFAULTS.append(load_defaults(plugin_dir, ProcessingConfig.getSetting(SETTING) or default_command(plugin_dir)))
    return _DEFAULTS[0].get(stage, {}).get(key)


def layer_label(layer):
    """How errors name a layer: its name and the file it reads."""
    return f"layer '{layer.name()}' ({layer.source().split('|')[0]})"


class Seg2SatAlgorithm(QgsProcessingAlgorithm):
    """What every Seg2Sat algorithm shares: naming, the sampling parameters, running the CLI."""

    NAME = ""
    TITLE = ""
    HELP = ""

    def name(self):  # noqa: D102
        return self.NAME

    def displayName(self):  # noqa: N802, D102
        return self.TITLE

    def shortHelpString(self):  # noqa: N802, D102
        return self.HELP

    def createInstance(self):  # noqa: N802, D102
        return type(self)()

    # -- shared parameters ---------------------------------------------------------------------

    def add_legend(self, default="auto"):
        """LEGEND: how class values read (a name in conf/legend/, auto, or flair for FLAIR codes)."""
        self.addParameter(QgsProcessingParameterString(
            "LEGEND", "Legend of the class values (flair, auto, nlcd, corine, oso, ocsge, nc_landsat96, ...)",
            defaultValue=default))

    def add_sampling(self):
        """MODEL, STEPS, SEED, PROMPT, STYLE."""
        self.addParameter(QgsProcessingParameterString(
            "MODEL", "Model (an exported Seg2Sat folder, a hub id, or tiny-random)", defaultValue=""))
        self.addParameter(QgsProcessingParameterNumber(
            "STEPS", "Denoising steps (0: the model's recommendation)", QgsProcessingParameterNumber.Integer, 0,
            minValue=0, maxValue=1000))
        self.addParameter(QgsProcessingParameterNumber(
            "SEED", "Seed", QgsProcessingParameterNumber.Integer, cli_default("infer", "sampling.seed"), minValue=0))
        self.addParameter(QgsProcessingParameterString(
            "PROMPT", "Prompt (empty: made from the map's place and classes)", defaultValue="", optional=True))
        self.addParameter(QgsProcessingParameterString(
            "STYLE", "Style (photo, winter, watercolor, pencil_sketch, ... or free text)", defaultValue="",
            optional=True))

    def sampling_values(self, parameters, context):
        """The overrides of the sampling parameters."""
        values = {}
        model = self.parameterAsString(parameters, "MODEL", context).strip()
        if model:
            values["model_path"] = str(Path(model).resolve()) if Path(model).exists() else model
        steps = self.parameterAsInt(parameters, "STEPS", context)
        if steps > 0:
            values["sampling.steps"] = steps
        values["sampling.seed"] = self.parameterAsInt(parameters, "SEED", context)
        for key, name in (("prompt.text", "PROMPT"), ("prompt.style", "STYLE")):
            text = self.parameterAsString(parameters, name, context).strip()
            if text:
                values[key] = text
        return values

    def legend_args(self, parameters, context):
        """`legend=<name>` (a config group: given bare, checked here), none for FLAIR codes."""
        legend = self.parameterAsString(parameters, "LEGEND", context).strip()
        if legend in ("", "flair"):
            return []
        if not _LEGEND.match(legend):
            raise QgsProcessingException(f"LEGEND {legend!r} is not a legend name")
        return [f"legend={legend}"]

    def cli(self, stage, values, feedback, cwd, extra=(), names=None):
        """Run one stage of the Seg2Sat CLI; its one-line errors become QGIS errors.

        `names`: {file given to the CLI: the user's layer it stands for}, for the error messages.
        """
        command = ProcessingConfig.getSetting(SETTING)
        feedback.pushInfo(f"Seg2Sat: {command} {stage} ({len(values)} settings)")
        try:
            return run_cli(command, stage, values, extra=extra, cwd=cwd,
                           on_progress=lambda f, m: (feedback.setProgress(100 * f), feedback.setProgressText(m)),
                           on_line=feedback.pushConsoleInfo, is_canceled=feedback.isCanceled)
        except CliCanceled as exc:
            raise QgsProcessingException(str(exc)) from None
        except CliError as exc:
            raise QgsProcessingException(f"seg2sat {stage}: {name_layers(str(exc), names or {})}") from None


# ---------------------------------------------------------------------------------------------
# Files the command line reads
# ---------------------------------------------------------------------------------------------


def _raster_file(layer):
    source = Path(layer.source())
    if layer.providerType() != "gdal" or not source.is_file():
        raise QgsProcessingException(f"{layer.name()}: Seg2Sat reads raster files (GeoTIFF, VRT); "
                                     f"save this layer to a GeoTIFF first")
    return source


def _extent_text(extent, crs):
    return f"{extent.xMinimum()},{extent.xMaximum()},{extent.yMinimum()},{extent.yMaximum()} [{crs.authid()}]"


def _child(alg, params, context, feedback):
    return processing.run(alg, params, context=context, feedback=feedback, is_child_algorithm=True)["OUTPUT"]


def raster_landcover(layer, extent, mask, dest, context, feedback):
    """The raster as a file named `dest.<suffix>`: clipped to `extent`/`mask` if given, else linked."""
    source = _raster_file(layer)
    current = str(source)
    if extent is not None:
        current = _child("gdal:cliprasterbyextent", {"INPUT": current, "PROJWIN": _extent_text(extent, layer.crs()),
                                                     "OUTPUT": str(dest.with_name("extent.tif"))}, context, feedback)
    if mask is not None:
        current = _child("gdal:cliprasterbymasklayer", {"INPUT": current, "MASK": mask, "CROP_TO_CUTLINE": True,
                                                        "KEEP_RESOLUTION": True,
                                                        "OUTPUT": str(dest.with_name("mask.tif"))}, context, feedback)
    if current != str(source):
        return Path(shutil.move(current, dest.with_suffix(".tif")))
    if source.suffix.lower() in RASTER_SUFFIXES:  # the file as it is, under the output's name
        link = dest.with_suffix(source.suffix.lower())
        link.symlink_to(source)
        return link
    return Path(_child("gdal:translate", {"INPUT": current, "OUTPUT": str(dest.with_suffix(".tif"))}, context, feedback))


def vector_landcover(layer, extent, mask, dest, context, feedback, crs=None):
    """The layer's features (inside `extent`/`mask`) as `dest.gpkg`, in `crs` (default: the layer's)."""
    current = layer
    if extent is not None:
        current = _child("native:extractbyextent", {"INPUT": current, "EXTENT": _extent_text(extent, layer.crs()),
                                                    "CLIP": True, "OUTPUT": "TEMPORARY_OUTPUT"}, context, feedback)
    if mask is not None:
        current = _child("native:clip", {"INPUT": current, "OVERLAY": mask, "OUTPUT": "TEMPORARY_OUTPUT"},
                         context, feedback)
    out = dest.with_suffix(".gpkg")
    _child("native:reprojectlayer", {"INPUT": current, "TARGET_CRS": crs or layer.crs(), "OUTPUT": str(out)},
           context, feedback)
    return out


def _tif_output(path):
    path = Path(path)
    return path if path.suffix.lower() in (".tif", ".tiff") else path.with_suffix(".tif")


def _field(algorithm, parameters, name, context):
    fields = algorithm.parameterAsFields(parameters, name, context)
    return fields[0] if fields else None


# ---------------------------------------------------------------------------------------------
# The algorithms
# ---------------------------------------------------------------------------------------------


class GenerateAerialImage(Seg2SatAlgorithm):
    """Land cover (raster or polygons) -> a georeferenced aerial GeoTIFF in the input's CRS."""

    NAME = "generate"
    TITLE = "Generate aerial image from land cover"
    HELP = ("Generates an aerial image from a land-cover raster (class values, read with LEGEND) or a polygon "
            "layer (its CLASS_FIELD holds class values or names). Limit it to an EXTENT (e.g. the map canvas) "
            "and/or inside the polygons of MASK. RESOLUTION is the pixel size generated at, in the layer's CRS "
            "units (0: the raster's own; a polygon layer needs one; FLAIR models were trained at 0.2 m). The output "
            "GeoTIFF has the input's CRS; a STAC item (.stac.json) and a sidecar (.tif.json) are written beside it.")

    def initAlgorithm(self, config=None):  # noqa: N802, D102
        self.addParameter(QgsProcessingParameterMapLayer(
            "INPUT", "Land cover (raster or polygon layer)",
            types=[QgsProcessing.TypeRaster, QgsProcessing.TypeVectorPolygon]))
        self.addParameter(QgsProcessingParameterField(
            "CLASS_FIELD", "Class field (polygon layer)", parentLayerParameterName="INPUT", optional=True))
        self.add_legend()
        self.addParameter(QgsProcessingParameterExtent("EXTENT", "Extent (empty: the whole layer)", optional=True))
        self.addParameter(QgsProcessingParameterFeatureSource(
            "MASK", "Only inside these polygons", [QgsProcessing.TypeVectorPolygon], optional=True))
        self.addParameter(QgsProcessingParameterNumber(
            "RESOLUTION", "Resolution (CRS units per pixel; 0: the raster's own)", QgsProcessingParameterNumber.Double,
            0.0, minValue=0.0))
        self.add_sampling()
        self.addParameter(QgsProcessingParameterRasterDestination("OUTPUT", "Aerial image"))

    def _resolution(self, layer, parameters, context):
        res = self.parameterAsDouble(parameters, "RESOLUTION", context)
        if layer.type() == QgsMapLayer.VectorLayer:
            if res <= 0:
                raise QgsProcessingException("RESOLUTION: a polygon layer is rasterized at a pixel size; set one "
                                             f"in {layer.crs().authid()} units (e.g. 0.2 for FLAIR's 0.2 m)")
            return {"vector_resolution": res, "work_resolution": None, "output_resolution": None}
        return {"work_resolution": res or None, "output_resolution": res or None}

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802, D102
        # 1. The land cover as a file named like the output (the CLI names outputs after inputs).
        layer = self.parameterAsLayer(parameters, "INPUT", context)
        out = _tif_output(self.parameterAsOutputLayer(parameters, "OUTPUT", context))
        extent = self.parameterAsExtent(parameters, "EXTENT", context, layer.crs())
        extent = None if extent.isNull() or extent.isEmpty() else extent
        mask = parameters.get("MASK") or None
        work = Path(tempfile.mkdtemp(prefix="seg2sat-"))
        try:
            make = vector_landcover if layer.type() == QgsMapLayer.VectorLayer else raster_landcover
            landcover = make(layer, extent, mask, work / out.stem, context, feedback)
            # 2. infer into the output's folder.
            values = {"input": str(landcover), "output_dir": str(out.parent), "overwrite": True, "preview": False,
                      **self._resolution(layer, parameters, context), **self.sampling_values(parameters, context)}
            field = _field(self, parameters, "CLASS_FIELD", context)
            if field and layer.type() == QgsMapLayer.VectorLayer:
                values["class_column"] = field
            self.cli("infer", values, feedback, work, self.legend_args(parameters, context),
                     names={str(landcover): layer_label(layer)})
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return {"OUTPUT": str(out)}


class RepaintOrthophoto(Seg2SatAlgorithm):
    """Regenerate the part of an aerial image covered by polygons of new land cover."""

    NAME = "repaint"
    TITLE = "Repaint part of an orthophoto"
    HELP = ("Repaints an aerial image (3-band 8-bit raster) where the polygons of REGION lie, as the land cover "
            "their CLASS_FIELD gives (values or names, read with LEGEND). Pixels farther than MARGIN pixels from "
            "the polygons are copied unchanged; the output has the image's grid and CRS.")

    def initAlgorithm(self, config=None):  # noqa: N802, D102
        self.addParameter(QgsProcessingParameterRasterLayer("IMAGE", "Aerial image (RGB, 8-bit)"))
        self.addParameter(QgsProcessingParameterVectorLayer(
            "REGION", "New land cover (polygons)", [QgsProcessing.TypeVectorPolygon]))
        self.addParameter(QgsProcessingParameterField("CLASS_FIELD", "Class field", parentLayerParameterName="REGION"))
        self.add_legend(default="flair")
        self.addParameter(QgsProcessingParameterNumber(
            "MARGIN", "Blending margin (pixels)", QgsProcessingParameterNumber.Integer,
            cli_default("infer", "edit.margin"), minValue=0))
        self.add_sampling()
        self.addParameter(QgsProcessingParameterRasterDestination("OUTPUT", "Repainted image"))

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802, D102
        image = self.parameterAsRasterLayer(parameters, "IMAGE", context)
        region = self.parameterAsVectorLayer(parameters, "REGION", context)
        out = _tif_output(self.parameterAsOutputLayer(parameters, "OUTPUT", context))
        if out.resolve() == _raster_file(image).resolve():
            raise QgsProcessingException(f"{out}: the output would overwrite the image; choose another file")
        work = Path(tempfile.mkdtemp(prefix="seg2sat-"))
        try:
            # 1. The polygons in the image's CRS, named like the output.
            landcover = vector_landcover(region, None, None, work / out.stem, context, feedback, crs=image.crs())
            # 2. infer's regional edit into the output's folder.
            values = {"input": str(landcover), "edit.image": str(_raster_file(image)), "output_dir": str(out.parent),
                      "overwrite": True, "preview": False, "class_column": _field(self, parameters, "CLASS_FIELD", context),
                      "edit.margin": self.parameterAsInt(parameters, "MARGIN", context),
                      "vector_resolution": image.rasterUnitsPerPixelX(), "work_resolution": None,  # the image grid
                      **self.sampling_values(parameters, context)}
            self.cli("infer", values, feedback, work, self.legend_args(parameters, context),
                     names={str(landcover): layer_label(region), str(_raster_file(image)): layer_label(image)})
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return {"OUTPUT": str(out)}


class PlanRunMosaic(Seg2SatAlgorithm):
    """A territory as one seamless mosaic of blocks: the plan first, then (unless a dry run) the run."""

    NAME = "mosaic"
    TITLE = "Plan / run a mosaic"
    HELP = ("Plans a seamless mosaic of the land cover (a raster file or a polygon layer) on a grid of BLOCK "
            "pixels at RESOLUTION, prints the plan (blocks, windows, estimated GPU-hours) and, unless DRY_RUN, "
            "generates it block by block into OUTPUT_FOLDER (resumable: run it again to finish). The mosaic is "
            "OUTPUT_FOLDER/mosaic.vrt, in the input's CRS, with a STAC collection beside it.")

    def initAlgorithm(self, config=None):  # noqa: N802, D102
        self.addParameter(QgsProcessingParameterMapLayer(
            "INPUT", "Land cover (raster file or polygon layer)",
            types=[QgsProcessing.TypeRaster, QgsProcessing.TypeVectorPolygon]))
        self.addParameter(QgsProcessingParameterField(
            "CLASS_FIELD", "Class field (polygon layer)", parentLayerParameterName="INPUT", optional=True))
        self.add_legend()
        self.addParameter(QgsProcessingParameterNumber(
            "RESOLUTION", "Resolution (CRS units per pixel)", QgsProcessingParameterNumber.Double,
            cli_default("mosaic", "work_resolution"), minValue=1e-6))
        self.addParameter(QgsProcessingParameterNumber(
            "BLOCK", "Block side (pixels, a multiple of the model's tile)", QgsProcessingParameterNumber.Integer,
            cli_default("mosaic", "block"), minValue=1))
        self.addParameter(QgsProcessingParameterNumber(
            "HALO", "Halo (pixels generated beyond each block, a multiple of the tile)",
            QgsProcessingParameterNumber.Integer, cli_default("mosaic", "halo"), minValue=0))
        self.addParameter(QgsProcessingParameterBoolean("DRY_RUN", "Dry run: plan only", defaultValue=True))
        self.add_sampling()
        self.addParameter(QgsProcessingParameterFolderDestination("OUTPUT_FOLDER", "Mosaic folder"))
        self.addOutput(QgsProcessingOutputRasterLayer("OUTPUT", "Mosaic"))
        self.addOutput(QgsProcessingOutputString("PLAN", "Plan"))

    def _input(self, layer, folder, context, feedback):
        if layer.type() == QgsMapLayer.VectorLayer:  # a stable copy: a rerun must see the same input
            return vector_landcover(layer, None, None, folder / "landcover", context, feedback)
        return _raster_file(layer)

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802, D102
        layer = self.parameterAsLayer(parameters, "INPUT", context)
        folder = Path(self.parameterAsString(parameters, "OUTPUT_FOLDER", context))
        folder.mkdir(parents=True, exist_ok=True)
        landcover = self._input(layer, folder, context, feedback)
        names = {str(landcover): layer_label(layer)}
        values = {"input": str(landcover), "output_dir": str(folder),
                  "work_resolution": self.parameterAsDouble(parameters, "RESOLUTION", context),
                  "block": self.parameterAsInt(parameters, "BLOCK", context),
                  "halo": self.parameterAsInt(parameters, "HALO", context), **self.sampling_values(parameters, context)}
        field = _field(self, parameters, "CLASS_FIELD", context)
        if field and layer.type() == QgsMapLayer.VectorLayer:
            values["class_column"] = field
        legend = self.legend_args(parameters, context)
        # 1. The plan, shown before anything runs.
        lines = self.cli("mosaic", {**values, "check": True}, feedback, folder, legend, names)
        plan = "\n".join(line for line in lines if line.strip() and not _LOG_LINE.match(line))
        feedback.pushInfo(plan)
        if self.parameterAsBoolean(parameters, "DRY_RUN", context):
            return {"PLAN": plan, "OUTPUT_FOLDER": str(folder)}
        # 2. The run; the VRT is loaded when it completes.
        self.cli("mosaic", values, feedback, folder, legend, names)
        vrt = folder / "mosaic.vrt"
        context.addLayerToLoadOnCompletion(str(vrt), QgsProcessingContext.LayerDetails(
            "Seg2Sat mosaic", context.project(), "OUTPUT"))
        return {"OUTPUT": str(vrt), "PLAN": plan, "OUTPUT_FOLDER": str(folder)}


class SynthesizeTrainingTiles(Seg2SatAlgorithm):
    """`seg2sat synthesize`: generated IMG/MSK GeoTIFF pairs in the FLAIR-1 layout."""

    NAME = "synthesize"
    TITLE = "Synthesize training tiles"
    HELP = ("Generates N_TILES pairs of an aerial image and its land-cover mask (GeoTIFFs in the FLAIR-1 layout, "
            "the masks with the FLAIR colour table, a STAC item per pair and a collection) into OUTPUT_FOLDER. "
            "The maps come from a land-cover layer (SOURCE, cut into tiles at RESOLUTION; a polygon layer needs "
            "one) and/or a prepared dataset (PREPARED: its maps re-rendered and, for CLASSES, edited to hold "
            "them). With PREPARED, a judge trained on its real images drops pairs that do not follow their map; "
            "without it every pair is kept unjudged. CLASSES: comma-separated FLAIR class names, each given "
            "5 % of every edited tile (needs PREPARED).")

    def initAlgorithm(self, config=None):  # noqa: N802, D102
        self.addParameter(QgsProcessingParameterMapLayer(
            "SOURCE", "Land cover (raster or polygon layer)",
            types=[QgsProcessing.TypeRaster, QgsProcessing.TypeVectorPolygon], optional=True))
        self.addParameter(QgsProcessingParameterField(
            "CLASS_FIELD", "Class field (polygon layer)", parentLayerParameterName="SOURCE", optional=True))
        self.add_legend()
        self.addParameter(QgsProcessingParameterNumber(
            "RESOLUTION", "Resolution (CRS units per pixel; 0: the raster's own)", QgsProcessingParameterNumber.Double,
            0.0, minValue=0.0))
        self.addParameter(QgsProcessingParameterFile(
            "PREPARED", "Prepared dataset folder (from `seg2sat prepare`)", behavior=QgsProcessingParameterFile.Folder,
            optional=True))
        self.addParameter(QgsProcessingParameterNumber(
            "N_TILES", "Tiles", QgsProcessingParameterNumber.Integer, cli_default("synthesize", "target.n_tiles"),
            minValue=1))
        self.addParameter(QgsProcessingParameterString(
            "CLASSES", "Classes to favour (comma-separated, e.g. building, swimming pool)", defaultValue="",
            optional=True))
        self.add_sampling()
        self.addParameter(QgsProcessingParameterFolderDestination("OUTPUT_FOLDER", "Dataset folder"))

    def _landcover_source(self, parameters, context, feedback, work):
        """SOURCE as a file the CLI reads, as one `landcover` source; None without a layer."""
        layer = self.parameterAsLayer(parameters, "SOURCE", context)
        if layer is None:
            return None, None
        res = self.parameterAsDouble(parameters, "RESOLUTION", context)
        vector = layer.type() == QgsMapLayer.VectorLayer
        if vector and res <= 0:
            raise QgsProcessingException("RESOLUTION: a polygon layer is rasterized at a pixel size; set one "
                                         f"in {layer.crs().authid()} units (e.g. 0.2 for FLAIR's 0.2 m)")
        make = vector_landcover if vector else raster_landcover
        path = make(layer, None, None, work / "landcover", context, feedback)
        legend = self.parameterAsString(parameters, "LEGEND", context).strip() or "auto"
        source = {"kind": "landcover", "path": str(path), "legend": None if legend == "flair" else legend}
        field = _field(self, parameters, "CLASS_FIELD", context)
        if field and vector:
            source["column"] = field
        return source, res or None

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802, D102
        # 1. The sources: the layer as a file, the prepared dataset (re-rendered, edited for CLASSES).
        folder = Path(self.parameterAsString(parameters, "OUTPUT_FOLDER", context))
        folder.mkdir(parents=True, exist_ok=True)
        prepared = self.parameterAsString(parameters, "PREPARED", context).strip()
        classes = [c.strip() for c in self.parameterAsString(parameters, "CLASSES", context).split(",") if c.strip()]
        if classes and not prepared:
            raise QgsProcessingException("CLASSES: classes are added by editing a prepared dataset's maps; "
                                         "give PREPARED (a folder made by `seg2sat prepare`)")
        work = Path(tempfile.mkdtemp(prefix="seg2sat-"))
        try:
            landcover, resolution = self._landcover_source(parameters, context, feedback, work)
            sources = [landcover] if landcover else []
            if prepared:
                sources.append({"kind": "prepared", "path": str(Path(prepared).resolve())})
                if classes:
                    sources.append({"kind": "edited", "path": str(Path(prepared).resolve())})
            if not sources:
                raise QgsProcessingException("give a land-cover layer (SOURCE) or a prepared dataset (PREPARED)")
            # 2. synthesize into the folder (a rerun with the same settings finishes a stopped one).
            values = {"output_dir": str(folder), "sources": sources, "work_resolution": resolution,
                      "judge_data": str(Path(prepared).resolve()) if prepared else None,
                      "target.n_tiles": self.parameterAsInt(parameters, "N_TILES", context),
                      **self.sampling_values(parameters, context)}
            if classes:
                values["target.classes"] = classes
            names = {landcover["path"]: layer_label(self.parameterAsLayer(parameters, "SOURCE", context))} \
                if landcover else {}
            self.cli("synthesize", values, feedback, work, names=names)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return {"OUTPUT_FOLDER": str(folder)}


class LandCoverDrawingLayer(Seg2SatAlgorithm):
    """An empty polygon layer styled with a legend: draw land cover, then generate from it."""

    NAME = "drawing_layer"
    TITLE = "Create a land-cover drawing layer"
    HELP = ("Creates an empty polygon GeoPackage styled with LEGEND's classes and colours (and a form that offers "
            "the class names). Draw polygons in it, then run 'Generate aerial image from land cover' on it with "
            "CLASS_FIELD 'class' and the same legend.")

    def initAlgorithm(self, config=None):  # noqa: N802, D102
        self.add_legend(default="flair")
        self.addParameter(QgsProcessingParameterCrs("CRS", "CRS", defaultValue=cli_default("qgis", "crs")))
        self.addParameter(QgsProcessingParameterFileDestination("OUTPUT", "Drawing layer", "GeoPackage (*.gpkg)"))
        self.addOutput(QgsProcessingOutputVectorLayer("LAYER", "Drawing layer"))

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802, D102
        out = Path(self.parameterAsFileOutput(parameters, "OUTPUT", context)).with_suffix(".gpkg")
        crs = self.parameterAsCrs(parameters, "CRS", context)
        legend = self.parameterAsString(parameters, "LEGEND", context).strip() or "flair"
        crs_text = crs.authid() or crs.toWkt(QgsCoordinateReferenceSystem.WKT_PREFERRED)
        self.cli("qgis", {"action": "layer", "crs": crs_text, "output": str(out), "overwrite": True},
                 feedback, out.parent, self.legend_args(parameters, context))
        context.addLayerToLoadOnCompletion(str(out), QgsProcessingContext.LayerDetails(
            f"land cover ({legend})", context.project(), "LAYER"))
        return {"OUTPUT": str(out), "LAYER": str(out)}


ALGORITHMS = (GenerateAerialImage, RepaintOrthophoto, PlanRunMosaic, SynthesizeTrainingTiles, LandCoverDrawingLayer)
