"""`seg2sat infer`: land-cover files -> georeferenced aerial GeoTIFFs, any size, resumable.

Per input file:
1. read it as FLAIR codes on its grid (`seg2sat.landcover`), resample to the work resolution;
2. pad to whole windows (edge replication), build the prompt from the class shares;
3. generate with overlapping windows fused at every step (`seg2sat.tiling`);
4. write the RGB GeoTIFF with the input's CRS and transform (windowed, temp file + rename;
   nodata stays nodata through the GeoTIFF mask), a PNG preview, then the sidecar JSON;
   an output counts as finished only when its sidecar exists, so reruns skip it.
Files are sharded over processes when launched with `accelerate launch` (rank r takes every
world-th file).
"""

from __future__ import annotations

import glob
import json
import logging
import math
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from affine import Affine
from omegaconf import DictConfig, OmegaConf
from PIL import Image
from rasterio.windows import Window as RioWindow

from seg2sat import prompts
from seg2sat.atomic import atomic_path, write_json
from seg2sat.errors import BatchError, RasterError, Seg2SatError
from seg2sat.labels import class_shares
from seg2sat.landcover import (
    AUTO,
    RASTER_SUFFIXES,
    VECTOR_SUFFIXES,
    LandCover,
    Legend,
    nearest_resize,
    read_landcover,
    resolve_legend,
    to_resolution,
)
from seg2sat.models import LoadedModel, peek_model, resolve_device_dtype
from seg2sat.raster import RasterData, open_geotiff_writer, read_image
from seg2sat.sampling import Sampling
from seg2sat.tiling import generate_tiled, pad_to_tile, regional_edit, windows_for

log = logging.getLogger(__name__)
SIDECAR_SUFFIX = ".json"


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


@dataclass
class InferResult:
    """What a run wrote, skipped (already finished), checked and could not do."""

    outputs: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # input -> reason
    checked: list[InputCheck] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    windows: int = 0
    report: Path | None = None


# ---------------------------------------------------------------------------------------------
# Inputs, outputs, model
# ---------------------------------------------------------------------------------------------


def find_inputs(spec: str) -> list[Path]:
    """A file, a folder (its supported files, sorted) or a glob; an error when nothing matches."""
    path = Path(spec).expanduser()
    suffixes = RASTER_SUFFIXES | VECTOR_SUFFIXES
    if path.is_dir():
        found = sorted(p for p in path.iterdir() if p.suffix.lower() in suffixes and not p.name.startswith("."))
    elif any(ch in spec for ch in "*?["):
        found = sorted(Path(p) for p in glob.glob(spec, recursive=True) if Path(p).suffix.lower() in suffixes)
    elif path.exists():
        found = [path]
    else:
        raise Seg2SatError(f"{spec}: input not found")
    if not found:
        raise Seg2SatError(f"{spec}: no land-cover files ({', '.join(sorted(suffixes))})")
    return found


def output_paths(out_dir: Path, src: Path) -> dict[str, Path]:
    """GeoTIFF, sidecar and preview of one input."""
    stem = src.stem
    return {"tif": out_dir / f"{stem}.tif", "json": out_dir / f"{stem}.tif{SIDECAR_SUFFIX}",
            "preview": out_dir / f"{stem}_preview.png"}


def is_finished(paths: dict[str, Path]) -> bool:
    """An output is finished when its GeoTIFF and its sidecar (written last) exist."""
    return paths["tif"].exists() and paths["json"].exists()


def load_legend(group: Any, file: str | None = None) -> Legend | str | None:
    """The legend chosen as a config group (`legend=nlcd`), a YAML file (`legend_file=...`), or "auto".

    With `legend=auto` each input's product is recognised by `landcover.resolve_legend`.
    """
    if file:
        path = Path(file)
        if not path.exists():
            raise Seg2SatError(f"{path}: legend file not found")
        return Legend.from_config(OmegaConf.to_container(OmegaConf.load(path), resolve=True))
    if not group:
        return None
    if str(group.get("name", "")).lower() == AUTO:
        return AUTO
    return Legend.from_config(OmegaConf.to_container(group, resolve=True))


def process_state() -> Any:
    """Accelerate's process state; on CPU it must be told (ACCELERATE_USE_CPU=1) to join the group."""
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    return PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))


