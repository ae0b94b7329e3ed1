"""One land-cover file in, one georeferenced aerial GeoTIFF out (repainting part of an image: `edit`).

Per input file (`generate_file`):
1. read it as FLAIR codes on its grid (`seg2sat.geo.landcover`), resample to the work resolution;
2. pad to whole windows (edge replication), build the prompt from the class shares;
3. generate with overlapping windows fused at every step (`seg2sat.generation.tiling`);
4. write the RGB GeoTIFF with the input's CRS and transform (windowed, temp file + rename;
   nodata stays nodata through the GeoTIFF mask), then a PNG preview.
The caller writes the sidecar JSON last: an output counts as finished only when it exists.
Every setting arrives typed in a `FileJob`, built from the config in one place.
"""

from __future__ import annotations

import hashlib
import json
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from affine import Affine
from PIL import Image
from rasterio.windows import Window as RioWindow

from seg2sat.atomic import atomic_path, sha256_of, sweep_tmp, write_json
from seg2sat.errors import RasterError
from seg2sat.generation.models import LoadedModel
from seg2sat.generation.sampling import PromptSpec, Sampling
from seg2sat.generation.tiling import generate_tiled, pad_to_tile
from seg2sat.generation.windows import windows_for
from seg2sat.geo.geotiff import geotiff_bytes, open_geotiff_writer
from seg2sat.geo.landcover import InputOptions, LandCover, nearest_resize
from seg2sat.geo.legends import Legend, load_legend
from seg2sat.geo.raster import RasterData, is_plain_image, read_image
from seg2sat.geo.recognise import resolve_legend
from seg2sat.geo.stac import AssetFile, Provenance, raster_item
from seg2sat.labels import class_shares

SIDECAR_SUFFIX = ".json"
SIDECAR_BYTES = 4096  # a sidecar JSON, rounded up


@dataclass(frozen=True)
class OutputSpec:
    """What is written per input: the GeoTIFF's pixel size and layout, and a preview."""

    resolution: float | None = None  # null: the input's own pixel size
    cog: bool = True
    preview: bool = True
    preview_size: int = 1024


@dataclass(frozen=True)
class EditSpec:
    """A regional edit: regenerate where the new land cover covers `image`, inside `region`."""

    image: Path | None = None
    region: Path | None = None
    margin: int = 16


@dataclass(frozen=True)
class FileJob:
    """Everything a file's generation needs besides the model, typed once from the config."""

    inputs: InputOptions
    prompt: PromptSpec
    sampling: Sampling
    output: OutputSpec
    edit: EditSpec
    legend: Legend | str | None = None

    @classmethod
    def from_config(cls, cfg: Any, model: LoadedModel | None = None) -> FileJob:
        """From an `infer` config (its `sampling`, `prompt` and `legend` groups); nulls take the model's."""
        edit = cfg.get("edit") or {}
        return cls(
            inputs=InputOptions.from_config(cfg),
            prompt=PromptSpec.from_config(cfg.prompt, model),
            sampling=Sampling.from_config(cfg.sampling, model),
            output=OutputSpec(resolution=None if cfg.get("output_resolution") is None else float(cfg.output_resolution),
                              cog=bool(cfg.get("cog", True)), preview=bool(cfg.get("preview", True)),
                              preview_size=int(cfg.get("preview_size", 1024))),
            edit=EditSpec(image=Path(edit["image"]) if edit.get("image") else None,
                          region=Path(edit["region"]) if edit.get("region") else None,
                          margin=int(edit.get("margin", 16))),
            legend=load_legend(cfg.get("legend"), cfg.get("legend_file")),
        )


# ---------------------------------------------------------------------------------------------
# Outputs
# ---------------------------------------------------------------------------------------------


def output_paths(out_dir: Path, src: Path) -> dict[str, Path]:
    """GeoTIFF, sidecar and preview of one input."""
    stem = src.stem
    return {"tif": out_dir / f"{stem}.tif", "json": out_dir / f"{stem}.tif{SIDECAR_SUFFIX}",
            "preview": out_dir / f"{stem}_preview.png"}


