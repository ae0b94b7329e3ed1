"""`seg2sat mosaic`: land cover of a whole territory -> one seamless georeferenced mosaic (VRT of COGs).

1. plan: the grid (CRS, resolution, origin on the global lattice), its blocks, the one prompt
   of the run, the manifest (SQLite) — or reopen the plan of an earlier run in `output_dir`;
2. verify: finished blocks are checked by checksum, temp files of killed runs removed;
3. dry run (`check=true`): blocks, windows and estimated GPU-hours; nothing is loaded;
4. generate every pending block (core + halo) with `engine=local` or `engine=ray`, and compose
   each block (cross-fade with its neighbours) as soon as its neighbours are generated;
5. `mosaic.vrt` over the finished blocks, `run.json`, and exit status 1 if any block failed.
See `seg2sat.scale` for the design and docs/scale.md for the measurements.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from seg2sat import scale
from seg2sat.atomic import write_json
from seg2sat.errors import BatchError, ConfigError
from seg2sat.scale import Grid, Manifest, block_id, neighbour_ids

log = logging.getLogger(__name__)
_FINAL = ("generated", "done", "empty")  # a neighbour in one of these states is settled


@dataclass
class MosaicResult:
    """What a run planned, did, skipped and could not do."""

    out_dir: Path
    grid: Grid
    counts: dict[str, int] = field(default_factory=dict)
    generated: list[str] = field(default_factory=list)
    composed: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    kept: int = 0
    vrt: Path | None = None
    gti: Path | None = None
    helper_rank: bool = False  # a rank of `accelerate launch` other than 0: generated its share only
    seconds: float = 0.0
    plan_seconds: float = 0.0
    table: str = ""


# ---------------------------------------------------------------------------------------------
# 1. Plan
# ---------------------------------------------------------------------------------------------


def _sampling(cfg: DictConfig) -> Any:
    from seg2sat.models import peek_model
    from seg2sat.sampling import Sampling

    return Sampling.from_config(cfg, peek_model(str(cfg.model_path)))


def _prompt(cfg: DictConfig, sources: scale.Sources, grid: Grid) -> str:
    """The run's one prompt (neighbouring blocks must share it, or their halos disagree)."""
    from rasterio.crs import CRS

    from seg2sat.landcover import LandCover
    from seg2sat.stages.infer import prompt_for

    if cfg.prompt.text:
        return str(cfg.prompt.text)
    codes, valid, transform = scale.overview_codes(sources, grid)
    return prompt_for(cfg, LandCover(codes, valid, CRS.from_user_input(grid.crs), transform, Path(sources.paths[0])))


def _fingerprint(plan: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(plan, sort_keys=True, default=str).encode()).hexdigest()[:16]


