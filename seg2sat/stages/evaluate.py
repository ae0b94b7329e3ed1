"""`seg2sat evaluate`: how well an exported model follows its maps (see seg2sat/evaluation/).

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
from omegaconf import DictConfig

from seg2sat.data.dataset import read_manifest
from seg2sat.errors import DatasetError, ModelError
from seg2sat.evaluation.judge import JudgeConfig, find_prepared, load_or_train_judge, split_arrays
from seg2sat.evaluation.scores import fidelity_report, write_outputs
from seg2sat.generation.models import (
    MODEL_INFO,
    LoadedModel,
    load_model,
    load_pipeline_from_base,
    resolve_device_dtype,
)
from seg2sat.generation.sampling import Sampling
from seg2sat.hints import codes_to_hint

log = logging.getLogger(__name__)


@dataclass
class EvaluateResult:
    """What was measured and where it was written."""

    fidelity: dict[str, Any]
    json_path: Path
    grid_path: Path


def _models(cfg: DictConfig) -> tuple[LoadedModel, Any]:
    """The model, and its base with an untrained ControlNet (None when `untrained=false`)."""
    model_path = Path(str(cfg.model_path))
    if not (model_path / "controlnet" / "config.json").exists() and not (model_path / "config.json").exists():
        raise ModelError(f"{model_path}: no ControlNet here (expected an exported model folder with "
                         "controlnet/, or a diffusers ControlNet folder); run `seg2sat export` (model_path=)")
    device, dtype = resolve_device_dtype(str(cfg.device), str(cfg.dtype))
    scheduler = str(cfg.sampling.scheduler)
    model = load_model(model_path, base=cfg.base_model, device=device, dtype=dtype, scheduler=scheduler)
    if not cfg.untrained:
        return model, None
    base = cfg.base_model
    if base is None:  # an exported folder (a plain ControlNet needed base_model to load at all)
        base = model.info["base_model"]
        base = model_path / base if (model_path / base).exists() else base
    return model, load_pipeline_from_base(base, device=device, scheduler=scheduler).to(dtype=dtype)


def run(cfg: DictConfig) -> EvaluateResult:
    """Score an exported model's fidelity on a prepared dataset's validation maps."""
    from seg2sat.training.export import record_fidelity

    t0 = time.perf_counter()
    # 1. Data.
    prepared = find_prepared(cfg.data_dir)
    if not read_manifest(prepared, str(cfg.split)):
        raise DatasetError(f"{prepared}: no '{cfg.split}' tiles to evaluate on (the split is by domain; "
                           "prepare at least two domains, or set split.val_domains)")
    records, real, codes = split_arrays(prepared, str(cfg.split), limit=cfg.num_images)
    # 2. Models; sampling nulls are what the model recommends.
    model, floor = _models(cfg)
    settings = Sampling.from_config(cfg.sampling, model)
    sampling = {"steps": settings.steps, "guidance_scale": settings.guidance_scale,
                "controlnet_scale": settings.controlnet_scale, "negative_prompt": settings.negative_prompt,
                "scheduler": str(cfg.sampling.scheduler)}
    # 3-5. Judge, generation, scores.
    judge, trained_now = load_or_train_judge(prepared, JudgeConfig.from_config(cfg.judge))
    report, generated = fidelity_report(model.pipe, floor, judge, records, real, codes, sampling=sampling,
                                        seed=settings.seed, batch_size=int(cfg.batch_size),
                                        vae_round_trip_ceiling=bool(cfg.vae_round_trip))
    report.update(model=model.source, data=str(prepared), split=str(cfg.split), judge=judge.info,
                  judge_trained_now=trained_now, seconds=round(time.perf_counter() - t0, 1))
    # 6. Outputs.
    hints = np.stack([codes_to_hint(c) for c in codes])
    json_path, grid_path = write_outputs(Path(cfg.output_dir), report, judge, hints, generated, real,
                                         int(cfg.grid_images))
    if cfg.update_model_card and (Path(model.source) / MODEL_INFO).exists():
        record_fidelity(model.source, {k: v for k, v in report.items() if k != "judge"})
    print(f"evaluate: fidelity ratio {report['fidelity_ratio']:.2f} (mIoU generated "
          f"{report['generated']['miou']:.3f}, real {report['real_images']['miou']:.3f}"
          + (f", untrained {report['untrained']['miou']:.3f}" if "untrained" in report else "")
          + f") on {report['num_images']} maps -> {json_path}")
    return EvaluateResult(fidelity=report, json_path=json_path, grid_path=grid_path)