def is_finished(paths: dict[str, Path]) -> bool:
    """An output is finished when its sidecar (`paths["json"]`, written last) reads whole and its checksums match.

    A sidecar that is missing, truncated or changed (its own checksum), or a file it lists that
    was changed since, means the output is redone. Sidecars written before checksums existed
    only need their GeoTIFF. Any stage's outputs work the same: name them in `paths`.
    """
    try:
        record = json.loads(paths["json"].read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if not isinstance(record, dict):
        return False
    sums = record.get("sha256")
    if sums is None:  # a sidecar from before checksums
        return paths["tif"].exists()
    if not isinstance(sums, dict) or record.get("sidecar_sha256") != _record_sha(record):
        return False
    return all(key in paths and paths[key].is_file() and sha256_of(paths[key]) == sha for key, sha in sums.items())


def _record_sha(record: dict[str, Any]) -> str:
    """The checksum of a sidecar's own content (all but this checksum), as it reads back from JSON."""
    body = {k: v for k, v in json.loads(json.dumps(record, default=str)).items() if k != "sidecar_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def sweep_leftovers(paths: dict[str, Path]) -> None:
    """Remove what a killed run left of this output's files (each output belongs to one process)."""
    for path in paths.values():
        sweep_tmp(path.parent, path.name)


def write_sidecar(paths: dict[str, Path], record: dict[str, Any]) -> Path:
    """The sidecar JSON, last: the checksums of every file in `paths` and its own, fsynced (it marks them finished)."""
    sums = {key: sha256_of(path) for key, path in paths.items() if key != "json" and path.is_file()}
    record = {**record, "sha256": sums}
    return write_json(paths["json"], {**record, "sidecar_sha256": _record_sha(record)}, durable=True)


def output_bytes(width: int, height: int, output: OutputSpec) -> int:
    """About what one output takes on disk before compression: GeoTIFF, mask, overviews, preview, sidecar."""
    scale = min(1.0, output.preview_size / max(width, height)) if output.preview else 0.0
    preview = round(width * scale) * round(height * scale) * 3
    return geotiff_bytes(width, height, 3, "uint8", output.cog) + preview + SIDECAR_BYTES


def output_grid(lc: LandCover, resolution: float | None) -> tuple[int, int, Affine, float]:
    """(width, height, transform, pixel size) of the output of `lc`: its own grid, or `resolution`."""
    res = float(resolution) if resolution is not None else lc.resolution
    in_h, in_w = lc.codes.shape
    out_h = max(1, round(in_h * lc.resolution / res))
    out_w = max(1, round(in_w * lc.resolution / res))
    t = lc.transform
    transform = t if (out_h, out_w) == (in_h, in_w) else Affine(t.a * in_w / out_w, 0, t.c, 0, t.e * in_h / out_h, t.f)
    return out_w, out_h, transform, res


def versions() -> dict[str, str]:
    """The software that made an output (recorded in its sidecar)."""
    from importlib.metadata import PackageNotFoundError, version

    import diffusers
    import rasterio
    import torch

    try:
        ours = version("seg2sat")
    except PackageNotFoundError:  # run from a source tree that was never installed
        ours = "unknown (not installed)"
    return {"seg2sat": ours, "torch": torch.__version__, "diffusers": diffusers.__version__,
            "rasterio": rasterio.__version__, "python": platform.python_version()}


def stac_item(paths: dict[str, Path], record: dict[str, Any], cog: bool) -> Any:
    """The STAC Item of one output (`seg2sat.geo.stac`) from its sidecar record.

    Assets: the GeoTIFF, its preview (if written) and the sidecar (written after the item).
    """
    provenance = Provenance(model=str(record["model"]), landcover=record["input"], prompt=record.get("prompt"),
                            seed=record.get("seed"), legend=record.get("legend"), software=record["versions"],
                            edited_image=record.get("edit_image"))
    assets = {"metadata": AssetFile(paths["json"], ("metadata",), "Seg2Sat sidecar: settings and timings")}
    if paths["preview"].exists():
        assets["preview"] = AssetFile(paths["preview"], ("overview",), "Preview")
    return raster_item(paths["tif"], provenance, assets=assets, cog=cog)


def write_preview(tif: Path, dest: Path, size: int) -> Path:
    """A PNG of the GeoTIFF, longest side <= size, read decimated (no full-size array)."""
    import rasterio

    with rasterio.open(tif) as src:
        scale = min(1.0, size / max(src.width, src.height))
        shape = (3, max(1, round(src.height * scale)), max(1, round(src.width * scale)))
        rgb = src.read([1, 2, 3], out_shape=shape, resampling=rasterio.enums.Resampling.average)
    with atomic_path(dest, needed=rgb.size) as tmp:
        Image.fromarray(np.moveaxis(rgb, 0, -1)).save(tmp, format="PNG")
    return dest


def prompt_for(spec: PromptSpec, lc: LandCover) -> str:
    """The prompt of an input; a plain image on its local grid has no real place."""
    plain = lc.path is not None and Path(lc.path).is_file() and is_plain_image(lc.path)
    return spec.for_grid(lc.codes, lc.valid, None if plain else lc.crs, lc.transform)


# ---------------------------------------------------------------------------------------------
# Checks (before any model loads)
# ---------------------------------------------------------------------------------------------


def read_edit_image(image_path: Path, crs: str | None) -> RasterData:
    """`edit.image` (a GeoTIFF, or a plain photo placed with `crs=`), refused unless 3 uint8 bands."""
    image = read_image(image_path, crs=crs)
    if image.count < 3 or image.array.dtype != np.uint8:
        raise RasterError(f"{image_path}: an aerial image needs 3 uint8 bands, got {image.count} of {image.array.dtype}")
    return image


@dataclass
class InputCheck:
    """One input as `infer` will see it, found before any model is loaded."""

    input: Path
    size: tuple[int, int]  # (width, height) of the output
    crs: str | None
    resolution: float  # work resolution (CRS units per pixel)
    classes: list[str]
    windows: int
    legend: str | None
    output_bytes: int = 0  # about what its outputs take on disk (uncompressed)


def check_input(job: FileJob, src: Path) -> InputCheck:
    """Read and validate one input (bands, dtype, georeferencing, legend, size) as `infer` will.

    Raises the reader's error (naming the file) for a bad input; nothing is loaded or written.
    """
    legend = resolve_legend(src, job.legend)
    lc, work = job.inputs.read(src, legend)
    padded = pad_to_tile(work.codes, job.sampling.tile)
    width, height, _, _ = output_grid(lc, job.output.resolution)
    written = output_bytes(width, height, job.output)
    if job.edit.image:  # the edited image is written on its own grid
        image = read_edit_image(job.edit.image, job.inputs.crs)
        written = output_bytes(image.width, image.height, job.output)
    return InputCheck(input=src, size=(width, height), crs=str(lc.crs) if lc.crs else None,
                      resolution=work.resolution, classes=list(class_shares(work.codes, work.valid)),
                      legend=legend.name if legend else None, output_bytes=written,
                      windows=len(windows_for(*padded.shape, job.sampling.tile, job.sampling.overlap)))


# ---------------------------------------------------------------------------------------------
# Generate one file
# ---------------------------------------------------------------------------------------------


class _RowWriter:
    """Rows of the work grid -> the GeoTIFF, masked; held and resampled when the grids differ."""

    def __init__(self, writer: Any, work_shape: tuple[int, int], out_shape: tuple[int, int],
                 valid_out: np.ndarray) -> None:
        self.writer, self.valid_out = writer, valid_out
        self.h, self.w = work_shape
        self.out_h, self.out_w = out_shape
        self.same_grid = work_shape == out_shape
        self.held: list[np.ndarray] = []

    def __call__(self, row0: int, rgb: np.ndarray) -> None:
        rgb = rgb[: max(0, self.h - row0), :self.w]
        if rgb.shape[0] == 0:
            return
        if not self.same_grid:
            self.held.append(rgb)
            return
        self._write(row0, rgb, self.valid_out[row0:row0 + rgb.shape[0]])

    def _write(self, row0: int, rgb: np.ndarray, mask: np.ndarray) -> None:
        win = RioWindow(0, row0, rgb.shape[1], rgb.shape[0])
        self.writer.write(np.moveaxis(np.where(mask[..., None], rgb, 0), -1, 0), win)
        self.writer.write_mask(mask.astype(np.uint8) * 255, win)

    def finish(self) -> None:
        """Resample the held work grid to the output grid (in memory) and write it."""
        if self.same_grid:
            return
        image = np.concatenate(self.held)
        resample = Image.BILINEAR if self.out_h > self.h else Image.BOX
        image = np.asarray(Image.fromarray(image).resize((self.out_w, self.out_h), resample))
        self._write(0, image, self.valid_out)


def generate_file(model: LoadedModel, job: FileJob, src: Path, paths: dict[str, Path],
                  progress: Any = None) -> dict[str, Any]:
    """Generate one input into `paths["tif"]` (and its preview); returns the sidecar record."""
    # 1. Read, move to the work resolution, pad; the prompt.
    legend = resolve_legend(src, job.legend)
    lc, work = job.inputs.read(src, legend)
    out_w, out_h, out_transform, out_res = output_grid(lc, job.output.resolution)
    codes = pad_to_tile(work.codes, job.sampling.tile)
    prompt = prompt_for(job.prompt, work)
    valid_out = lc.valid if (out_h, out_w) == lc.valid.shape else nearest_resize(lc.valid, out_h, out_w)
    # 2. Generate; rows go straight to the GeoTIFF when the output grid is the work grid.
    tags = {"seg2sat_prompt": prompt, "seg2sat_model": model.source, "seg2sat_seed": str(job.sampling.seed)}
    with open_geotiff_writer(paths["tif"], out_w, out_h, 3, "uint8", lc.crs, out_transform,
                             cog=job.output.cog, tags=tags) as writer:
        rows = _RowWriter(writer, work.codes.shape, (out_h, out_w), valid_out)
        result = generate_tiled(model.pipe, codes, prompt, rows, progress=progress, **job.sampling.kwargs())
        rows.finish()
    # 3. Preview; the caller writes the sidecar last.
    if job.output.preview:
        write_preview(paths["tif"], paths["preview"], job.output.preview_size)
    return {"input": str(src), "output": str(paths["tif"]), "model": model.source, "base": model.base,
            "prompt": prompt, "scheduler": model.scheduler, "lora": model.lora, **job.sampling.kwargs(),
            "legend": legend.name if isinstance(legend, Legend) else None,
            "work_resolution": work.resolution, "output_resolution": out_res, "crs": str(lc.crs) if lc.crs else None,
            "size": [out_w, out_h], "windows": result.windows, "versions": versions()}