def plan(cfg: DictConfig, manifest: Manifest) -> tuple[Grid, dict[str, Any]]:
    """The grid and the job (what every worker needs), from the manifest or planned now.

    Raises:
        ConfigError: no input and no extent, or settings that differ from the plan already in
            `output_dir` (a mosaic is made with one set of settings; use another folder).
    """
    from seg2sat.stages.infer import load_legend

    sampling = _sampling(cfg)
    if cfg.input is None and cfg.extent is None:
        raise ConfigError("mosaic needs input= (land cover) or extent=[xmin,ymin,xmax,ymax] with crs= (plan only)")
    if cfg.input is not None:
        sources = scale.find_sources(str(cfg.input), load_legend(cfg.get("legend"), cfg.get("legend_file")),
                                     str(cfg.class_column), bool(cfg.unknown_to_other))
        crs, bounds = scale.source_extent(sources, cfg.crs)
    else:
        from rasterio.crs import CRS

        if not cfg.crs:
            raise ConfigError("extent= needs crs= (e.g. crs=EPSG:2154)")
        sources = scale.Sources(paths=[], legends=[], kind="raster")
        crs, bounds = CRS.from_user_input(cfg.crs).to_wkt(), tuple(float(v) for v in cfg.extent)
    if cfg.seam not in ("blend", "crop"):
        raise ConfigError(f"seam={cfg.seam}: blend or crop")
    grid = scale.plan_grid(bounds, crs, float(cfg.work_resolution), int(cfg.block), int(cfg.halo), sampling.tile)
    settings = {"grid": grid.to_dict(), "sampling": sampling.kwargs(), "seam": str(cfg.seam),
                "model": str(cfg.model_path), "base": cfg.base_model, "scheduler": str(cfg.scheduler),
                "lora": cfg.lora, "inputs": sources.paths, "prompt_cfg": OmegaConf.to_container(cfg.prompt)}
    stored = manifest.get_meta("settings")
    if stored is not None:
        if _fingerprint(stored) != _fingerprint(settings):
            changed = sorted(k for k in settings if json.dumps(settings[k], sort_keys=True, default=str)
                             != json.dumps(stored.get(k), sort_keys=True, default=str))
            raise ConfigError(f"{manifest.path}: planned with other settings ({', '.join(changed)} differ); "
                              "a mosaic is made with one set of settings: use a new output_dir")
        prompt = manifest.get_meta("prompt")
    else:
        prompt = _prompt(cfg, sources, grid) if sources.paths else ""
        manifest.add_blocks(grid)
        manifest.set_meta(settings=settings, prompt=prompt, planned=time.strftime("%Y-%m-%dT%H:%M:%S"))
    job = {"grid": grid.to_dict(), "sources": vars(sources), "prompt": prompt, "sampling": sampling.kwargs(),
           "seam": str(cfg.seam), "out_dir": str(Path(cfg.output_dir).resolve()),
           "cfg": OmegaConf.to_container(cfg, resolve=True), "fault": OmegaConf.to_container(cfg.fault)}
    return grid, job


# ---------------------------------------------------------------------------------------------
# 3. Estimates
# ---------------------------------------------------------------------------------------------


def estimate(cfg: DictConfig, grid: Grid, manifest: Manifest, steps: int, tile: int, overlap: int) -> dict[str, Any]:
    """Blocks, windows, window-steps and GPU-hours of what is left, at the measured pace if any."""
    from seg2sat.tiling import windows_for

    counts = manifest.counts()
    done = manifest.blocks(["done", "generated"])
    timed = [r for r in done if r["seconds"] and r["windows"]]
    cache: dict[tuple[int, int], int] = {}
    windows = 0
    left = counts.get("pending", 0) + counts.get("running", 0) + counts.get("failed", 0)
    for r in range(grid.rows):  # shapes repeat: count each once
        for c in range(grid.cols):
            er0, ec0, er1, ec1 = grid.ext(r, c)
            key = (er1 - er0, ec1 - ec0)
            if key not in cache:
                cache[key] = len(windows_for(key[0], key[1], tile, overlap))
            windows += cache[key]
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


# ---------------------------------------------------------------------------------------------
# 4. Engines
# ---------------------------------------------------------------------------------------------


class BlockActor:
    """Holds one pipeline (one per device) and generates blocks; an engine's unit of work."""

    def __init__(self, job: dict[str, Any], pipe: Any = None) -> None:
        from seg2sat.models import resolve_device_dtype
        from seg2sat.stages.infer import load_model

        cfg = OmegaConf.create(job["cfg"])
        self.job = job
        self.pipe = pipe or load_model(cfg, *resolve_device_dtype(str(cfg.device), str(cfg.dtype))).pipe

    def generate(self, row: int, col: int) -> dict[str, Any]:
        """One block; a failure comes back as a record (a dead process is Ray's to retry)."""
        try:
            return scale.generate_block(self.pipe, self.job, row, col)
        except Exception as exc:  # any error of this block is its own: report it, go on with others
            return {"state": "failed", "error": f"{type(exc).__name__}: {exc}"}


