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

import contextlib
import hashlib
import json
import logging
import math
import os
import signal
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

import numpy as np
from affine import Affine

from seg2sat.atomic import sweep_tmp, write_json, write_text
from seg2sat.errors import ConfigError, RasterError

log = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.sqlite"
VRT_NAME = "mosaic.vrt"
GTI_NAME = "mosaic.gti.gpkg"
RAW_DIR = "raw"
BLOCKS_DIR = "blocks"
STATES = ("pending", "running", "generated", "empty", "done", "failed")
# Blocks whose generation is final: a neighbour may be composed against them.
_GENERATED = ("generated", "done")


# ---------------------------------------------------------------------------------------------
# Grid and blocks
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Grid:
    """The output grid on a global lattice: pixel (row, col) has its top-left at (col*res, -row*res).

    `row0`, `col0` are the lattice indices of the grid's top-left pixel (multiples of `block`);
    `width` and `height` are whole blocks.
    """

    crs: str
    res: float
    row0: int
    col0: int
    width: int
    height: int
    block: int
    halo: int

    @property
    def transform(self) -> Affine:
        """North-up transform of the whole grid."""
        return Affine(self.res, 0, self.col0 * self.res, 0, -self.res, -self.row0 * self.res)

    @property
    def rows(self) -> int:
        """Blocks down."""
        return self.height // self.block

    @property
    def cols(self) -> int:
        """Blocks across."""
        return self.width // self.block

    def window_transform(self, r0: int, c0: int) -> Affine:
        """Transform of a window whose top-left is grid pixel (r0, c0)."""
        return self.transform * Affine.translation(c0, r0)

    def core(self, row: int, col: int) -> tuple[int, int, int, int]:
        """(r0, c0, r1, c1) grid pixels of a block's core."""
        b = self.block
        return row * b, col * b, (row + 1) * b, (col + 1) * b

    def ext(self, row: int, col: int) -> tuple[int, int, int, int]:
        """The core grown by the halo, clipped to the grid."""
        r0, c0, r1, c1 = self.core(row, col)
        h = self.halo
        return max(0, r0 - h), max(0, c0 - h), min(self.height, r1 + h), min(self.width, c1 + h)

    def bounds(self, window: tuple[int, int, int, int]) -> tuple[float, float, float, float]:
        """(xmin, ymin, xmax, ymax) of a (r0, c0, r1, c1) window."""
        r0, c0, r1, c1 = window
        x0, y0 = self.transform * (c0, r0)
        x1, y1 = self.transform * (c1, r1)
        return x0, y1, x1, y0

    def to_dict(self) -> dict[str, Any]:
        """Plain values (stored in the manifest, sent to workers)."""
        return asdict(self)


def block_id(row: int, col: int) -> str:
    """Stable block name: `r00012_c00034`."""
    return f"r{row:05d}_c{col:05d}"


def plan_grid(bounds: tuple[float, float, float, float], crs: str, res: float, block: int, halo: int,
              tile: int) -> Grid:
    """The grid of whole blocks on the global lattice covering `bounds` (CRS units).

    Raises:
        ConfigError: a block or halo that is not a multiple of the tile, or empty bounds.
    """
    if block % tile or halo % tile or block < tile:
        raise ConfigError(f"block={block} and halo={halo} must be multiples of the tile {tile} (block >= tile): "
                          "the noise is drawn per tile at global positions")
    if halo > block:
        raise ConfigError(f"halo={halo} is larger than block={block}: a halo reaches one neighbour only")
    xmin, ymin, xmax, ymax = bounds
    if not (xmax > xmin and ymax > ymin):
        raise ConfigError(f"empty extent {bounds}")
    size = res * block
    bc0, bc1 = math.floor(xmin / size + 1e-9), math.ceil(xmax / size - 1e-9)
    br0, br1 = math.floor(-ymax / size + 1e-9), math.ceil(-ymin / size - 1e-9)
    return Grid(crs=crs, res=float(res), row0=br0 * block, col0=bc0 * block, width=(bc1 - bc0) * block,
                height=(br1 - br0) * block, block=int(block), halo=int(halo))


# ---------------------------------------------------------------------------------------------
# Manifest (SQLite)
# ---------------------------------------------------------------------------------------------

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS blocks (
    id TEXT PRIMARY KEY, row INTEGER NOT NULL, col INTEGER NOT NULL,
    xmin REAL, ymin REAL, xmax REAL, ymax REAL,
    state TEXT NOT NULL DEFAULT 'pending', attempts INTEGER NOT NULL DEFAULT 0, seconds REAL,
    windows INTEGER, raw TEXT, raw_sha256 TEXT, output TEXT, sha256 TEXT, error TEXT);
