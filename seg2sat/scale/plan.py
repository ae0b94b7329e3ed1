"""Planning a mosaic: its grid, its blocks in the manifest, its one prompt, the job every worker gets.

Also the dry run's estimate of what is left, in window-steps and GPU-hours.

A mosaic is made with one set of settings: the plan is stored in the manifest at the first run,
and a rerun with other settings into the same folder is refused rather than mixed.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from seg2sat.errors import ConfigError
from seg2sat.generation.files import SIDECAR_BYTES, prompt_for, versions
from seg2sat.generation.models import peek_model
from seg2sat.generation.sampling import PromptSpec, Sampling
from seg2sat.generation.windows import windows_for
from seg2sat.geo.geotiff import geotiff_bytes
from seg2sat.geo.landcover import LandCover
from seg2sat.geo.legends import load_legend
from seg2sat.scale.grid import Grid, plan_grid
from seg2sat.scale.manifest import Manifest
from seg2sat.scale.sources import Sources, find_sources, overview_codes, source_extent


def _prompt(spec: PromptSpec, sources: Sources, grid: Grid) -> str:
    """The run's one prompt (neighbouring blocks must share it, or their halos disagree)."""
    from rasterio.crs import CRS

    if spec.text:
        return spec.text
    codes, valid, transform = overview_codes(sources, grid)
    return prompt_for(spec, LandCover(codes, valid, CRS.from_user_input(grid.crs), transform, Path(sources.paths[0])))