class _Tracker:
    """Manifest updates, composing readiness and progress, shared by the engines."""

    def __init__(self, manifest: Manifest, grid: Grid, job: dict[str, Any], result: MosaicResult) -> None:
        self.m, self.grid, self.job, self.result = manifest, grid, job, result
        self.state = {r["id"]: (r["state"], r["raw"], r["row"], r["col"])
                      for r in manifest.blocks(columns="id, state, raw, row, col")}
        self.total = len(self.state)
        self.t0 = time.perf_counter()
        self.area = (grid.block * grid.res) ** 2 / 1e6
        self.submitted_compose: set[str] = set()
        # counted as they change, not recounted per block (a country has ~460,000 blocks)
        self.finished = sum(1 for st in self.state.values() if st[0] in ("done", "empty"))
        self.empty_now = 0

    def generated(self, row: int, col: int, rec: dict[str, Any]) -> list[tuple[int, int, dict[str, str]]]:
        """Record a generation; returns the blocks now ready to compose."""
        bid = block_id(row, col)
        rec = {k: v for k, v in rec.items() if k in ("state", "raw", "raw_sha256", "windows", "seconds", "error")}
        self.m.update(bid, **rec)
        self.state[bid] = (rec["state"], rec.get("raw"), row, col)
        if rec["state"] == "empty":
            self.finished += 1
            self.empty_now += 1
        if rec["state"] == "failed":
            self.result.failed[bid] = str(rec.get("error"))
            log.warning("mosaic: block %s failed: %s", bid, rec.get("error"))
        else:
            self.result.generated.append(bid)
        self.progress()
        return [job for nid in neighbour_ids(self.grid, row, col) if (job := self.ready(nid))]

    def ready(self, bid: str) -> tuple[int, int, dict[str, str]] | None:
        """(row, col, neighbour raws) when `bid` is generated and every neighbour settled."""
        state, _, row, col = self.state[bid]
        if state != "generated" or bid in self.submitted_compose:
            return None
        around = [self.state[n] for n in neighbour_ids(self.grid, row, col)]
        if any(s[0] not in _FINAL for s in around):
            return None
        self.submitted_compose.add(bid)
        return row, col, {block_id(s[2], s[3]): s[1] for s in around if s[0] in ("generated", "done")}

    def all_ready(self) -> list[tuple[int, int, dict[str, str]]]:
        """Every block that can be composed now (after a resume)."""
        return [job for bid in self.state if (job := self.ready(bid))]

    def composed(self, row: int, col: int, rec: dict[str, Any]) -> None:
        """Record a composed block (or its error)."""
        bid = block_id(row, col)
        if rec["state"] == "failed":
            self.m.update(bid, state="failed", error=rec["error"])
            self.result.failed[bid] = rec["error"]
        else:
            self.m.update(bid, state="done", output=rec["output"], sha256=rec["sha256"])
            self.result.composed.append(bid)
            self.finished += 1
        self.state[bid] = (rec["state"], self.state[bid][1], row, col)
        self.progress()

    def progress(self) -> None:
        """Blocks done/total, km²/h and ETA in the log."""
        finished, new = self.finished, len(self.result.composed) + self.empty_now
        hours = (time.perf_counter() - self.t0) / 3600
        rate = len(self.result.composed) * self.area / hours if hours > 0 else 0.0
        left = self.total - finished - len(self.result.failed)
        eta = f"{left * self.area / rate * 60:.1f} min" if rate > 0 else "?"
        log.info("mosaic: %d/%d blocks done (%d this run), %.4g km²/h, ETA %s", finished, self.total, new, rate, eta)


def _compose_safe(job: dict[str, Any], row: int, col: int, neighbours: dict[str, str]) -> dict[str, Any]:
    try:
        return scale.compose_block(job, row, col, neighbours)
    except Exception as exc:  # report the block, keep the run going
        return {"state": "failed", "error": f"{type(exc).__name__}: {exc}"}


def _todo(manifest: Manifest, max_attempts: int) -> list[dict[str, Any]]:
    return [r for r in manifest.blocks(["pending", "running", "failed"], columns="id, row, col, state, attempts")
            if r["state"] != "failed" or r["attempts"] < max_attempts]