def load_model(cfg: DictConfig, device: torch.device, dtype: torch.dtype) -> LoadedModel:
    """The configured model (`model_path`, `base_model`, `scheduler`, `lora`) and its info."""
    from seg2sat.models import load_model as load

    return load(str(cfg.model_path), base=cfg.base_model, device=device, dtype=dtype,
                scheduler=str(cfg.scheduler), lora=cfg.lora, compile=cfg.get("compile", False),
                channels_last=cfg.get("channels_last", "auto"))


# ---------------------------------------------------------------------------------------------
# One file
# ---------------------------------------------------------------------------------------------


def place_on_grid(place: str | None, crs: Any, transform: Any, width: int, height: int) -> str:
    """The prompt's place for a grid: `place` as written, or the grid's real place.

    `place` is kept unless it is `auto`/empty or the default `France`; the default stays
    "France" over French rasters (as before) and names the real place (offline gazetteer at the
    grid's centre) elsewhere. The app's georeferenced uploads go through here too, so the Draw
    page and `infer` write the same prompt for the same raster.
    """
    from seg2sat.places import raster_place

    place = str(place or "").strip()
    if place not in ("", "auto", prompts.DEFAULT_PLACE):
        return place
    found = raster_place(crs, transform, width, height) if crs is not None else None
    if found is None or (found.in_france and place == prompts.DEFAULT_PLACE):
        return place if place not in ("", "auto") else prompts.DEFAULT_PLACE
    return found.name


def place_for(cfg: DictConfig, lc: LandCover) -> str:
    """`place_on_grid` for an input; a plain image on its local grid has no real place."""
    from seg2sat.raster import is_plain_image

    plain = lc.path is not None and Path(lc.path).is_file() and is_plain_image(lc.path)
    return place_on_grid(cfg.prompt.place, None if plain else lc.crs, lc.transform, lc.codes.shape[1],
                         lc.codes.shape[0])


def prompt_for(cfg: DictConfig, lc: LandCover) -> str:
    """The fixed prompt, or the caption of the class shares (+ style) at the raster's place."""
    place = str(cfg.prompt.place) if cfg.prompt.text else place_for(cfg, lc)
    return prompts.prompt_for(lc.codes, lc.valid, text=cfg.prompt.text, template=str(cfg.prompt.template),
                              place=place, style=cfg.prompt.style)


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    import diffusers
    import rasterio

    try:
        ours = version("seg2sat")
    except PackageNotFoundError:  # run from a source tree that was never installed
        ours = "unknown (not installed)"
    return {"seg2sat": ours, "torch": torch.__version__,
            "diffusers": diffusers.__version__, "rasterio": rasterio.__version__,
            "python": platform.python_version()}


def write_preview(tif: Path, dest: Path, size: int) -> Path:
    """A PNG of the GeoTIFF, longest side <= size, read decimated (no full-size array)."""
    import rasterio

    with rasterio.open(tif) as src:
        scale = min(1.0, size / max(src.width, src.height))
        shape = (3, max(1, round(src.height * scale)), max(1, round(src.width * scale)))
        rgb = src.read([1, 2, 3], out_shape=shape, resampling=rasterio.enums.Resampling.average)
    with atomic_path(dest) as tmp:
        Image.fromarray(np.moveaxis(rgb, 0, -1)).save(tmp, format="PNG")
    return dest