def _fingerprint(plan: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(plan, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _sources(cfg: DictConfig) -> tuple[Sources, str, tuple[float, float, float, float]]:
    """The inputs with their CRS and union bounds, or an empty source over `extent` (plan only)."""
    if cfg.input is None and cfg.extent is None:
        raise ConfigError("mosaic needs input= (land cover) or extent=[xmin,ymin,xmax,ymax] with crs= (plan only)")
    if cfg.input is not None:
        sources = find_sources(str(cfg.input), load_legend(cfg.get("legend"), cfg.get("legend_file")),
                               str(cfg.class_column), bool(cfg.unknown_to_other))
        crs, bounds = source_extent(sources, cfg.crs)
        return sources, crs, bounds
    from rasterio.crs import CRS

    if not cfg.crs:
        raise ConfigError("extent= needs crs= (e.g. crs=EPSG:2154)")
    return (Sources(paths=[], legends=[], kind="raster"), CRS.from_user_input(cfg.crs).to_wkt(),
            tuple(float(v) for v in cfg.extent))


def _check_same_plan(manifest: Manifest, settings: dict[str, Any]) -> None:
    stored = manifest.get_meta("settings")
    if stored is not None and _fingerprint(stored) != _fingerprint(settings):
        changed = sorted(k for k in settings if json.dumps(settings[k], sort_keys=True, default=str)
                         != json.dumps(stored.get(k), sort_keys=True, default=str))
        raise ConfigError(f"{manifest.path}: planned with other settings ({', '.join(changed)} differ); "
                          "a mosaic is made with one set of settings: use a new output_dir")


def plan(cfg: DictConfig, manifest: Manifest) -> tuple[Grid, dict[str, Any]]:
    """The grid and the job (what every worker needs), from the manifest or planned now.

    Raises:
        ConfigError: no input and no extent, or settings that differ from the plan already in
            `output_dir` (a mosaic is made with one set of settings; use another folder).
    """
    # 1. Inputs, model settings, the grid.
    sources, crs, bounds = _sources(cfg)
    if cfg.seam not in ("blend", "crop"):
        raise ConfigError(f"seam={cfg.seam}: blend or crop")
    model = peek_model(str(cfg.model_path))
    sampling = Sampling.from_config(cfg.sampling, model)
    grid = plan_grid(bounds, crs, float(cfg.work_resolution), int(cfg.block), int(cfg.halo), sampling.tile)
    # 2. The same settings as the stored plan, or a new plan (blocks, prompt) in the manifest.
    settings = {"grid": grid.to_dict(), "sampling": sampling.kwargs(), "seam": str(cfg.seam),
                "model": str(cfg.model_path), "base": cfg.base_model, "scheduler": str(cfg.sampling.scheduler),
                "lora": cfg.lora, "inputs": sources.paths, "prompt_cfg": OmegaConf.to_container(cfg.prompt)}
    _check_same_plan(manifest, settings)
    if manifest.get_meta("settings") is not None:
        prompt = manifest.get_meta("prompt")
    else:
        prompt = _prompt(PromptSpec.from_config(cfg.prompt, model), sources, grid) if sources.paths else ""
        manifest.add_blocks(grid)
        manifest.set_meta(settings=settings, prompt=prompt, planned=time.strftime("%Y-%m-%dT%H:%M:%S"))
    # 3. The job: plain values, sent as they are to every worker.
    job = {"grid": grid.to_dict(), "sources": vars(sources), "prompt": prompt, "sampling": sampling.kwargs(),
           "seam": str(cfg.seam), "out_dir": str(Path(cfg.output_dir).resolve()),
           "cfg": OmegaConf.to_container(cfg, resolve=True), "fault": OmegaConf.to_container(cfg.fault),
           "software": versions(), "plan": _fingerprint(settings)}
    return grid, job


def _windows(grid: Grid, tile: int, overlap: int) -> int:
    """Windows of all blocks (core + halo); block shapes repeat, so each is counted once."""
    cache: dict[tuple[int, int], int] = {}
    windows = 0
    for r in range(grid.rows):
        for c in range(grid.cols):
            er0, ec0, er1, ec1 = grid.ext(r, c)
            key = (er1 - er0, ec1 - ec0)
            if key not in cache:
                cache[key] = len(windows_for(key[0], key[1], tile, overlap))
            windows += cache[key]
    return windows


def estimate(cfg: DictConfig, grid: Grid, manifest: Manifest, steps: int, tile: int, overlap: int) -> dict[str, Any]:
    """Blocks, windows, window-steps and GPU-hours of what is left, at the measured pace if any."""
    counts = manifest.counts()
    timed = [r for r in manifest.blocks(["done", "generated"]) if r["seconds"] and r["windows"]]
    left = counts.get("pending", 0) + counts.get("running", 0) + counts.get("failed", 0)
    windows = _windows(grid, tile, overlap)
    per_block = windows / max(1, grid.rows * grid.cols)
    if timed:
        rate = sum(r["windows"] * steps for r in timed) / sum(r["seconds"] for r in timed)
        where = "measured here"
    else:
        rate, where = float(cfg.estimate.window_steps_per_s), str(cfg.estimate.device)
    todo_ws = per_block * left * steps
    return {"blocks": grid.rows * grid.cols, "counts": counts, "windows_total": windows,
            "windows_per_block": round(per_block, 1), "window_steps_left": round(todo_ws),
            "rate_window_steps_per_s": round(rate, 2), "rate_source": where,
            "gpu_hours_left": round(todo_ws / rate / 3600, 2),
            "km2": round(grid.width * grid.height * grid.res ** 2 / 1e6, 3)}


def output_bytes(grid: Grid, counts: dict[str, int]) -> int:
    """About what the blocks left take on disk before compression: raw generations, block COGs, sidecars."""
    ext = min(grid.block + 2 * grid.halo, grid.width) * min(grid.block + 2 * grid.halo, grid.height)
    raw = geotiff_bytes(1, ext, 3, "uint8")
    composed = geotiff_bytes(grid.block, grid.block, 3, "uint8", cog=True) + SIDECAR_BYTES
    to_generate = sum(counts.get(s, 0) for s in ("pending", "running", "failed"))
    return to_generate * (raw + composed) + counts.get("generated", 0) * composed + 3 * SIDECAR_BYTES


def table(grid: Grid, est: dict[str, Any]) -> str:
    """The dry run's summary."""
    from rasterio.crs import CRS

    crs = CRS.from_wkt(grid.crs)
    name = crs.to_string() if crs.to_epsg() is None else f"EPSG:{crs.to_epsg()}"
    x0, y0, x1, y1 = grid.bounds((0, 0, grid.height, grid.width))
    lines = [f"grid      {grid.width}x{grid.height} px at {grid.res:g} ({name}), bounds ({x0:.1f}, {y0:.1f}, "
             f"{x1:.1f}, {y1:.1f}), {est['km2']:g} km²",
             f"blocks    {est['blocks']} ({grid.rows}x{grid.cols}) of {grid.block} px + halo {grid.halo}; "
             + ", ".join(f"{k} {v}" for k, v in sorted(est["counts"].items())),
             f"windows   {est['windows_total']} ({est['windows_per_block']} per block)",
             f"estimate  {est['window_steps_left']} window-steps left = {est['gpu_hours_left']} GPU-hours at "
             f"{est['rate_window_steps_per_s']} window-steps/s ({est['rate_source']})"]
    return "\n".join(lines)