def run_local(cfg: DictConfig, manifest: Manifest, grid: Grid, job: dict[str, Any], result: MosaicResult,
              pipe: Any = None) -> None:
    """In-process; under `accelerate launch` each rank generates every world-th block, rank 0 composes."""
    from seg2sat.stages.infer import process_state

    state = process_state()
    tracker = _Tracker(manifest, grid, job, result)
    todo = _todo(manifest, int(cfg.max_attempts))[state.process_index::state.num_processes]
    actor = BlockActor(job, pipe) if todo else None
    for row in todo:
        manifest.bump_attempts(row["id"])
        ready = tracker.generated(row["row"], row["col"], actor.generate(row["row"], row["col"]))
        if state.num_processes == 1:
            for r, c, nb in ready:
                tracker.composed(r, c, _compose_safe(job, r, c, nb))
    if state.num_processes > 1:
        state.wait_for_everyone()
        if not state.is_main_process:
            result.helper_rank = True
            return
        tracker = _Tracker(manifest, grid, job, result)
    for r, c, nb in tracker.all_ready():
        tracker.composed(r, c, _compose_safe(job, r, c, nb))


def _ray_init(cfg: DictConfig) -> tuple[Any, bool]:
    ray = scale.check_ray()
    if ray.is_initialized():
        return ray, False
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
    if cfg.ray.address:
        kwargs["address"] = str(cfg.ray.address)
    else:
        if cfg.ray.num_cpus is not None:
            kwargs["num_cpus"] = int(cfg.ray.num_cpus)
        if cfg.ray.temp_dir:
            kwargs["_temp_dir"] = str(cfg.ray.temp_dir)
    ray.init(**kwargs)
    return ray, True


def run_ray(cfg: DictConfig, manifest: Manifest, grid: Grid, job: dict[str, Any], result: MosaicResult,
            pipe: Any = None) -> None:
    """Ray: one actor per device holding the pipeline, compose as CPU tasks.

    Blocks go to whichever actor is free; Ray restarts a dead actor and retries the block it was
    running (`ray.max_restarts`, `ray.max_task_retries`). An actor with no block left is released.
    """
    import torch

    ray, started = _ray_init(cfg)
    try:
        tracker = _Tracker(manifest, grid, job, result)
        todo = _todo(manifest, int(cfg.max_attempts))
        gpus = cfg.ray.actor_gpus if cfg.ray.actor_gpus is not None else (1 if torch.cuda.is_available() else 0)
        n = cfg.ray.workers or (int(ray.cluster_resources().get("GPU", 0)) if gpus else 0) or 1
        actor_cls = ray.remote(BlockActor).options(num_cpus=float(cfg.ray.actor_cpus), num_gpus=float(gpus),
                                                  max_restarts=int(cfg.ray.max_restarts),
                                                  max_task_retries=int(cfg.ray.max_task_retries))
        compose = ray.remote(_compose_safe).options(num_cpus=float(cfg.ray.compose_cpus), max_retries=3)
        actors = [actor_cls.remote(job) for _ in range(min(n, max(1, len(todo))))] if todo else []
        queue = list(reversed(todo))
        gen: dict[Any, tuple[Any, int, int]] = {}
        comp: dict[Any, tuple[int, int]] = {}

        def submit(actor: Any) -> None:
            if queue:
                row = queue.pop()
                manifest.bump_attempts(row["id"])
                gen[actor.generate.remote(row["row"], row["col"])] = (actor, row["row"], row["col"])

        def compose_all(ready: list[tuple[int, int, dict[str, str]]]) -> None:
            for r, c, nb in ready:
                comp[compose.remote(job, r, c, nb)] = (r, c)

        for actor in actors:  # two blocks in flight per actor: the next one's inputs are ready
            submit(actor)
            submit(actor)
        compose_all(tracker.all_ready())
        while gen or comp:
            done, _ = ray.wait([*gen, *comp], num_returns=1)
            ref = done[0]
            if ref in gen:
                actor, r, c = gen.pop(ref)
                try:
                    rec = ray.get(ref)
                except ray.exceptions.RayError as exc:  # the actor died more often than Ray retries
                    rec = {"state": "failed", "error": f"worker lost: {type(exc).__name__}: {str(exc)[:300]}"}
                submit(actor)
                if not any(a is actor for a, _, _ in gen.values()):  # no block left: free its device/CPUs
                    ray.kill(actor)
                compose_all(tracker.generated(r, c, rec))
            else:
                r, c = comp.pop(ref)
                try:
                    rec = ray.get(ref)
                except ray.exceptions.RayError as exc:
                    rec = {"state": "failed", "error": f"compose lost: {type(exc).__name__}: {str(exc)[:300]}"}
                tracker.composed(r, c, rec)
    finally:
        if started:
            ray.shutdown()