def generate_file(cfg: DictConfig, model: LoadedModel, sampling: Sampling, src: Path, paths: dict[str, Path],
                  legend: Legend | str | None, progress: Any = None) -> dict[str, Any]:
    """Generate one input; returns the sidecar record."""
    # 1. Read, move to the work resolution, pad.
    legend = resolve_legend(src, legend)
    lc, work = _read_input(cfg, src, legend)
    out_res = float(cfg.output_resolution) if cfg.output_resolution is not None else lc.resolution
    out_h = max(1, round(lc.codes.shape[0] * lc.resolution / out_res))
    out_w = max(1, round(lc.codes.shape[1] * lc.resolution / out_res))
    t = lc.transform
    in_h, in_w = lc.codes.shape
    out_transform = t if (out_h, out_w) == (in_h, in_w) else Affine(t.a * in_w / out_w, 0, t.c, 0, t.e * in_h / out_h, t.f)
    codes = pad_to_tile(work.codes, sampling.tile)
    prompt = prompt_for(cfg, work)
    h, w = work.codes.shape
    same_grid = (out_h, out_w) == (h, w)
    valid_out = lc.valid if (out_h, out_w) == lc.valid.shape else nearest_resize(lc.valid, out_h, out_w)

    # 2. Generate; rows go straight to the GeoTIFF when the output grid is the work grid.
    tags = {"seg2sat_prompt": prompt, "seg2sat_model": str(cfg.model_path), "seg2sat_seed": str(cfg.seed)}
    with open_geotiff_writer(paths["tif"], out_w, out_h, 3, "uint8", lc.crs, out_transform,
                             cog=bool(cfg.cog), tags=tags) as writer:
        held: list[np.ndarray] = []

        def write_rows(row0: int, rgb: np.ndarray) -> None:
            rgb = rgb[: max(0, h - row0), :w]
            if rgb.shape[0] == 0:
                return
            if not same_grid:
                held.append(rgb)
                return
            mask = valid_out[row0:row0 + rgb.shape[0]]
            rgb = np.where(mask[..., None], rgb, 0)
            win = RioWindow(0, row0, w, rgb.shape[0])
            writer.write(np.moveaxis(rgb, -1, 0), win)
            writer.write_mask(mask.astype(np.uint8) * 255, win)

        result = generate_tiled(model.pipe, codes, prompt, write_rows, progress=progress, **sampling.kwargs())
        if not same_grid:  # resample the work grid to the output grid (held in memory)
            image = np.concatenate(held)
            image = np.asarray(Image.fromarray(image).resize((out_w, out_h), Image.BILINEAR if out_h > h else Image.BOX))
            image = np.where(valid_out[..., None], image, 0)
            writer.write(np.moveaxis(image, -1, 0), RioWindow(0, 0, out_w, out_h))
            writer.write_mask(valid_out.astype(np.uint8) * 255, RioWindow(0, 0, out_w, out_h))

    # 3. Preview, then the sidecar (last: it marks the output finished).
    if cfg.preview:
        write_preview(paths["tif"], paths["preview"], int(cfg.preview_size))
    return {"input": str(src), "output": str(paths["tif"]), "model": str(cfg.model_path), "base": cfg.base_model,
            "prompt": prompt, "scheduler": str(cfg.scheduler), "lora": cfg.lora, **sampling.kwargs(),
            "legend": legend.name if isinstance(legend, Legend) else None,
            "work_resolution": work.resolution, "output_resolution": out_res, "crs": str(lc.crs) if lc.crs else None,
            "size": [out_w, out_h], "windows": result.windows, "versions": _versions()}


# ---------------------------------------------------------------------------------------------
# Regional edit
# ---------------------------------------------------------------------------------------------


def region_on_grid(path: Path, image: RasterData, image_path: Path, column: str) -> np.ndarray:
    """The (H, W) mask of an `edit.region` raster or layer on the image's pixel grid.

    Vectors are reprojected to the image's CRS and burnt at its pixel size; a raster on another
    grid (CRS, pixel size or origin) is reprojected onto it with nearest-neighbour resampling,
    so a region is never misplaced by rounding. A region without a CRS is only accepted on an
    image without one.
    """
    from rasterio.warp import Resampling, reproject

    limit = read_landcover(path, column=column, vector_resolution=image.transform.a,
                           crs=image.crs.to_string() if image.crs else None, unknown_to_other=True)
    if (limit.crs is None) != (image.crs is None):
        raise RasterError(f"{path}: the region has {'no' if limit.crs is None else 'a'} CRS but {image_path} "
                          f"has {'one' if image.crs is not None else 'none'}; pass crs= for the one without")
    mask = np.zeros((image.height, image.width), np.uint8)
    if limit.crs is None:  # no CRS on either side: the pixel grids must match as they are
        if not math.isclose(limit.transform.a, image.transform.a, rel_tol=1e-6):
            raise RasterError(f"{path}: pixel size {limit.transform.a:g} differs from {image_path}'s "
                              f"{image.transform.a:g}, and neither has a CRS to reproject with")
    # Without CRS both grids are in the same (unknown) units: any one CRS on both sides makes the
    # warp a pure resampling between the two transforms.
    same = "EPSG:3857"
    reproject(limit.valid.astype(np.uint8), mask, src_transform=limit.transform, src_crs=limit.crs or same,
              dst_transform=image.transform, dst_crs=image.crs or same, resampling=Resampling.nearest)
    if not mask.any():
        raise RasterError(f"{path}: the edit region does not overlap {image_path}")
    return mask.astype(bool)