CREATE INDEX IF NOT EXISTS blocks_state ON blocks(state);
"""


class Manifest:
    """One row per block; the driver is its only writer (workers return records)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, timeout=60)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        """Close the database."""
        self._db.close()

    def get_meta(self, key: str) -> Any:
        """A JSON value stored at planning (None if absent)."""
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    def set_meta(self, **values: Any) -> None:
        """Store JSON values."""
        with self._db:
            self._db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)",
                                 [(k, json.dumps(v, default=str)) for k, v in values.items()])

    def add_blocks(self, grid: Grid, chunk: int = 50_000) -> int:
        """Insert every block of `grid` (streamed in chunks: memory stays bounded)."""
        def rows() -> Iterator[tuple[Any, ...]]:
            for r in range(grid.rows):
                for c in range(grid.cols):
                    yield (block_id(r, c), r, c, *grid.bounds(grid.core(r, c)))

        n = 0
        it = rows()
        while True:
            batch = [row for _, row in zip(range(chunk), it, strict=False)]
            if not batch:
                return n
            with self._db:
                self._db.executemany("INSERT OR IGNORE INTO blocks (id, row, col, xmin, ymin, xmax, ymax) "
                                     "VALUES (?, ?, ?, ?, ?, ?, ?)", batch)
            n += len(batch)

    def blocks(self, states: Iterable[str] | None = None, columns: str = "*") -> list[dict[str, Any]]:
        """Rows (as dicts), row-major, optionally only in `states` and only some `columns`."""
        cur = self._db.execute(f"SELECT {columns} FROM blocks" + (
            f" WHERE state IN ({','.join('?' * len(s))})" if (s := list(states or [])) else "") + " ORDER BY row, col",
            s)
        names = [d[0] for d in cur.description]
        return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]

    def counts(self) -> dict[str, int]:
        """Blocks per state."""
        return dict(self._db.execute("SELECT state, COUNT(*) FROM blocks GROUP BY state").fetchall())

    def update(self, bid: str, **fields: Any) -> None:
        """Set some columns of one block."""
        cols = ", ".join(f"{k} = ?" for k in fields)
        with self._db:
            self._db.execute(f"UPDATE blocks SET {cols} WHERE id = ?", [*fields.values(), bid])

    def bump_attempts(self, bid: str) -> None:
        """Count one more attempt at a block and mark it running."""
        with self._db:
            self._db.execute("UPDATE blocks SET attempts = attempts + 1, state = 'running' WHERE id = ?", (bid,))


