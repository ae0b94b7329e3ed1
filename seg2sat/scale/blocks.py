"""Country scale: one seamless georeferenced mosaic cut into blocks, generated block-parallel.

Design (docs/scale.md has the measurements behind it):
- The output grid is fixed by CRS, resolution and an origin snapped to a global lattice of
  `block` pixels (pixel (0, 0) of the lattice is the CRS origin), so the same place always
  falls in the same block and draws the same noise, whatever the extent of the run.
- Each block is generated over its core plus a `halo` on every side (one tiled generation,
  `tiling.generate_tiled` with `origin=` its global position, so the halos of two neighbours
  start from the same noise and the same land cover). The raw block (core + halo) is kept.
- A block is composed once its neighbours are generated: across each border the two raw
  generations are cross-faded over the 2 x halo band they share (`seam=blend`, chosen by
  measurement), or the core is cut out as it is (`seam=crop`). The composed core is a COG
  (with overviews and a nodata mask), written atomically, with a JSON sidecar.
- A VRT over the finished block COGs is the mosaic: one layer in the input's CRS.
- The manifest (SQLite, one row per block: id, bounds, state, attempts, seconds, outputs,
  checksums, error) is written at planning; a rerun verifies finished blocks by checksum and
  does only the rest. Work goes to `engine=local` (in-process) or `engine=ray` (one actor per
  device holding the pipeline; Ray restarts dead actors and retries their blocks).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

import numpy as np

from seg2sat.atomic import sha256_of, sweep_tmp, write_json, write_text
from seg2sat.errors import RasterError
from seg2sat.geo.stac import AssetFile, Provenance, item_path, raster_item, write_item
from seg2sat.scale.grid import Grid, block_id
from seg2sat.scale.manifest import Manifest
from seg2sat.scale.sources import Sources, read_codes

log = logging.getLogger(__name__)

VRT_NAME = "mosaic.vrt"
GTI_NAME = "mosaic.gti.gpkg"
RAW_DIR = "raw"
BLOCKS_DIR = "blocks"


# ---------------------------------------------------------------------------------------------
# One block: generate (core + halo), compose (cross-fade with neighbours), write
# ---------------------------------------------------------------------------------------------


def _fault_hook(job: dict[str, Any], bid: str) -> Callable[[int, int], None] | None:
    """`fault.kill_block`: SIGKILL this process once, mid-block (the kill tests' real failure path)."""
    fault = job.get("fault") or {}
    if fault.get("kill_block") != bid:
        return None
    marker = Path(job["out_dir"]) / f".killed-{bid}"

    def hook(done: int, total: int) -> None:
        if done >= max(1, total // 3) and not marker.exists():
            marker.write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)

    return hook


def generate_block(pipe: Any, job: dict[str, Any], row: int, col: int) -> dict[str, Any]:
    """Generate a block's core + halo into `raw/<id>.tif` (atomic); returns the manifest fields."""
    from rasterio.windows import Window as RioWindow

    from seg2sat.generation.tiling import generate_tiled
    from seg2sat.geo.geotiff import open_geotiff_writer

    t0 = time.perf_counter()
    grid = Grid(**job["grid"])
    sources = Sources(**job["sources"])
    bid = block_id(row, col)
    # 1. Land cover over core + halo; a block with no valid pixel in its core is empty.
    er0, ec0, er1, ec1 = grid.ext(row, col)
    codes, valid = read_codes(sources, grid, (er0, ec0, er1, ec1))
    cr0, cc0, cr1, cc1 = grid.core(row, col)
    if not valid[cr0 - er0:cr1 - er0, cc0 - ec0:cc1 - ec0].any():
        return {"state": "empty", "seconds": round(time.perf_counter() - t0, 3), "windows": 0}
    # 2. One tiled generation at the block's global position, rows streamed to the raw GeoTIFF.
    raw = Path(RAW_DIR) / f"{bid}.tif"
    h, w = codes.shape
    with open_geotiff_writer(Path(job["out_dir"]) / raw, w, h, 3, "uint8", grid.crs,
                             grid.window_transform(er0, ec0)) as writer:
        def write_rows(r: int, rgb: np.ndarray) -> None:
            win = RioWindow(0, r, w, rgb.shape[0])
            writer.write(np.moveaxis(rgb, -1, 0), win)
            writer.write_mask(valid[r:r + rgb.shape[0]].astype(np.uint8) * 255, win)

        result = generate_tiled(pipe, codes, job["prompt"], write_rows, progress=_fault_hook(job, bid),
                                origin=(grid.row0 + er0, grid.col0 + ec0), **job["sampling"])
    return {"state": "generated", "raw": str(raw), "raw_sha256": sha256_of(Path(job["out_dir"]) / raw),
            "windows": result.windows, "seconds": round(time.perf_counter() - t0, 3), "error": None}


def block_provenance(job: dict[str, Any]) -> Provenance:
    """What made the blocks of a mosaic (and the mosaic): one model, prompt and seed for all."""
    cfg = job.get("cfg") or {}
    paths = job["sources"]["paths"]
    return Provenance(model=str(cfg.get("model_path")), landcover=", ".join(map(str, paths)) or None,
                      prompt=job["prompt"], seed=job["sampling"].get("seed"), software=job.get("software") or {},
                      legend=", ".join(sorted({str(lg["name"]) for lg in job["sources"].get("legends") or [] if lg})) or None)


def axis_weight(n: int, start: int, core0: int, core1: int, length: int, halo: int) -> np.ndarray:
    """Cross-fade weights of one block along one axis, at grid positions start..start+n.

    1 inside the core away from its borders; across each border shared with a neighbour the
    weight ramps linearly over [border - halo, border + halo), so two neighbours' weights sum
    to 1 there. Grid edges have no neighbour: full weight up to the edge.
    """
    x = np.arange(start, start + n, dtype=np.float64) + 0.5
    w = np.ones(n)
    if halo == 0:
        return ((x >= core0) & (x < core1)).astype(np.float64)
    if core0 > 0:
        w = np.minimum(w, np.clip((x - (core0 - halo)) / (2 * halo), 0, 1))
    if core1 < length:
        w = np.minimum(w, np.clip(((core1 + halo) - x) / (2 * halo), 0, 1))
    return w


def compose_block(job: dict[str, Any], row: int, col: int, neighbours: dict[str, str]) -> dict[str, Any]:
    """The block's final core from its raw generation and its neighbours' (`blocks/<id>.tif`, COG).

    `neighbours` maps the ids of generated blocks around (and including) this one to their raw
    files. With `seam=crop` only the block's own raw pixels are used.
    """
    import rasterio
    from rasterio.windows import Window as RioWindow

    from seg2sat.geo.geotiff import open_geotiff_writer

    t0 = time.perf_counter()
    grid = Grid(**job["grid"])
    out_dir = Path(job["out_dir"])
    bid = block_id(row, col)
    r0, c0, r1, c1 = grid.core(row, col)
    acc = np.zeros((r1 - r0, c1 - c0, 3), np.float64)
    wsum = np.zeros((r1 - r0, c1 - c0, 1), np.float64)
    mask = None
    halo = grid.halo if job["seam"] == "blend" else 0
    # 1. Accumulate each generated neighbour's raw pixels over the part of this core it covers.
    for dr in (-1, 0, 1):
        for dc in (-1, 0, 1):
            nid = block_id(row + dr, col + dc)
            if nid not in neighbours or (halo == 0 and (dr, dc) != (0, 0)):
                continue
            er0, ec0, er1, ec1 = grid.ext(row + dr, col + dc)
            ir0, ic0, ir1, ic1 = max(r0, er0), max(c0, ec0), min(r1, er1), min(c1, ec1)
            if ir1 <= ir0 or ic1 <= ic0:
                continue
            nr0, nc0, nr1, nc1 = grid.core(row + dr, col + dc)
            wy = axis_weight(ir1 - ir0, ir0, nr0, nr1, grid.height, halo)
            wx = axis_weight(ic1 - ic0, ic0, nc0, nc1, grid.width, halo)
            wgt = np.outer(wy, wx)[..., None]
            if not wgt.any():
                continue
            with rasterio.open(out_dir / neighbours[nid]) as src:
                win = RioWindow(ic0 - ec0, ir0 - er0, ic1 - ic0, ir1 - ir0)
                pix = np.moveaxis(src.read([1, 2, 3], window=win), 0, -1).astype(np.float64)
                if (dr, dc) == (0, 0):
                    mask = src.read_masks(1, window=win)
            acc[ir0 - r0:ir1 - r0, ic0 - c0:ic1 - c0] += wgt * pix
            wsum[ir0 - r0:ir1 - r0, ic0 - c0:ic1 - c0] += wgt
    if mask is None:
        raise RasterError(f"block {bid}: its raw generation {neighbours.get(bid)} is missing")
    # 2. Normalise, mask nodata, write the COG (atomic), then its STAC item and sidecar.
    rgb = np.clip(np.rint(acc / np.maximum(wsum, 1e-12)), 0, 255).astype(np.uint8)
    rgb[mask == 0] = 0
    out = Path(BLOCKS_DIR) / f"{bid}.tif"
    tags = {"seg2sat_prompt": job["prompt"], "seg2sat_seed": str(job["sampling"]["seed"]), "seg2sat_block": bid}
    with open_geotiff_writer(out_dir / out, c1 - c0, r1 - r0, 3, "uint8", grid.crs, grid.window_transform(r0, c0),
                             cog=True, tags=tags) as writer:
        whole = RioWindow(0, 0, c1 - c0, r1 - r0)
        writer.write(np.moveaxis(rgb, -1, 0), whole)
        writer.write_mask(mask, whole)
    sha = _write_records(job, out, grid.bounds((r0, c0, r1, c1)), neighbours, bid)
    return {"state": "done", "output": str(out), "sha256": sha, "compose_seconds": round(time.perf_counter() - t0, 3)}


def _write_records(job: dict[str, Any], out: Path, bounds: Any, neighbours: dict[str, str], bid: str) -> str:
    """A block COG's STAC item, then its sidecar, last: the block's completion mark.

    The sidecar holds the checksums of the COG and its raw block, and the plan that made it.
    """
    out_dir = Path(job["out_dir"])
    sha = sha256_of(out_dir / out)
    item = raster_item(out_dir / out, block_provenance(job), item_id=bid, cog=True, title=f"Mosaic block {bid}",
                       assets={"metadata": AssetFile(out_dir / f"{out}.json", ("metadata",), "Block sidecar")})
    write_item(item, item_path(out_dir / out), out_dir)
    write_json(out_dir / f"{out}.json", {"block": bid, "bounds": bounds, "sha256": sha, "raw": neighbours[bid],
                                         "raw_sha256": sha256_of(out_dir / neighbours[bid]), "plan": job.get("plan"),
                                         "neighbours": sorted(neighbours), "seam": job["seam"],
                                         "halo": job["grid"]["halo"], "prompt": job["prompt"], **job["sampling"]},
               durable=True)
    return sha


# ---------------------------------------------------------------------------------------------
# The mosaic: a VRT over the block COGs
# ---------------------------------------------------------------------------------------------


def write_vrt(out_dir: Path, grid: Grid, blocks: list[dict[str, Any]]) -> Path:
    """`mosaic.vrt`: the finished block COGs as one 3-band layer with a mask (atomic).

    Missing blocks (failed, empty, not yet done) read as masked nodata: a hole is never filled
    with something that looks generated. The blocks' internal overviews serve as the VRT's
    (GDAL's implicit VRT overviews).
    """
    t = grid.transform
    b = grid.block

    def sources(band: str) -> str:
        parts = []
        for row in blocks:
            r0, c0, r1, c1 = grid.core(row["row"], row["col"])
            parts.append(f'    <SimpleSource><SourceFilename relativeToVRT="1">{escape(row["output"])}</SourceFilename>'
                         f"<SourceBand>{band}</SourceBand>"
                         f'<SrcRect xOff="0" yOff="0" xSize="{b}" ySize="{b}"/>'
                         f'<DstRect xOff="{c0}" yOff="{r0}" xSize="{c1 - c0}" ySize="{r1 - r0}"/></SimpleSource>')
        return "\n".join(parts)

    colours = ("Red", "Green", "Blue")
    bands = "\n".join(f'  <VRTRasterBand dataType="Byte" band="{i}">\n    <ColorInterp>{colours[i - 1]}</ColorInterp>\n'
                      f"{sources(str(i))}\n  </VRTRasterBand>" for i in (1, 2, 3))
    mask = (f'  <MaskBand>\n  <VRTRasterBand dataType="Byte">\n{sources("mask,1")}\n  </VRTRasterBand>\n'
            "  </MaskBand>")
    xml = (f'<VRTDataset rasterXSize="{grid.width}" rasterYSize="{grid.height}">\n'
           f"  <SRS>{escape(grid.crs)}</SRS>\n"
           f"  <GeoTransform>{t.c!r}, {t.a!r}, 0.0, {t.f!r}, 0.0, {t.e!r}</GeoTransform>\n"
           f"{mask}\n{bands}\n</VRTDataset>\n")
    return write_text(out_dir / VRT_NAME, xml)


def write_gti(out_dir: Path, grid: Grid, blocks: list[dict[str, Any]]) -> Path:
    """`mosaic.gti.gpkg`: GDAL's GTI tile index over the same block COGs (GDAL >= 3.9), atomically.

    One row (footprint, relative path) per finished block: the form that scales to a country,
    where a VRT lists ~460,000 sources in XML. Opens as one raster (driver GTI) with the grid's
    extent, resolution and the blocks' masks.
    """
    import geopandas as gpd
    import pyogrio
    from shapely.geometry import box

    from seg2sat.atomic import atomic_path

    t = grid.transform
    rows = [{"location": r["output"], "geometry": box(*grid.bounds(grid.core(r["row"], r["col"])))} for r in blocks]
    gdf = gpd.GeoDataFrame(rows, columns=["location", "geometry"], geometry="geometry", crs=grid.crs)
    # the exact grid (size + geotransform), not bounds a rounding could grow by one pixel
    meta = {"XSIZE": str(grid.width), "YSIZE": str(grid.height),
            "GEOTRANSFORM": f"{t.c!r},{t.a!r},0,{t.f!r},0,{t.e!r}", "BAND_COUNT": "3", "DATA_TYPE": "Byte", "COLOR_INTERPRETATION": "Red,Green,Blue",
            "MASK_BAND": "YES", "LOCATION_FIELD": "location", "SRS": grid.crs}
    path = out_dir / GTI_NAME
    with atomic_path(path) as tmp:
        pyogrio.write_dataframe(gdf, tmp, layer="tiles", driver="GPKG", layer_metadata=meta)
    return path


def adopt(manifest: Manifest, out_dir: Path, plan_id: str) -> int:
    """Blocks a rebuilt manifest takes back from their sidecars; returns how many.

    A composed block is adopted when its sidecar reads whole, was made by this plan, and the
    checksums it holds match both its COG and its raw generation; anything else is redone.
    """
    adopted = 0
    for row in manifest.blocks(["pending"], columns="id"):
        side = out_dir / BLOCKS_DIR / f"{row['id']}.tif.json"
        try:
            rec = json.loads(side.read_text(encoding="utf-8"))
            output, raw = Path(BLOCKS_DIR) / f"{row['id']}.tif", Path(str(rec["raw"]))
            ok = (rec["plan"] == plan_id and sha256_of(out_dir / output) == rec["sha256"]
                  and sha256_of(out_dir / raw) == rec["raw_sha256"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if ok:
            manifest.update(row["id"], state="done", output=str(output), sha256=rec["sha256"], raw=str(raw),
                            raw_sha256=rec["raw_sha256"])
            adopted += 1
    return adopted


def sweep(out_dir: Path) -> int:
    """Remove temp files a killed run left (raw and block folders)."""
    return sum(sweep_tmp(out_dir / d) for d in (RAW_DIR, BLOCKS_DIR, ".")) if out_dir.exists() else 0
