"""`seg2sat synthesize`: an exported model and mask sources -> a FLAIR-1-layout dataset of generated pairs.

1. check the settings, the model folder and the sources (one-line errors; nothing loads);
2. read every source's maps, cut the shape bank, refuse a target no source can reach, plan
   every tile (map, edits, seed, style, season; with `trust.resample`, maps drawn by hardness);
3. dry run (`check=true`): tiles, how many distinct maps and how often each is rendered, edits,
   targets, trust, estimated GPU-hours; nothing is generated;
4. train (once, cached) the quality judge on `judge_data`'s real images, then render, judge and
   write every unfinished tile (`engine=local`, ranks of `accelerate launch`, or `engine=ray`);
   with `trust.enabled`, the pixels the judge does not read as their class are written as
   labels.IGNORE_CODE (seg2sat.synthesis.trust);
5. measure diversity; write the FLAIR metadata JSON, `synthesis.jsonl`, `report.json` and the
   STAC Collection of the pairs' Items (`collection.json`).
The tree reads back with `seg2sat prepare data_root=<output_dir>` like FLAIR.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from seg2sat.atomic import check_space, space_line, sweep_tmp
from seg2sat.errors import BatchError, ConfigError
from seg2sat.evaluation.judge import JudgeConfig, find_prepared, load_or_train_judge
from seg2sat.evaluation.segmenter import DEFAULT_LEGEND, prepared_legend
from seg2sat.generation.files import SIDECAR_BYTES
from seg2sat.generation.models import check_controlnet, peek_model
from seg2sat.generation.sampling import Sampling
from seg2sat.geo.geotiff import geotiff_bytes
from seg2sat.labels import IGNORE_CODE
from seg2sat.synthesis.dataset import write_dataset
from seg2sat.synthesis.edit import ShapeBank, needed_shapes
from seg2sat.synthesis.engines import Progress, build_renderer, build_trust, run_local, run_ray
from seg2sat.synthesis.plan import TilePlan, check_reachable, make_plan, map_reuse
from seg2sat.synthesis.sources import MaskItem, source_items
from seg2sat.synthesis.spec import SynthesisSpec
from seg2sat.synthesis.tiles import RECORDS_DIR, read_record
from seg2sat.synthesis.trust import TrustSettings

log = logging.getLogger(__name__)
ENGINES = ("local", "ray")


@dataclass
class SynthesizeResult:
    """What a run planned, made and reported."""

    out_dir: Path
    plans: list[TilePlan]
    made_now: int = 0
    report: dict[str, Any] = field(default_factory=dict)
    table: str = ""


def _maps(spec: SynthesisSpec, tile: int, resolution: float | None) -> list[list[MaskItem]]:
    """Each source's maps (a prepared dataset used by two sources is read once)."""
    cache: dict[tuple[str, str, Any], list[MaskItem]] = {}
    out = []
    for i, s in enumerate(spec.sources):
        key = (s.kind == "landcover" and "landcover" or "prepared", str(s.path), s.split)
        if key not in cache:
            cache[key] = source_items(s, i, tile, resolution)
        out.append(cache[key])
    return out


def _dry_run(cfg: DictConfig, spec: SynthesisSpec, items: list[list[MaskItem]], plans: list[TilePlan],
             todo: list[TilePlan], sampling: Sampling, needed: int) -> str:
    """Tiles by source, edits, targets and the estimate, as the dry run prints them."""
    reuse, trust = map_reuse(plans, items), TrustSettings.from_config(cfg.get("trust"))
    lines = [f"tiles     {len(plans)} planned, {len(todo)} to make ({len(plans) - len(todo)} finished here)",
             "sources   " + ", ".join(f"{s.kind}:{s.path.name} {u['tiles']} tiles from {u['distinct']} distinct maps"
                                      f" ({u['used']} used, up to {u['max_reuse']}x)"
                                      for s, u in zip(spec.sources, reuse["per_source"], strict=True)),
             f"maps      {reuse['distinct_in_sources']} distinct in the sources; the tiles render {reuse['used']} of "
             f"them, up to {reuse['max_reuse']}x each (mean {reuse['mean_reuse']:g}x)"
             + (f": {reuse['reused']} maps rendered more than once (same layouts, new seeds)" if reuse["reused"] else ""),
             "trust     " + (f"pixels whose judge loss exceeds {trust.factor:g}x their class's mean on the real set are "
                            f"written as {IGNORE_CODE} (ignored)" if trust.enabled else "off (every pixel keeps its label)")
             + ("; maps drawn by hardness" if trust.resample else ""),
             f"edited    {sum(p.edited for p in plans)} tiles; targets: "
             + (", ".join(f"{t.name} {t.share or t.tiles}" for t in spec.target.classes) or "none")]
    attempts = 1 + spec.quality.retries
    window_steps = len(todo) * sampling.steps * (2 if sampling.guidance_scale > 1 else 1)
    rate = float(cfg.estimate.window_steps_per_s)
    lines.append(f"estimate  {window_steps} window-steps = {window_steps / rate / 3600:.3f} GPU-hours at {rate:g} "
                 f"window-steps/s ({cfg.estimate.device}); up to x{attempts} with retries under the quality bar "
                 f"{spec.quality.threshold:g}")
    lines.append(space_line(Path(cfg.output_dir), needed))
    return "\n".join(lines)


def _needed_bytes(todo: list[TilePlan], tile: int) -> int:
    """What the tiles left write, uncompressed: image, mask, STAC Item and record each, and the dataset files."""
    pair = geotiff_bytes(tile, tile, 3, "uint8") + geotiff_bytes(tile, tile, 1, "uint8") + 2 * SIDECAR_BYTES
    return len(todo) * (pair + SIDECAR_BYTES) + 4 * SIDECAR_BYTES


