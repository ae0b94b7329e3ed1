"""`seg2sat segment`: train a reference segmenter on one or more datasets and score it on a test set.

The question a user asks of a synthetic set: does it help *my* segmenter on *my* real tiles?
1. read the settings: the network, augmentation, seeds, the sets and the schedule (one-line errors);
2. read every training set and the test set; refuse, before any training, an empty selection,
   another legend, or a test set that shares a tile id, an image or a map with a training set;
3. dry run (`check=true`): the sets, their tiles and ignored pixels, the phases; nothing trained;
4. per seed: train the judge's network through the phases (seg2sat.evaluation.segmenter) and
   score it on the test set's labelled pixels;
5. write `segment.json` (every seed, mean and spread) and `confusion.png` (all seeds summed),
   each atomically.
"""

from __future__ import annotations

import logging
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from seg2sat.atomic import write_json
from seg2sat.errors import ConfigError
from seg2sat.evaluation.segmenter import (
    Augment,
    Phase,
    SegmenterConfig,
    TileSet,
    check_sets,
    load_tiles,
    mix_probabilities,
    score,
    train_segmenter,
    write_confusion_png,
)
from seg2sat.progress import report as report_progress

log = logging.getLogger(__name__)
RECORD = "segment.json"
CONFUSION = "confusion.png"


@dataclass
class SegmentResult:
    """What was trained and measured, and where it was written."""

    record: dict[str, Any]
    json_path: Path | None = None
    png_path: Path | None = None
    table: str = ""
    phases: list[Phase] = field(default_factory=list)


def settings(cfg: DictConfig) -> tuple[SegmenterConfig, list[int]]:
    """The network and training settings, and the seeds (at least one, each an int)."""
    seeds = [int(s) for s in (cfg.seeds if OmegaConf.is_list(cfg.seeds) else [cfg.seeds])]
    if not seeds:
        raise ConfigError("seeds: give at least one seed (e.g. seeds=[0,1,2])")
    if int(cfg.steps) < 1:
        raise ConfigError(f"steps={cfg.steps}: must be >= 1")
    network = cfg.network or {}
    config = SegmenterConfig(kind=str(network.get("kind", "unet")), widths=tuple(network.get("widths", (16, 32, 64))),
                             batch_size=int(cfg.batch_size), learning_rate=float(cfg.learning_rate),
                             crop_size=int(cfg.crop_size), augment=Augment.from_config(cfg.augment))
    config.judge_config(seeds[0])  # an unknown network kind is refused here
    return config, seeds


def _specs(cfg: DictConfig) -> dict[str, dict[str, Any]]:
    train = OmegaConf.to_container(cfg.train, resolve=True) if cfg.train else {}
    if not isinstance(train, dict) or not train:
        raise ConfigError("train: give at least one training set (`+train.<name>` with a path: a FLAIR-layout "
                          "root or a prepared dataset)")
    for name, spec in train.items():
        if not isinstance(spec, dict):
            raise ConfigError(f"train.{name}: expected {{path: ..., weight: ..., rate: ...}}, got {spec!r}")
    return train


def make_phases(cfg: DictConfig, specs: dict[str, dict[str, Any]], sets: list[TileSet]) -> list[Phase]:
    """The schedule: one phase on every set for `steps`, or the configured phases in turn."""
    names = list(specs)
    schedule = OmegaConf.to_container(cfg.schedule, resolve=True) if cfg.schedule else [
        {"sets": names, "steps": int(cfg.steps)}]
    phases = []
    for i, entry in enumerate(schedule):
        chosen = list(entry.get("sets") or [])
        unknown = [n for n in chosen if n not in specs]
        if not chosen or unknown:
            raise ConfigError(f"schedule[{i}].sets={chosen}: name training sets among {', '.join(names)}")
        steps = int(entry.get("steps") or 0)
        if steps < 1:
            raise ConfigError(f"schedule[{i}].steps={entry.get('steps')}: must be >= 1")
        idx = [names.index(n) for n in chosen]
        probs = mix_probabilities([len(sets[j].ids) for j in idx], [specs[n].get("weight") for n in chosen],
                                  [specs[n].get("rate") for n in chosen], [f"train.{n}" for n in chosen])
        phases.append(Phase(tuple(idx), probs, steps))
    return phases


def _describe(s: TileSet) -> dict[str, Any]:
    return {"path": str(s.path), "tiles": len(s.ids), "size": list(s.codes.shape[1:3]), "legend": s.legend,
            "ignored_share": round(float(1 - s.valid.mean()), 5)}


