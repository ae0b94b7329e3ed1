"""Engines that run a mosaic's blocks: `local` (in this process) and `ray` (one actor per device).

With `local`, ranks of `accelerate launch` share the blocks; with `ray`, each actor holds the
pipeline and Ray restarts dead actors and retries their blocks. Both record every block in the
manifest as it finishes and compose a block as soon as its neighbours are generated.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from seg2sat import faults
from seg2sat.errors import ConfigError, WriteError
from seg2sat.generation.devices import process_state
from seg2sat.generation.models import load_configured
from seg2sat.progress import report as report_progress
from seg2sat.scale.blocks import compose_block, generate_block
from seg2sat.scale.grid import Grid, block_id, neighbour_ids
from seg2sat.scale.manifest import Manifest

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



def check_ray() -> Any:
    """Import Ray (optional extra) or say how to install it."""
    try:
        import ray
    except ImportError as exc:
        raise ConfigError('engine=ray needs Ray, an optional extra: pip install "seg2sat[ray]"') from exc
    return ray


class BlockActor:
    """Holds one pipeline (one per device) and generates blocks; an engine's unit of work."""

    def __init__(self, job: dict[str, Any], pipe: Any = None) -> None:
        self.job = job
        self.pipe = pipe or load_configured(job["cfg"]).pipe

    def generate(self, row: int, col: int) -> dict[str, Any]:
        """One block; a failure comes back as a record (a dead process is Ray's to retry).

        A failed write (full disk, read-only folder) is the run's, not the block's: it comes
        back as `fatal`, and the driver stops without counting it against the block.
        """
        try:
            return generate_block(self.pipe, self.job, row, col)
        except WriteError as exc:
            return {"state": "fatal", "exception": exc}
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
        """Record a generation; returns the blocks now ready to compose (a fatal record stops the run)."""
        bid = block_id(row, col)
        if rec["state"] == "fatal":
            self.m.release(bid, "pending")
            raise rec["exception"]
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
        faults.progress("mosaic.block", len(self.result.generated))
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
        """Record a composed block (or its error); a fatal record stops the run, the block stays generated."""
        bid = block_id(row, col)
        if rec["state"] == "fatal":
            raise rec["exception"]
        if rec["state"] == "failed":
            self.m.update(bid, state="failed", error=rec["error"])
            self.result.failed[bid] = rec["error"]
        else:
            self.m.update(bid, state="done", output=rec["output"], sha256=rec["sha256"])
            self.result.composed.append(bid)
            self.finished += 1
        self.state[bid] = (rec["state"], self.state[bid][1], row, col)
        self.progress()
        faults.progress("mosaic.compose", len(self.result.composed))

    def progress(self) -> None:
        """Blocks done/total, km²/h and ETA in the log."""
        finished, new = self.finished, len(self.result.composed) + self.empty_now
        hours = (time.perf_counter() - self.t0) / 3600
        rate = len(self.result.composed) * self.area / hours if hours > 0 else 0.0
        left = self.total - finished - len(self.result.failed)
        eta = f"{left * self.area / rate * 60:.1f} min" if rate > 0 else "?"
        log.info("mosaic: %d/%d blocks done (%d this run), %.4g km²/h, ETA %s", finished, self.total, new, rate, eta)
        # a block is two halves of work, generated then composed: the fraction moves at both
        waiting = max(0, len(self.result.generated) - len(self.result.composed) - self.empty_now)
        report_progress(2 * finished + waiting, 2 * self.total, f"{finished}/{self.total} blocks done, ETA {eta}")


def _compose_safe(job: dict[str, Any], row: int, col: int, neighbours: dict[str, str]) -> dict[str, Any]:
    try:
        return compose_block(job, row, col, neighbours)
    except WriteError as exc:  # the run's fault, not the block's
        return {"state": "fatal", "exception": exc}
    except Exception as exc:  # report the block, keep the run going
        return {"state": "failed", "error": f"{type(exc).__name__}: {exc}"}


def _todo(manifest: Manifest, max_attempts: int) -> list[dict[str, Any]]:
    return [r for r in manifest.blocks(["pending", "running", "failed"], columns="id, row, col, state, attempts")
            if r["state"] != "failed" or r["attempts"] < max_attempts]


def run_local(cfg: Any, manifest: Manifest, grid: Grid, job: dict[str, Any], result: MosaicResult,
              pipe: Any = None) -> None:
    """In-process; under `accelerate launch` each rank generates every world-th block, rank 0 composes."""
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


def ray_init(cfg: Any) -> tuple[Any, bool]:
    """Ray, started locally or joined (`ray.address`) as configured; (ray, started here)."""
    ray = check_ray()
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