def _read_edit_image(cfg: DictConfig) -> tuple[Path, RasterData]:
    """`edit.image` (a GeoTIFF, or a plain photo placed with `crs=`), refused unless 3 uint8 bands."""
    image_path = Path(cfg.edit.image)
    image = read_image(image_path, crs=cfg.crs)
    if image.count < 3 or image.array.dtype != np.uint8:
        raise RasterError(f"{image_path}: an aerial image needs 3 uint8 bands, got {image.count} of {image.array.dtype}")
    return image_path, image


def edit_file(cfg: DictConfig, model: LoadedModel, sampling: Sampling, src: Path, paths: dict[str, Path],
              legend: Legend | str | None) -> dict[str, Any]:
    """Regenerate the area `src` (new land cover) covers in `edit.image`; the rest stays identical.

    Inside the region the image is replaced; over `edit.margin` pixels outside it the new
    content fades out (linear in the distance to the region); beyond, pixels are copied
    bit for bit. The new map must be on the image's grid (same CRS and pixel size, aligned).
    """
    image_path, image = _read_edit_image(cfg)
    lc = read_landcover(src, legend=legend, column=str(cfg.class_column), vector_resolution=image.transform.a,
                        snap=bool(cfg.snap), crs=cfg.crs or (image.crs.to_string() if image.crs else None),
                        unknown_to_other=bool(cfg.unknown_to_other))
    # 1. Place the new map on the image grid.
    if lc.crs != image.crs or not math.isclose(lc.resolution, image.transform.a, rel_tol=1e-6):
        raise RasterError(f"{src}: the new map must share {image_path}'s CRS and pixel size "
                          f"({image.crs}, {image.transform.a:g}); got {lc.crs}, {lc.resolution:g}")
    col_f, row_f = ~image.transform * (lc.transform.c, lc.transform.f)
    col0, row0 = round(col_f), round(row_f)
    if abs(col_f - col0) > 1e-3 or abs(row_f - row0) > 1e-3:
        raise RasterError(f"{src}: not aligned with {image_path}'s pixel grid (offset {col_f:.3f}, {row_f:.3f} px)")
    H, W = image.height, image.width
    region = np.zeros((H, W), bool)
    codes_full = np.full((H, W), 0, np.uint8)
    r0, c0 = max(0, row0), max(0, col0)
    r1, c1 = min(H, row0 + lc.codes.shape[0]), min(W, col0 + lc.codes.shape[1])
    if r1 <= r0 or c1 <= c0:
        raise RasterError(f"{src}: does not overlap {image_path}")
    region[r0:r1, c0:c1] = lc.valid[r0 - row0:r1 - row0, c0 - col0:c1 - col0]
    codes_full[r0:r1, c0:c1] = lc.codes[r0 - row0:r1 - row0, c0 - col0:c1 - col0]
    if cfg.edit.region:
        region &= region_on_grid(Path(cfg.edit.region), image, image_path, str(cfg.class_column))
    if not region.any():
        raise RasterError(f"{src}: the edit region is empty")
    # 2-4. Regenerate the region and blend it into a copy of the image.
    known = region.copy()
    known[r0:r1, c0:c1] |= lc.valid[r0 - row0:r1 - row0, c0 - col0:c1 - col0]
    prompt = prompt_for(cfg, LandCover(codes_full, known, image.crs, image.transform, src))
    margin = int(cfg.edit.margin)
    rgb, box = regional_edit(model.pipe, np.moveaxis(image.array[:3], 0, -1), codes_full, known, region, prompt,
                             margin=margin, **sampling.kwargs())
    out = image.array.copy()
    out[:3] = np.moveaxis(rgb, -1, 0)
    bc0, br0, bc1, br1 = box
    with open_geotiff_writer(paths["tif"], W, H, out.shape[0], "uint8", image.crs, image.transform,
                             nodata=image.nodata, cog=bool(cfg.cog), tags={"seg2sat_prompt": prompt}) as writer:
        writer.write(out, RioWindow(0, 0, W, H))
    if cfg.preview:
        write_preview(paths["tif"], paths["preview"], int(cfg.preview_size))
    return {"input": str(src), "edit_image": str(image_path), "output": str(paths["tif"]), "model": str(cfg.model_path),
            "prompt": prompt, "scheduler": str(cfg.scheduler), **sampling.kwargs(), "margin": margin,
            "region_pixels": int(region.sum()), "changed_box": [int(bc0), int(br0), int(bc1), int(br1)],
            "versions": _versions()}