def _prepare(cfg: DictConfig) -> tuple[SynthesisSpec, Sampling, list[list[MaskItem]], ShapeBank, list[TilePlan]]:
    """1-2. Settings, model folder, sources, shape bank, reachability, the plan."""
    if cfg.engine not in ENGINES:
        raise ConfigError(f"engine={cfg.engine}: one of {', '.join(ENGINES)}")
    spec = SynthesisSpec.from_config(cfg)
    check_controlnet(cfg.model_path)
    sampling = Sampling.from_config(cfg.sampling, peek_model(str(cfg.model_path)))
    if cfg.judge_data:
        find_prepared(cfg.judge_data)  # the quality judge's real images must exist
    trust = TrustSettings.from_config(cfg.get("trust"))
    if (trust.enabled or trust.resample) and not cfg.judge_data:
        raise ConfigError("trust: per-pixel trust and hardness need a judge trained on real images (judge_data=)")
    resolution = float(cfg.work_resolution) if cfg.work_resolution else None  # null: a raster's own grid
    items = _maps(spec, sampling.tile, resolution)
    edited = [m.codes for i, s in enumerate(spec.sources) if s.kind == "edited" for m in items[i]]
    bank = ShapeBank.from_maps(edited, needed_shapes(t.code for t in spec.target.classes))
    check_reachable(spec, items, bank)
    return spec, sampling, items, bank, make_plan(spec, items, _hardness(cfg, items) if trust.resample else None)


def _hardness(cfg: DictConfig, items: list[list[MaskItem]]) -> list[list[float]]:
    """Each source map's hardness under the judge of `judge_data` (trained now when not cached, dry run too)."""
    prepared = find_prepared(cfg.judge_data)
    judge, _ = load_or_train_judge(prepared, JudgeConfig.from_config(cfg.judge))
    trust = build_trust({**cfg, "judge_data": str(prepared), "trust": {"enabled": True}}, judge)
    return [[trust.hardness(m.codes) for m in src] for src in items]


def _legend(spec: SynthesisSpec) -> str | None:
    """The legend the maps are in when it is not FLAIR's 19 classes (prepared with merge13), else None."""
    merged = {prepared_legend(s.path) for s in spec.sources if s.kind != "landcover"} - {DEFAULT_LEGEND}
    return merged.pop() if merged else None


def _records(out_dir: Path, plans: list[TilePlan]) -> list[dict[str, Any]]:
    records = [read_record(out_dir, p.id) for p in plans]
    missing = [p.id for p, r in zip(plans, records, strict=True) if r is None]
    if missing:
        raise BatchError(f"{len(missing)} of {len(plans)} tiles are not finished (first {missing[0]}); rerun "
                         f"`seg2sat synthesize` with the same settings to finish them ({out_dir})")
    return records


def run(cfg: DictConfig) -> SynthesizeResult:
    """Plan, make what is left, and write the dataset's metadata, manifest and report."""
    # 1-2. Check and plan (no model loaded).
    spec, sampling, items, bank, plans = _prepare(cfg)
    out_dir = Path(cfg.output_dir)
    sweep_tmp(out_dir / RECORDS_DIR)
    todo = [p for p in plans if cfg.overwrite or read_record(out_dir, p.id) is None]
    needed = _needed_bytes(todo, sampling.tile)
    result = SynthesizeResult(out_dir=out_dir, plans=plans, table=_dry_run(cfg, spec, items, plans, todo, sampling, needed))
    # 3. Dry run.
    if cfg.check:
        print(result.table)
        return result
    log.info("synthesize: %s", result.table.replace("\n", "; "))
    check_space(out_dir, needed)  # writable, and not clearly short of space
    # 4. The judge once (cached), then the tiles.
    if cfg.judge_data:
        OmegaConf.update(cfg, "judge_data", str(find_prepared(cfg.judge_data)))
        load_or_train_judge(cfg.judge_data, JudgeConfig.from_config(cfg.judge))
    else:
        log.warning("synthesize: judge_data is null, so every pair is kept unjudged (no quality bar, no diversity)")
    progress = Progress(len(todo))
    renderer = None
    if cfg.engine == "ray":
        main = run_ray(cfg, items, bank, spec.quality, todo, progress)
    else:
        renderer = build_renderer(cfg, items, bank, spec.quality)
        main = run_local(renderer, todo, progress)
    result.made_now = progress.done
    if not main:
        return result
    # 5. Diversity, then the dataset's metadata, manifest and report.
    records = _records(out_dir, plans)
    diversity = None
    if int(cfg.diversity.maps) > 0 and cfg.judge_data:
        renderer = renderer or build_renderer(cfg, items, bank, spec.quality)
        accepted = [p for p, r in zip(plans, records, strict=True) if r["state"] == "accepted"]
        diversity = renderer.diversity(accepted[: int(cfg.diversity.maps)], int(cfg.diversity.seeds))
    real = [m.codes for src in items for m in src]
    result.report = write_dataset(out_dir, spec, records, list(np.unique(real, axis=0)) if real else [],
                                  str(cfg.model_path), diversity, {"maps": map_reuse(plans, items),
                                                                   "legend": _legend(spec)})
    print(f"synthesize: {result.report['accepted']} pairs in {out_dir} ({result.report['dropped']} dropped under "
          f"{spec.quality.threshold:g}); `seg2sat prepare data_root={out_dir}` reads them")
    return result