class _RayDriver:
    """Blocks in flight on Ray actors and compositions in flight as CPU tasks, and what each ref is."""

    def __init__(self, ray: Any, job: dict[str, Any], tracker: _Tracker, manifest: Manifest,
                 todo: list[dict[str, Any]], compose: Any) -> None:
        self.ray, self.job, self.tracker, self.manifest, self.compose = ray, job, tracker, manifest, compose
        self.queue = list(reversed(todo))
        self.gen: dict[Any, tuple[Any, int, int]] = {}  # ref -> (actor, row, col)
        self.comp: dict[Any, tuple[int, int]] = {}  # ref -> (row, col)

    def submit(self, actor: Any) -> None:
        """Give `actor` the next pending block, if any."""
        if self.queue:
            row = self.queue.pop()
            self.manifest.bump_attempts(row["id"])
            self.gen[actor.generate.remote(row["row"], row["col"])] = (actor, row["row"], row["col"])

    def compose_all(self, ready: list[tuple[int, int, dict[str, str]]]) -> None:
        """Compose each ready block as a CPU task."""
        for r, c, nb in ready:
            self.comp[self.compose.remote(self.job, r, c, nb)] = (r, c)

    def _get(self, ref: Any, what: str) -> dict[str, Any]:
        try:
            return self.ray.get(ref)
        except self.ray.exceptions.RayError as exc:  # the worker died more often than Ray retries
            return {"state": "failed", "error": f"{what} lost: {type(exc).__name__}: {str(exc)[:300]}"}

    def step(self) -> None:
        """Wait for one result: record it, give its actor the next block, compose what became ready."""
        done, _ = self.ray.wait([*self.gen, *self.comp], num_returns=1)
        ref = done[0]
        if ref in self.gen:
            actor, r, c = self.gen.pop(ref)
            rec = self._get(ref, "worker")
            self.submit(actor)
            if not any(a is actor for a, _, _ in self.gen.values()):  # no block left: free its device/CPUs
                self.ray.kill(actor)
            self.compose_all(self.tracker.generated(r, c, rec))
        else:
            r, c = self.comp.pop(ref)
            self.tracker.composed(r, c, self._get(ref, "compose"))


def _actors(ray: Any, cfg: Any, job: dict[str, Any], n_todo: int) -> list[Any]:
    """One actor per device of the cluster (or `ray.workers`), never more than there are blocks."""
    return ray_actors(ray, cfg, BlockActor, n_todo, job)


def ray_actors(ray: Any, cfg: Any, actor: type, n_todo: int, *args: Any) -> list[Any]:
    """One actor of `actor` per device of the cluster (or `ray.workers`), never more than there is work."""
    import torch

    gpus = cfg.ray.actor_gpus if cfg.ray.actor_gpus is not None else (1 if torch.cuda.is_available() else 0)
    n = cfg.ray.workers or (int(ray.cluster_resources().get("GPU", 0)) if gpus else 0) or 1
    actor_cls = ray.remote(actor).options(num_cpus=float(cfg.ray.actor_cpus), num_gpus=float(gpus),
                                         max_restarts=int(cfg.ray.max_restarts),
                                         max_task_retries=int(cfg.ray.max_task_retries))
    return [actor_cls.remote(*args) for _ in range(min(n, max(1, n_todo)))] if n_todo else []


def run_ray(cfg: Any, manifest: Manifest, grid: Grid, job: dict[str, Any], result: MosaicResult,
            pipe: Any = None) -> None:
    """Ray: one actor per device holding the pipeline, compose as CPU tasks.

    Blocks go to whichever actor is free; Ray restarts a dead actor and retries the block it was
    running (`ray.max_restarts`, `ray.max_task_retries`). An actor with no block left is released.
    """
    ray, started = ray_init(cfg)
    try:
        tracker = _Tracker(manifest, grid, job, result)
        todo = _todo(manifest, int(cfg.max_attempts))
        compose = ray.remote(_compose_safe).options(num_cpus=float(cfg.ray.compose_cpus), max_retries=3)
        driver = _RayDriver(ray, job, tracker, manifest, todo, compose)
        for actor in _actors(ray, cfg, job, len(todo)):  # two blocks in flight per actor: the next one's inputs are ready
            driver.submit(actor)
            driver.submit(actor)
        driver.compose_all(tracker.all_ready())
        while driver.gen or driver.comp:
            driver.step()
    finally:
        if started:
            ray.shutdown()


ENGINES = {"local": run_local, "ray": run_ray}