# ---------------------------------------------------------------------------------------------
# The stage
# ---------------------------------------------------------------------------------------------


def _read_input(cfg: DictConfig, src: Path, legend: Legend | None) -> tuple[LandCover, LandCover]:
    """An input at its own resolution and at the work resolution (`legend` already resolved)."""
    lc = read_landcover(src, legend=legend, column=str(cfg.class_column),
                        vector_resolution=float(cfg.vector_resolution), snap=bool(cfg.snap),
                        crs=cfg.crs, unknown_to_other=bool(cfg.unknown_to_other))
    return lc, to_resolution(lc, None if cfg.work_resolution is None else float(cfg.work_resolution))


def check_input(cfg: DictConfig, src: Path, legend: Legend | str | None, sampling: Sampling) -> InputCheck:
    """Read and validate one input (bands, dtype, georeferencing, legend, size) as `infer` will.

    Raises the reader's error (naming the file) for a bad input; nothing is loaded or written.
    """
    legend = resolve_legend(src, legend)
    lc, work = _read_input(cfg, src, legend)
    if cfg.edit.image:
        _read_edit_image(cfg)
    padded = pad_to_tile(work.codes, sampling.tile)
    out_res = float(cfg.output_resolution) if cfg.output_resolution is not None else lc.resolution
    size = (max(1, round(lc.codes.shape[1] * lc.resolution / out_res)),
            max(1, round(lc.codes.shape[0] * lc.resolution / out_res)))
    return InputCheck(input=src, size=size, crs=str(lc.crs) if lc.crs else None, resolution=work.resolution,
                      classes=list(class_shares(work.codes, work.valid)), legend=legend.name if legend else None,
                      windows=len(windows_for(*padded.shape, sampling.tile, sampling.overlap)))