ENGINES = {"local": run_local, "ray": run_ray}


# ---------------------------------------------------------------------------------------------
# The stage
# ---------------------------------------------------------------------------------------------


def run(cfg: DictConfig, pipe: Any = None) -> MosaicResult:
    """Plan (or resume) the mosaic, generate what is left, write the VRT; raise if a block failed.

    `pipe` reuses a loaded pipeline with `engine=local` (benchmarks); Ray actors load their own.
    """
    from seg2sat.stages.infer import _versions

    if cfg.engine not in ENGINES:
        raise ConfigError(f"engine={cfg.engine}: one of {', '.join(ENGINES)}")
    if cfg.engine == "ray":
        scale.check_ray()
    out_dir = Path(cfg.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with scale.opened(out_dir / scale.MANIFEST_NAME) as manifest:
        # 1-2. Plan, verify finished blocks, clear temp files.
        grid, job = plan(cfg, manifest)
        result = MosaicResult(out_dir=out_dir, grid=grid, plan_seconds=round(time.perf_counter() - t0, 3))
        scale.sweep(out_dir)
        result.kept = scale.verify(manifest, out_dir)["kept"]
        s = job["sampling"]
        # 3. Dry run.
        est = estimate(cfg, grid, manifest, s["steps"], s["tile"], s["overlap"])
        result.table = table(grid, est)
        if cfg.check:
            print(result.table)
            result.counts = manifest.counts()
            return result
        if not job["sources"]["paths"]:
            raise ConfigError("a mosaic without input= can only be planned (check=true)")
        # 4. Generate and compose.
        log.info("mosaic: %s", result.table.replace("\n", "; "))
        ENGINES[str(cfg.engine)](cfg, manifest, grid, job, result, pipe)
        if result.helper_rank:  # rank 0 composes and reports
            return result
        # 5. VRT, run record, summary.
        done = manifest.blocks(["done"])
        result.vrt = scale.write_vrt(out_dir, grid, done)
        result.gti = scale.write_gti(out_dir, grid, done)
        result.counts = manifest.counts()
        failed = manifest.blocks(["failed"])
        result.failed = {r["id"]: str(r["error"]) for r in failed}
        waiting = [r["id"] for r in manifest.blocks(["generated", "pending", "running"])]
        result.seconds = round(time.perf_counter() - t0, 2)
        write_json(out_dir / "run.json", {
            "engine": str(cfg.engine), "grid": grid.to_dict(), "prompt": job["prompt"], "sampling": s,
            "seam": job["seam"], "model": str(cfg.model_path), "counts": result.counts,
            "generated_this_run": len(result.generated), "composed_this_run": len(result.composed),
            "kept_verified": result.kept, "seconds": result.seconds,
            "failed": [{"id": r["id"], "bounds": [r["xmin"], r["ymin"], r["xmax"], r["ymax"]],
                        "attempts": r["attempts"], "error": r["error"]} for r in failed],
            "not_composed": waiting, "vrt": str(result.vrt), "gti": str(result.gti), "versions": _versions()})
    summary = (f"{result.counts.get('done', 0)} of {grid.rows * grid.cols} blocks done "
               f"({result.kept} verified and kept, {len(result.composed)} composed now), "
               f"{result.counts.get('empty', 0)} empty, {len(failed)} failed, {len(waiting)} waiting")
    log.info("mosaic: %s -> %s", summary, result.vrt)
    if failed or waiting:
        first = failed[0] if failed else None
        why = f"; first: {first['id']}: {first['error']}" if first else ""
        raise BatchError(f"{summary}{why}; the holes are masked in {result.vrt}; see {out_dir / 'run.json'}",
                         {"failed": result.failed, "waiting": waiting})
    return result