def sha256_of(path: str | Path) -> str:
    """Hex SHA-256 of a file (read in 1 MiB chunks)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify(manifest: Manifest, out_dir: Path) -> dict[str, int]:
    """Check finished blocks by checksum; anything missing, changed or half-done is redone.

    A block killed while running goes back to pending; a composed block whose COG is gone or
    differs goes back to `generated` (or pending if its raw block is bad too).
    """
    fixed = {"kept": 0, "redo": 0}
    for row in manifest.blocks(["running", "generated", "done"]):
        raw_ok = bool(row["raw"]) and _same(out_dir / row["raw"], row["raw_sha256"])
        if row["state"] == "done" and _same(out_dir / str(row["output"]), row["sha256"]) and raw_ok:
            fixed["kept"] += 1
            continue
        state = "generated" if raw_ok and row["state"] != "running" else "pending"
        if state == "pending":
            manifest.update(row["id"], state=state, raw=None, raw_sha256=None, output=None, sha256=None)
        else:
            manifest.update(row["id"], state=state, output=None, sha256=None)
        fixed["redo"] += 1
    return fixed


def _same(path: Path, sha: str | None) -> bool:
    return bool(sha) and path.is_file() and sha256_of(path) == sha


# ---------------------------------------------------------------------------------------------
# Inputs: land cover read a window at a time
# ---------------------------------------------------------------------------------------------


@dataclass
class Sources:
    """The land-cover inputs of a mosaic: rasters (a file, a folder, a glob, a VRT) or one vector layer."""

    paths: list[str]
    legends: list[dict[str, Any] | None]  # Legend fields per path, as plain values for workers
    kind: str  # "raster" | "vector"
    column: str = "class"
    unknown_to_other: bool = False


def find_sources(spec: str, legend: Any, column: str, unknown_to_other: bool) -> Sources:
    """Every input file, its legend resolved once (`legend=auto` recognises each product)."""
    from seg2sat.landcover import VECTOR_SUFFIXES, resolve_legend
    from seg2sat.stages.infer import find_inputs

    paths = find_inputs(spec)
    vectors = [p for p in paths if p.suffix.lower() in VECTOR_SUFFIXES]
    if vectors and len(vectors) != len(paths):
        raise RasterError(f"{spec}: mixes rasters and vector layers; give one kind")
    if len(vectors) > 1:
        raise RasterError(f"{spec}: {len(vectors)} vector layers; merge them into one (e.g. ogrmerge)")
    legends = []
    for p in paths:
        lg = legend if vectors else resolve_legend(p, legend)
        legends.append(None if lg is None or isinstance(lg, str) else asdict(lg))
    return Sources(paths=[str(p) for p in paths], legends=legends, kind="vector" if vectors else "raster",
                   column=column, unknown_to_other=unknown_to_other)


def _legend(fields: dict[str, Any] | None) -> Any:
    from seg2sat.landcover import Legend

    return None if fields is None else Legend(**fields)


def source_extent(sources: Sources, crs: str | None) -> tuple[str, tuple[float, float, float, float]]:
    """The CRS of the mosaic (`crs`, else the first input's) and the inputs' union bounds in it."""
    import pyogrio
    import rasterio
    from rasterio.crs import CRS
    from rasterio.warp import transform_bounds

    boxes, dst = [], CRS.from_user_input(crs) if crs else None
    for p in sources.paths:
        if sources.kind == "vector":
            info = pyogrio.read_info(p)
            src_crs, b = (CRS.from_user_input(info["crs"]) if info["crs"] else None), tuple(info["total_bounds"])
        else:
            with rasterio.open(p) as src:
                src_crs, b = src.crs, tuple(src.bounds)
        if src_crs is None:
            raise RasterError(f"{p}: no CRS; a mosaic needs georeferenced inputs")
        dst = dst or src_crs
        if dst.is_geographic:
            raise RasterError(f"{p}: CRS {dst.to_string()} is in degrees; pass a metric crs= (e.g. crs=EPSG:2154)")
        boxes.append(transform_bounds(src_crs, dst, *b) if src_crs != dst else b)
    arr = np.array(boxes, np.float64)
    return dst.to_wkt(), (float(arr[:, 0].min()), float(arr[:, 1].min()), float(arr[:, 2].max()), float(arr[:, 3].max()))


def read_codes(sources: Sources, grid: Grid, window: tuple[int, int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """FLAIR codes and validity on a (r0, c0, r1, c1) window of the grid."""
    r0, c0, r1, c1 = window
    return read_codes_at(sources, grid.crs, grid.window_transform(r0, c0), (r1 - r0, c1 - c0))


def read_codes_at(sources: Sources, crs: str, transform: Affine, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """FLAIR codes and validity on any north-up grid (nearest resampling; memory: that grid).

    Rasters are warped onto it one after the other (the first valid pixel wins); a vector
    layer is read within its bounds and burnt at its resolution.
    """
    from seg2sat.labels import OTHER_CODE

    h, w = shape
    codes = np.full((h, w), OTHER_CODE, np.uint8)
    valid = np.zeros((h, w), bool)
    if sources.kind == "vector":
        return _read_vector_window(sources, crs, transform, (h, w), codes, valid)
    import rasterio
    from rasterio.enums import Resampling
    from rasterio.vrt import WarpedVRT

    from seg2sat.landcover import map_values

    for p, lg_fields in zip(sources.paths, sources.legends, strict=True):
        legend = _legend(lg_fields)
        with rasterio.open(p) as src, WarpedVRT(src, crs=crs, transform=transform, width=w, height=h,
                                                resampling=Resampling.nearest, add_alpha=True) as vrt:
            if vrt.count != 2:
                raise RasterError(f"{p}: {src.count} bands; a mosaic input is one band of class values")
            values, inside = vrt.read(1), vrt.read(2) > 0
        if legend is not None and legend.nodata is not None:
            inside &= values != legend.nodata
        take = inside & ~valid
        if take.any():
            codes[take] = map_values(values, take, legend, Path(p), sources.unknown_to_other)[take]
            valid |= take
    return codes, valid


def _read_vector_window(sources: Sources, crs: str, transform: Affine, shape: tuple[int, int], codes: np.ndarray,
                        valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    import geopandas as gpd
    import pyogrio
    from rasterio.crs import CRS
    from rasterio.features import rasterize
    from rasterio.warp import transform_bounds

    from seg2sat.landcover import _vector_code

    path = sources.paths[0]
    legend = _legend(sources.legends[0])
    layer_crs = CRS.from_user_input(pyogrio.read_info(path)["crs"])
    x0, y1 = transform * (0, 0)
    x1, y0 = transform * (shape[1], shape[0])
    bbox = transform_bounds(CRS.from_user_input(crs), layer_crs, x0, y0, x1, y1)
    gdf = gpd.read_file(path, bbox=bbox)
    if len(gdf) == 0:
        return codes, valid
    gdf = gdf.to_crs(crs) if CRS.from_user_input(gdf.crs) != CRS.from_user_input(crs) else gdf
    if sources.column not in gdf.columns:
        raise RasterError(f"{path}: no class column {sources.column!r}")
    values = [_vector_code(v, legend, Path(path), sources.column, sources.unknown_to_other)
              for v in gdf[sources.column].tolist()]
    burnt = rasterize(zip(gdf.geometry, values, strict=True), out_shape=shape, transform=transform, fill=0,
                      dtype="uint8")
    valid = burnt > 0
    return np.where(valid, burnt, codes).astype(np.uint8), valid


def overview_codes(sources: Sources, grid: Grid, max_side: int = 1024) -> tuple[np.ndarray, np.ndarray, Affine]:
    """The whole extent's codes decimated to <= max_side pixels (for the one prompt of the run)."""
    scale = max(1, math.ceil(max(grid.width, grid.height) / max_side))
    h, w = -(-grid.height // scale), -(-grid.width // scale)
    t = grid.transform * Affine.scale(scale)
    codes, valid = read_codes_at(sources, grid.crs, t, (h, w))
    return codes, valid, t


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

    from seg2sat.raster import open_geotiff_writer
    from seg2sat.tiling import generate_tiled

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

    from seg2sat.raster import open_geotiff_writer

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
    # 2. Normalise, mask nodata, write the COG (atomic), then its sidecar.
    rgb = np.clip(np.rint(acc / np.maximum(wsum, 1e-12)), 0, 255).astype(np.uint8)
    rgb[mask == 0] = 0
    out = Path(BLOCKS_DIR) / f"{bid}.tif"
    tags = {"seg2sat_prompt": job["prompt"], "seg2sat_seed": str(job["sampling"]["seed"]), "seg2sat_block": bid}
    with open_geotiff_writer(out_dir / out, c1 - c0, r1 - r0, 3, "uint8", grid.crs, grid.window_transform(r0, c0),
                             cog=True, tags=tags) as writer:
        whole = RioWindow(0, 0, c1 - c0, r1 - r0)
        writer.write(np.moveaxis(rgb, -1, 0), whole)
        writer.write_mask(mask, whole)
    sha = sha256_of(out_dir / out)
    write_json(out_dir / f"{out}.json", {"block": bid, "bounds": grid.bounds((r0, c0, r1, c1)), "sha256": sha,
                                         "neighbours": sorted(neighbours), "seam": job["seam"], "halo": grid.halo,
                                         "prompt": job["prompt"], **job["sampling"]})
    return {"state": "done", "output": str(out), "sha256": sha, "compose_seconds": round(time.perf_counter() - t0, 3)}


def neighbour_ids(grid: Grid, row: int, col: int) -> list[str]:
    """This block and the up to 8 around it."""
    return [block_id(row + dr, col + dc) for dr in (-1, 0, 1) for dc in (-1, 0, 1)
            if 0 <= row + dr < grid.rows and 0 <= col + dc < grid.cols]


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


def sweep(out_dir: Path) -> int:
    """Remove temp files a killed run left (raw and block folders)."""
    return sum(sweep_tmp(out_dir / d) for d in (RAW_DIR, BLOCKS_DIR, ".")) if out_dir.exists() else 0


@contextlib.contextmanager
def opened(path: Path) -> Iterator[Manifest]:
    """A manifest, closed after use."""
    m = Manifest(path)
    try:
        yield m
    finally:
        m.close()


def check_ray() -> Any:
    """Import Ray (optional extra) or say how to install it."""
    try:
        import ray
    except ImportError as exc:
        raise ConfigError('engine=ray needs Ray, an optional extra: pip install "seg2sat[ray]"') from exc
    return ray