def _seconds_per_window_step(out_dir: Path) -> float | None:
    """This machine's measured pace: the sidecars of earlier runs into the same folder."""
    work = seconds = 0.0
    for sidecar in out_dir.glob(f"*.tif{SIDECAR_SUFFIX}"):
        try:
            record = json.loads(sidecar.read_text(encoding="utf-8"))
            work += float(record["windows"]) * float(record["steps"])
            seconds += float(record["seconds"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return seconds / work if work > 0 else None


def check_table(result: InferResult, steps: int, pace: float | None) -> str:
    """The dry run's table: what each input is and what it will cost."""
    rows = [("file", "size (px)", "CRS", "resolution", "classes", "windows", "estimate")]
    for c in result.checked:
        estimate = f"~{c.windows * steps * pace:.0f} s" if pace else "unknown (no earlier run here)"
        rows.append((c.input.name, f"{c.size[0]}x{c.size[1]}", c.crs or "-", f"{c.resolution:g}",
                     ", ".join(c.classes[:4]) + (f" (+{len(c.classes) - 4})" if len(c.classes) > 4 else ""),
                     str(c.windows), estimate))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines += [f"already finished (skipped): {p}" for p in result.skipped]
    lines += [f"FAILED: {reason}" for reason in result.failed.values()]
    return "\n".join(lines)


def _finish(result: InferResult, out_dir: Path, state: Any, total: int) -> InferResult:
    """Write the run's report (done, skipped, failed with reasons); raise when an input failed."""
    report = {"done": [str(p) for p in result.outputs], "skipped_finished": [str(p) for p in result.skipped],
              "failed": result.failed, "inputs": total}
    name = "report.json" if state.num_processes == 1 else f"report-{state.process_index}.json"
    result.report = write_json(out_dir / name, report)
    summary = (f"{len(result.outputs)} done, {len(result.skipped)} skipped (already finished), "
               f"{len(result.failed)} failed")
    log.info("infer: %s -> %s", summary, result.report)
    if result.failed:
        first, reason = next(iter(result.failed.items()))
        raise BatchError(f"{summary} of {total} inputs; first: {reason.rstrip('.')}; see {result.report}", report)
    return result


def run(cfg: DictConfig, model: LoadedModel | None = None) -> InferResult:
    """Generate every input not finished yet; returns what was written, skipped and checked.

    Every input is read and checked before the model loads; a bad input in a batch is reported
    and skipped while the others are generated, and the run ends with `report.json` and a
    `BatchError` if any failed (a single input raises its own error). `check=true` stops after
    the checks and prints a table. `model` reuses a loaded model (the app's shared one).
    """
    from tqdm.auto import tqdm

    # 1. Inputs, this process's share, what is left to do.
    state = process_state()
    files = find_inputs(str(cfg.input))[state.process_index::state.num_processes]
    out_dir = Path(cfg.output_dir)
    if cfg.edit.image and len(files) != 1:
        raise Seg2SatError(f"edit.image takes one land-cover input, got {len(files)}")
    result = InferResult()
    todo = []
    for src in files:
        paths = output_paths(out_dir, src)
        if is_finished(paths) and not cfg.overwrite:
            result.skipped.append(paths["tif"])
        else:
            todo.append((src, paths))
    if not todo:
        log.info("infer: all %d outputs already finished in %s", len(files), out_dir)
        return result
    # 2. Check every input before the model loads; a batch skips (and reports) bad ones.
    legend = load_legend(cfg.get("legend"), cfg.get("legend_file"))
    settings = Sampling.from_config(cfg, model or peek_model(str(cfg.model_path)))
    good = []
    for src, paths in todo:
        try:
            result.checked.append(check_input(cfg, src, legend, settings))
            good.append((src, paths))
        except Seg2SatError as exc:
            if len(files) == 1:
                raise
            result.failed[str(src)] = str(exc)
            log.warning("infer: skipping %s", exc)
    if cfg.check:
        print(check_table(result, settings.steps, _seconds_per_window_step(out_dir)))
        if result.failed:
            raise BatchError(f"{len(result.failed)} of {len(files)} inputs would fail (listed above)")
        return result
    out_dir.mkdir(parents=True, exist_ok=True)
    # 3. Model, once.
    t0 = time.perf_counter()
    if good and model is None:
        model = load_model(cfg, *resolve_device_dtype(str(cfg.device), str(cfg.dtype)))
        settings = Sampling.from_config(cfg, model)  # a hub model's tile is known once loaded
    result.seconds["load"] = round(time.perf_counter() - t0, 2)
    # 4. Files, one after the other; windows inside a file are batched.
    for src, paths in tqdm(good, desc="files", disable=not state.is_main_process or len(good) < 2):
        t0 = time.perf_counter()
        bar = tqdm(desc=src.name, unit="win", leave=False, disable=not state.is_main_process)

        def progress(done: int, total: int, bar: Any = bar) -> None:
            bar.total = total
            bar.n = done
            bar.refresh()

        try:
            record = (edit_file(cfg, model, settings, src, paths, legend) if cfg.edit.image
                      else generate_file(cfg, model, settings, src, paths, legend, progress))
        except Seg2SatError as exc:
            if len(files) == 1:
                raise
            result.failed[str(src)] = str(exc)
            log.warning("infer: %s", exc)
            continue
        finally:
            bar.close()
        record["seconds"] = round(time.perf_counter() - t0, 2)
        record["process"] = f"{state.process_index}/{state.num_processes}"
        write_json(paths["json"], record)
        result.outputs.append(paths["tif"])
        result.windows += int(record.get("windows", 0))
        result.seconds[src.name] = record["seconds"]
        log.info("infer: %s -> %s (%.1f s)", src, paths["tif"], record["seconds"])
    # 5. The report, and an error if anything failed.
    return _finish(result, out_dir, state, len(files))
