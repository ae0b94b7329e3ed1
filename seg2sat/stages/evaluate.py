"""`seg2sat evaluate`: how well an exported model follows its maps (see seg2sat/fidelity.py).

1. find the prepared dataset and its validation maps;
2. load the model, and its base with an untrained ControlNet (the floor);
3. load the dataset's judge (trained once on the training split's real images, cached);
4. generate an image per map with both models (same seeds, same settings);
5. re-segment them, the real images (the ceiling) and the real images' VAE round trip;
6. write `fidelity.json` and `grid.png` (map | generated | re-segmented | real), atomically.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf
from PIL import Image

from seg2sat.atomic import atomic_path, write_json
from seg2sat.data.dataset import read_manifest
from seg2sat.errors import DatasetError, ModelError
from seg2sat.fidelity import Judge, JudgeConfig, fidelity_report, load_or_train_judge, split_arrays
from seg2sat.hints import codes_to_hint

log = logging.getLogger(__name__)


@dataclass
class EvaluateResult:
    """What was measured and where it was written."""

    fidelity: dict[str, Any]
    json_path: Path
    grid_path: Path


def find_prepared(data_dir: str | Path) -> Path:
    """The prepared dataset: `data_dir` itself, or `data_dir/prepared` (a data root)."""
    root = Path(data_dir)
    for candidate in (root, root / "prepared"):
        if (candidate / "manifest.jsonl").exists():
            return candidate
    raise DatasetError(f"{root}: no prepared dataset (no manifest.jsonl here or in prepared/); "
                       "run `seg2sat prepare` first")


def judge_config(cfg: Any) -> JudgeConfig:
    """The judge settings of a config block (`conf/evaluate.yaml` `judge:`)."""
    block = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg or {})
    if "widths" in block:
        block["widths"] = tuple(block["widths"])
    return JudgeConfig(**block)


def grid_image(hints: np.ndarray, generated: np.ndarray, resegmented: np.ndarray, real: np.ndarray,
               scale: int = 2) -> np.ndarray:
    """Rows of map | generated | re-segmented (as a hint) | real, with white gaps."""
    rows = []
    for row in zip(hints, generated, resegmented, real, strict=True):
        cells = [np.kron(a, np.ones((scale, scale, 1), np.uint8)) for a in row]
        gap = np.full((cells[0].shape[0], 4, 3), 255, np.uint8)
        rows.append(np.concatenate([c for cell in cells for c in (cell, gap)][:-1], axis=1))
        rows.append(np.full((4, rows[-1].shape[1], 3), 255, np.uint8))
    return np.concatenate(rows[:-1], axis=0)


def write_outputs(out_dir: Path, report: dict[str, Any], judge: Judge, hints: np.ndarray,
                  generated: np.ndarray, real: np.ndarray, grid_images: int) -> tuple[Path, Path]:
    """`fidelity.json` and `grid.png` in `out_dir`, each written atomically."""
    k = min(grid_images, len(hints))
    reseg = np.stack([codes_to_hint(c) for c in judge.classify(generated[:k])])
    grid = grid_image(hints[:k], generated[:k], reseg, real[:k])
    grid_path = out_dir / "grid.png"
    with atomic_path(grid_path) as tmp:
        Image.fromarray(grid).save(tmp, format="PNG")
    json_path = write_json(out_dir / "fidelity.json", report)
    return json_path, grid_path


def run(cfg: DictConfig) -> EvaluateResult:
    """Score an exported model's fidelity on a prepared dataset's validation maps."""
    from seg2sat.models import MODEL_INFO, load_model, load_pipeline_from_base, resolve_device_dtype
    from seg2sat.sampling import Sampling
    from seg2sat.stages.export import record_fidelity

    t0 = time.perf_counter()
    # 1. Data.
    prepared = find_prepared(cfg.data_dir)
    if not read_manifest(prepared, str(cfg.split)):
        raise DatasetError(f"{prepared}: no '{cfg.split}' tiles to evaluate on (the split is by domain; "
                           "prepare at least two domains, or set split.val_domains)")
    records, real, codes = split_arrays(prepared, str(cfg.split), limit=cfg.num_images)
    # 2. Models.
    model_path = Path(str(cfg.model_path))
    if not (model_path / "controlnet" / "config.json").exists() and not (model_path / "config.json").exists():
        raise ModelError(f"{model_path}: no ControlNet here (expected an exported model folder with "
                         "controlnet/, or a diffusers ControlNet folder); run `seg2sat export`")
    device, dtype = resolve_device_dtype(str(cfg.device), str(cfg.dtype))
    model = load_model(model_path, base=cfg.base_model, device=device, dtype=dtype,
                       scheduler=str(cfg.sampling.scheduler))
    settings = Sampling.from_config(cfg.sampling, model)  # nulls: what the model recommends
    sampling = {"steps": settings.steps, "guidance_scale": settings.guidance_scale,
                "controlnet_scale": settings.controlnet_scale, "negative_prompt": settings.negative_prompt,
                "scheduler": str(cfg.sampling.scheduler)}
    base = cfg.base_model
    if base is None:  # an exported folder (a plain ControlNet needed base_model to load at all)
        base = model.info["base_model"]
        base = model_path / base if (model_path / base).exists() else base
    floor = (load_pipeline_from_base(base, device=device, scheduler=str(cfg.sampling.scheduler)).to(dtype=dtype)
             if cfg.untrained else None)
    # 3-5. Judge, generation, scores.
    judge, trained_now = load_or_train_judge(prepared, judge_config(cfg.judge))
    report, generated = fidelity_report(model.pipe, floor, judge, records, real, codes, sampling=sampling,
                                        seed=int(cfg.seed), batch_size=int(cfg.batch_size),
                                        vae_round_trip_ceiling=bool(cfg.vae_round_trip))
    report.update(model=str(model_path), data=str(prepared), split=str(cfg.split), judge=judge.info,
                  judge_trained_now=trained_now, seconds=round(time.perf_counter() - t0, 1))
    # 6. Outputs.
    hints = np.stack([codes_to_hint(c) for c in codes])
    json_path, grid_path = write_outputs(Path(cfg.output_dir), report, judge, hints, generated, real,
                                         int(cfg.grid_images))
    if cfg.update_model_card and (model_path / MODEL_INFO).exists():
        record_fidelity(model_path, {k: v for k, v in report.items() if k != "judge"})
    print(f"evaluate: fidelity ratio {report['fidelity_ratio']:.2f} (mIoU generated "
          f"{report['generated']['miou']:.3f}, real {report['real_images']['miou']:.3f}"
          + (f", untrained {report['untrained']['miou']:.3f}" if "untrained" in report else "")
          + f") on {report['num_images']} maps -> {json_path}")
    return EvaluateResult(fidelity=report, json_path=json_path, grid_path=grid_path)
