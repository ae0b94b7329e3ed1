"""Running a synthesis plan: in this process (ranks of `accelerate launch` share the tiles) or on Ray.

The same engines as the mosaic: `local` deals tile i to rank i mod world; `ray` gives tiles to
whichever actor is free, one actor per device holding the model, the judge and the maps, Ray
restarting a dead actor and retrying its tile. A tile writes its own files and record, so the
driver only counts: any number of workers writes the same bytes.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from seg2sat import faults
from seg2sat.evaluation.judge import Judge, JudgeConfig, load_or_train_judge, split_arrays
from seg2sat.generation.devices import process_state
from seg2sat.generation.models import load_configured
from seg2sat.generation.sampling import PromptSpec, Sampling
from seg2sat.progress import report as report_progress
from seg2sat.scale.engines import ray_actors, ray_init
from seg2sat.synthesis.edit import ShapeBank
from seg2sat.synthesis.plan import TilePlan
from seg2sat.synthesis.sources import MaskItem
from seg2sat.synthesis.spec import Quality
from seg2sat.synthesis.tiles import Renderer
from seg2sat.synthesis.trust import Trust, TrustSettings

log = logging.getLogger(__name__)


def build_renderer(cfg: Any, items: list[list[MaskItem]], bank: ShapeBank, quality: Quality) -> Renderer:
    """A worker's renderer: the configured model, the dataset's judge (trained already), the maps."""
    model = load_configured(cfg)
    judge = None
    if cfg["judge_data"]:
        judge, _ = load_or_train_judge(str(cfg["judge_data"]), JudgeConfig.from_config(cfg["judge"]))
    return Renderer(model=model, judge=judge, items=items, bank=bank,
                    sampling=Sampling.from_config(cfg["sampling"], model),
                    prompt=PromptSpec.from_config(cfg["prompt"], model), quality=quality,
                    out_dir=Path(cfg["output_dir"]), trust=build_trust(cfg, judge))


def build_trust(cfg: Any, judge: Judge | None) -> Trust | None:
    """The per-pixel trust of `cfg.trust` (None when off): the judge's class losses on `judge_data`'s real images."""
    settings = TrustSettings.from_config(cfg.get("trust"))
    if not settings.enabled or judge is None:
        return None
    _, images, codes = split_arrays(str(cfg["judge_data"]), "train")
    return Trust.fit(judge, images, codes, settings.factor)


class RendererActor:
    """A Ray actor holding one renderer."""

    def __init__(self, cfg: dict[str, Any], items: Any, bank: Any, quality: Quality) -> None:
        self.renderer = build_renderer(cfg, items, bank, quality)

    def make(self, plan: TilePlan) -> dict[str, Any]:
        """One tile."""
        return self.renderer.make(plan)


class Progress:
    """Tiles done, tiles/s and an ETA in the log, JSON progress and the `synthesize.tile` fault point."""

    def __init__(self, total: int) -> None:
        self.total, self.done, self.t0 = total, 0, time.perf_counter()

    def tick(self, record: dict[str, Any]) -> None:
        """Count one finished tile."""
        self.done += 1
        rate = self.done / max(1e-9, time.perf_counter() - self.t0)
        eta = (self.total - self.done) / rate if rate > 0 else float("nan")
        score = "unjudged" if record["score"] is None else f"score {record['score']:.2f}"
        log.info("synthesize: %d/%d tiles (%s %s, %s), %.2f tiles/s, ETA %.0f s", self.done, self.total,
                 record["id"], record["state"], score, rate, eta)
        report_progress(self.done, self.total, f"{self.done}/{self.total} tiles")
        faults.progress("synthesize.tile", self.done)


def run_local(renderer: Renderer, todo: list[TilePlan], progress: Progress) -> bool:
    """This process's share of the tiles (every world-th under `accelerate launch`); True on rank 0."""
    state = process_state()
    for plan in todo[state.process_index::state.num_processes]:
        progress.tick(renderer.make(plan))
    if state.num_processes > 1:
        state.wait_for_everyone()
    return state.is_main_process


def run_ray(cfg: Any, items: list[list[MaskItem]], bank: ShapeBank, quality: Quality, todo: list[TilePlan],
            progress: Progress) -> bool:
    """Tiles to whichever actor is free; Ray restarts dead actors and retries their tile."""
    from omegaconf import OmegaConf

    ray, started = ray_init(cfg)
    try:
        plain = OmegaConf.to_container(cfg, resolve=True)
        actors = ray_actors(ray, cfg, RendererActor, len(todo), plain, ray.put(items), ray.put(bank), quality)
        queue, running = list(reversed(todo)), {}
        for actor in actors:
            if queue:
                running[actor.make.remote(queue.pop())] = actor
        while running:
            done, _ = ray.wait(list(running), num_returns=1)
            actor = running.pop(done[0])
            progress.tick(ray.get(done[0]))
            if queue:
                running[actor.make.remote(queue.pop())] = actor
    finally:
        if started:
            ray.shutdown()
    return True