def _table(sets: list[TileSet], test: TileSet, phases: list[Phase], seeds: list[int]) -> str:
    """The dry run's lines: sets, test, phases."""
    lines = [f"train     {s.name}: {len(s.ids)} tiles of {s.path} ({100 * (1 - s.valid.mean()):.1f} % pixels ignored)"
             for s in sets]
    lines.append(f"test      {test.name}: {len(test.ids)} tiles of {test.path}; no shared id, image or map")
    for i, p in enumerate(phases):
        mix = ", ".join(f"{sets[j].name} {q:.2f}" for j, q in zip(p.sets, p.probabilities, strict=True))
        lines.append(f"phase {i}   {p.steps} steps, samples from {mix}")
    lines.append(f"seeds     {seeds}")
    return "\n".join(lines)


def _train_and_score(config: SegmenterConfig, sets: list[TileSet], phases: list[Phase], test: TileSet,
                     seed: int) -> tuple[dict[str, Any], np.ndarray]:
    """One seed: train through the phases (a tqdm bar, JSON progress), then score."""
    from tqdm.auto import tqdm

    total = sum(p.steps for p in phases)
    with tqdm(total=total, desc=f"segment seed {seed}", unit="step") as bar:
        def progress(step: int, steps: int, loss: float) -> None:
            bar.set_postfix(loss=f"{loss:.3f}", refresh=False)
            bar.update(step - bar.n)
            report_progress(step, steps, f"seed {seed}: {step}/{steps} steps")

        judge = train_segmenter(sets, phases, config, seed, progress)
    scores, matrix = score(judge, test)
    log.info("segment: seed %d mIoU %.4f (%.1f s)", seed, scores["miou"], judge.info["seconds"])
    return {"seed": seed, **scores, "seconds": judge.info["seconds"], "final_loss": judge.info["final_loss"]}, matrix


def _summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    mious = [r["miou"] for r in runs]
    classes = sorted({c for r in runs for c in r["per_class_iou"]})
    return {"miou_mean": float(np.mean(mious)), "miou_std": float(np.std(mious)),
            "pixel_accuracy_mean": float(np.mean([r["pixel_accuracy"] for r in runs])),
            "per_class_iou": {c: float(np.mean([r["per_class_iou"].get(c, 0.0) for r in runs])) for c in classes}}


def _record(config: SegmenterConfig, specs: dict[str, dict[str, Any]], sets: list[TileSet], test: TileSet,
            phases: list[Phase]) -> dict[str, Any]:
    """What was trained on what, and how (the record's first half)."""
    names = list(specs)
    return {"train": {n: {**_describe(s), "weight": specs[n].get("weight"), "rate": specs[n].get("rate")}
                      for n, s in zip(names, sets, strict=True)},
            "test": _describe(test),
            "phases": [{"sets": [names[j] for j in p.sets], "probabilities": [round(q, 6) for q in p.probabilities],
                        "steps": p.steps} for p in phases],
            "network": {"kind": config.kind, "widths": list(config.widths)}, "batch_size": config.batch_size,
            "learning_rate": config.learning_rate, "crop_size": config.crop_size, "augment": asdict(config.augment)}


def run(cfg: DictConfig) -> SegmentResult:
    """Check, (dry run,) train one segmenter per seed, score, and write the record and the confusion PNG."""
    # 1-2. Settings, then every set read and checked (nothing trained yet).
    config, seeds = settings(cfg)
    specs = _specs(cfg)
    sets = [load_tiles(f"train.{name}", spec) for name, spec in specs.items()]
    test = load_tiles("test", OmegaConf.to_container(cfg.test, resolve=True) if cfg.test else {})
    check_sets(sets, test)
    phases = make_phases(cfg, specs, sets)
    result = SegmentResult(record={}, table=_table(sets, test, phases, seeds), phases=phases)
    # 3. Dry run.
    if cfg.check:
        print(result.table)
        return result
    # 4. One segmenter per seed.
    t0 = time.perf_counter()
    runs, matrix = [], None
    for seed in seeds:
        scores, m = _train_and_score(config, sets, phases, test, seed)
        runs.append(scores)
        matrix = m if matrix is None else matrix + m
    # 5. The record and the confusion matrix.
    out = Path(str(cfg.output_dir))
    result.record = {**_record(config, specs, sets, test, phases), "seeds": seeds, "runs": runs, **_summary(runs),
                     "confusion": matrix.tolist(), "seconds": round(time.perf_counter() - t0, 2),
                     "threads": torch.get_num_threads(), "machine": platform.machine()}
    result.json_path = write_json(out / RECORD, result.record)
    result.png_path = write_confusion_png(matrix, out / CONFUSION,
                                          f"segment: mIoU {result.record['miou_mean']:.3f} on {test.path.name}")
    print(f"segment: mIoU {result.record['miou_mean']:.4f} ± {result.record['miou_std']:.4f} over {len(seeds)} "
          f"seed(s) on {len(test.ids)} test tiles; {result.json_path}, {result.png_path}")
    return result
