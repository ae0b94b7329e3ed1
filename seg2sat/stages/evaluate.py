"""`seg2sat evaluate`: how well an exported model follows its maps (see seg2sat/evaluation/).

1. find the prepared dataset and its validation maps;
2. load the model, and its base with an untrained ControlNet (the floor);
3. load the dataset's judges (trained once on the training split's real images, cached): the
   main one, one of another kind, and the reward model's view when the model was reward-tuned;
4. generate an image per map with both models (same seeds, same settings);
5. re-segment them, the real images (the ceiling) and the real images' VAE round trip; KID/FID
   against the real images; optionally sweep the steps for the fewest faithful ones;
6. write `fidelity.json` and `grid.png` (map | generated | re-segmented [| reward view] | real),
   atomically, and record the scores (and the recommended steps) in the model folder.
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
from seg2sat.evaluation.scores import Judges, ReportSettings, fidelity_report, write_outputs
from seg2sat.generation.devices import resolve_device_dtype
from seg2sat.generation.models import (
    MODEL_INFO,
    LoadedModel,
    check_controlnet,
    load_model,
    load_pipeline_from_base,
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
    if not model_path.exists():
        raise ModelError(f"{model_path}: model folder not found (model_path=)")
    check_controlnet(model_path)
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


def _judges(cfg: DictConfig, prepared: Path, model: LoadedModel) -> tuple[Judges, bool]:
    """The main judge, one of another kind, and the reward model's view of a reward-tuned model."""
    from omegaconf import OmegaConf

    from seg2sat.training.reward import RewardConfig

    main, trained_now = load_or_train_judge(prepared, JudgeConfig.from_config(cfg.judge))
    second = load_or_train_judge(prepared, JudgeConfig.from_config(cfg.second_judge))[0] \
        if cfg.get("second_judge") else None
    reward = None
    training = Path(model.source) / "training_config.yaml"
    if training.exists():
        rc = RewardConfig.from_config(OmegaConf.load(training).get("reward"))
        reward = load_or_train_judge(prepared, rc.segmenter)[0] if rc.enabled else None
    return Judges(main=main, second=second, reward=reward), trained_now


def _realism_weights(cfg: DictConfig) -> Path | None:
    """The Inception weights for KID/FID (fetched once when allowed), or None when realism is off."""
    from seg2sat.evaluation.realism import default_dir, fetch_inception

    realism = cfg.get("realism") or {}
    if not realism.get("enabled", False):
        return None
    path = default_dir() / "inception-2015-12-05.pt"
    return fetch_inception() if realism.get("fetch", False) or path.exists() else path


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
    # 3-5. Judges, generation, scores.
    t_judges = time.perf_counter()
    judges, trained_now = _judges(cfg, prepared, model)
    log.info("evaluate: judges ready in %.1f s (main judge trained now: %s)", time.perf_counter() - t_judges, trained_now)
    plan = ReportSettings(sampling=sampling, seed=settings.seed, batch_size=int(cfg.batch_size),
                          vae_round_trip=bool(cfg.vae_round_trip), realism_weights=_realism_weights(cfg),
                          sweep_steps=tuple(int(v) for v in (cfg.get("sweep_steps") or ())))
    report, generated = fidelity_report(model.pipe, floor, judges, records, real, codes, plan)
    report.update(model=model.source, data=str(prepared), split=str(cfg.split), judge=judges.main.info,
                  judge_trained_now=trained_now, seconds=round(time.perf_counter() - t0, 1))
    # 6. Outputs.
    hints = np.stack([codes_to_hint(c) for c in codes])
    json_path, grid_path = write_outputs(Path(cfg.output_dir), report, judges, hints, generated, real,
                                         int(cfg.grid_images))
    if cfg.update_model_card and (Path(model.source) / MODEL_INFO).exists():
        record_fidelity(model.source, {k: v for k, v in report.items() if k != "judge"})
    print(_summary(report, json_path))
    return EvaluateResult(fidelity=report, json_path=json_path, grid_path=grid_path)


def _summary(report: dict[str, Any], json_path: Path) -> str:
    """The line `evaluate` prints: both judges' ratios, realism, the recommended steps."""
    parts = [f"evaluate: fidelity ratio {report['fidelity_ratio']:.2f} (mIoU generated "
             f"{report['generated']['miou']:.3f}, real {report['real_images']['miou']:.3f}"
             + (f", untrained {report['untrained']['miou']:.3f}" if "untrained" in report else "") + ")"]
    if "second_judge" in report:
        parts.append(f"{report['second_judge']['kind']} judge {report['second_judge']['fidelity_ratio']:.2f}")
    if "realism" in report:
        parts.append(f"KID x1000 {report['realism']['kid_x1000']:.2f} ± {report['realism']['kid_std_x1000']:.2f}, "
                     f"FID {report['realism']['fid']:.1f}")
    if "recommended_steps" in report:
        parts.append(f"fewest faithful steps {report['recommended_steps']}")
    return "; ".join(parts) + f" on {report['num_images']} maps -> {json_path}"
