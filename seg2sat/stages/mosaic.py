"""`seg2sat mosaic`: land cover of a whole territory -> one seamless georeferenced mosaic (VRT of COGs).

1. plan: the grid (CRS, resolution, origin on the global lattice), its blocks, the one prompt
   of the run, the manifest (SQLite) — or reopen the plan of an earlier run in `output_dir`;
2. verify: finished blocks are checked by checksum, temp files of killed runs removed (a damaged
   manifest is set aside and planned again, taking back the blocks their sidecars prove);
3. dry run (`check=true`): blocks, windows, estimated GPU-hours and disk space; nothing is
   loaded; a real run refuses a folder that is read-only or clearly short of space;
4. generate every pending block (core + halo) with `engine=local` or `engine=ray`, and compose
   each block (cross-fade with its neighbours) as soon as its neighbours are generated;
5. `mosaic.vrt` over the finished blocks, `run.json`, and exit status 1 if any block failed;
   a failed write (full disk) stops the run with a one-line error and counts against no block.
See `seg2sat/scale/` (blocks.py) for the design and docs/scale.md for the measurements.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from seg2sat.atomic import check_space, space_line, write_json
from seg2sat.errors import BatchError, ConfigError
from seg2sat.generation.files import versions
from seg2sat.scale import blocks
from seg2sat.scale.engines import ENGINES, MosaicResult, check_ray
from seg2sat.scale.grid import Grid
from seg2sat.scale.manifest import MANIFEST_NAME, Manifest, opened, verify
from seg2sat.scale.plan import estimate, output_bytes, plan, table

log = logging.getLogger(__name__)


def _write_run(cfg: DictConfig, manifest: Manifest, grid: Grid, job: dict[str, Any], result: MosaicResult,
               out_dir: Path, t0: float) -> tuple[list[dict[str, Any]], list[str]]:
    """The VRT and GTI over the finished blocks and `run.json`; returns (failed rows, waiting ids)."""
    done = manifest.blocks(["done"])
    result.vrt = blocks.write_vrt(out_dir, grid, done)
    result.gti = blocks.write_gti(out_dir, grid, done)
    result.counts = manifest.counts()
    failed = manifest.blocks(["failed"])
    result.failed = {r["id"]: str(r["error"]) for r in failed}
    waiting = [r["id"] for r in manifest.blocks(["generated", "pending", "running"])]
    result.seconds = round(time.perf_counter() - t0, 2)
    write_json(out_dir / "run.json", {
        "engine": str(cfg.engine), "grid": grid.to_dict(), "prompt": job["prompt"], "sampling": job["sampling"],
        "seam": job["seam"], "model": str(cfg.model_path), "counts": result.counts,
        "generated_this_run": len(result.generated), "composed_this_run": len(result.composed),
        "kept_verified": result.kept, "seconds": result.seconds,
        "failed": [{"id": r["id"], "bounds": [r["xmin"], r["ymin"], r["xmax"], r["ymax"]],
                    "attempts": r["attempts"], "error": r["error"]} for r in failed],
        "not_composed": waiting, "vrt": str(result.vrt), "gti": str(result.gti), "versions": versions()})
    return failed, waiting


def _report(result: MosaicResult, grid: Grid, out_dir: Path, failed: list[dict[str, Any]], waiting: list[str]) -> None:
    """Log the summary; raise a BatchError naming the first failure when a block failed or waits."""
    summary = (f"{result.counts.get('done', 0)} of {grid.rows * grid.cols} blocks done "
               f"({result.kept} verified and kept, {len(result.composed)} composed now), "
               f"{result.counts.get('empty', 0)} empty, {len(failed)} failed, {len(waiting)} waiting")
    log.info("mosaic: %s -> %s", summary, result.vrt)
    if failed or waiting:
        first = failed[0] if failed else None
        why = f"; first: {first['id']}: {first['error']}" if first else ""
        raise BatchError(f"{summary}{why}; the holes are masked in {result.vrt}; see {out_dir / 'run.json'}",
                         {"failed": result.failed, "waiting": waiting})


def run(cfg: DictConfig, pipe: Any = None) -> MosaicResult:
    """Plan (or resume) the mosaic, generate what is left, write the VRT; raise if a block failed.

    `pipe` reuses a loaded pipeline with `engine=local` (benchmarks); Ray actors load their own.
    """
    if cfg.engine not in ENGINES:
        raise ConfigError(f"engine={cfg.engine}: one of {', '.join(ENGINES)}")
    if cfg.engine == "ray":
        check_ray()
    out_dir = Path(cfg.output_dir)
    check_space(out_dir, 0)  # a folder we can write; its space is checked once the plan is known
    t0 = time.perf_counter()
    with opened(out_dir / MANIFEST_NAME) as manifest:
        # 1-2. Plan (a damaged manifest takes back what its sidecars prove), clear temp files, verify.
        grid, job = plan(cfg, manifest)
        result = MosaicResult(out_dir=out_dir, grid=grid, plan_seconds=round(time.perf_counter() - t0, 3))
        if manifest.rebuilt:
            log.info("mosaic: %d finished blocks taken back from their sidecars", blocks.adopt(manifest, out_dir, job["plan"]))
        blocks.sweep(out_dir)
        result.kept = verify(manifest, out_dir)["kept"]
        s = job["sampling"]
        # 3. Dry run; a real run refuses a folder clearly short of space for what is left.
        needed = output_bytes(grid, manifest.counts())
        result.table = "\n".join([table(grid, estimate(cfg, grid, manifest, s["steps"], s["tile"], s["overlap"])),
                                  space_line(out_dir, needed)])
        if cfg.check:
            print(result.table)
            result.counts = manifest.counts()
            return result
        check_space(out_dir, needed, probe=False)
        if not job["sources"]["paths"]:
            raise ConfigError("a mosaic without input= can only be planned (check=true)")
        # 4. Generate and compose.
        log.info("mosaic: %s", result.table.replace("\n", "; "))
        ENGINES[str(cfg.engine)](cfg, manifest, grid, job, result, pipe)
        if result.helper_rank:  # rank 0 composes and reports
            return result
        # 5. VRT, run record, summary.
        failed, waiting = _write_run(cfg, manifest, grid, job, result, out_dir, t0)
    _report(result, grid, out_dir, failed, waiting)
    return result
