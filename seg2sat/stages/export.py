"""`seg2sat export`: checkpoint -> model folder (see docs/architecture.md for the layout).

The folder holds the ControlNet in diffusers format (safetensors), a reference to its
Stable Diffusion base (hub id or path; the tiny base is copied in, since it exists nowhere
else), the legend and caption template it was trained with, the training config, the last
validation grid and a model card. It is written to a temp folder and renamed when complete.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from seg2sat.atomic import atomic_dir, write_json, write_text
from seg2sat.errors import ModelError
from seg2sat.labels import CLASSES, legend_markdown
from seg2sat.models import MODEL_INFO, build_tiny_components, save_pipeline_parts
from seg2sat.prompts import DEFAULT_TEMPLATE
from seg2sat.training import list_checkpoints, resolve_resume

log = logging.getLogger(__name__)
FORMAT_VERSION = 1


@dataclass
class ExportResult:
    """The exported folder and what it references."""

    model_dir: Path
    base_model: str
    checkpoint: Path | None
    steps: int | None


def _checkpoint(cfg: DictConfig) -> Path:
    run_dir = Path(cfg.run_dir)
    if cfg.checkpoint == "latest" and not list_checkpoints(run_dir):
        raise ModelError(f"{run_dir}: no checkpoint found (train first, or pass checkpoint=path)")
    ckpt = resolve_resume(run_dir, str(cfg.checkpoint))
    assert ckpt is not None
    if not (ckpt / "controlnet" / "config.json").exists():
        raise ModelError(f"{ckpt}: checkpoint has no controlnet/ folder")
    return ckpt


def _write_base(train_cfg: dict[str, Any], dest: Path) -> str:
    """The base reference; for the tiny preset, copy (or rebuild) its weights into base/."""
    model = train_cfg["model"]
    resolved = str(train_cfg.get("resolved_base") or model.get("base"))
    if model["name"] != "tiny":
        return resolved
    if resolved.startswith("tiny-random"):  # random tiny weights: rebuilt from their seed
        save_pipeline_parts(build_tiny_components(int(model.get("seed", 0))), dest / "base")
    else:
        if not (Path(resolved) / "model_index.json").exists():
            raise ModelError(f"{resolved}: the tiny base this run was trained on is gone")
        shutil.copytree(resolved, dest / "base")
    return "base"


def _model_card(info: dict[str, Any], train_cfg: dict[str, Any] | None, has_grid: bool) -> str:
    fid = info.get("fidelity") or {}
    lines = [f"# Seg2Sat ControlNet: {info['name']}", "",
             "A ControlNet that turns FLAIR land-cover colour hints into aerial images.", "",
             "## Model", f"- base: `{info['base_model']}`", f"- resolution: {info['resolution']} px",
             f"- prediction type: {info['prediction_type']}", f"- training steps: {info.get('steps')}", ""]
    if train_cfg:
        lines += ["## Data", f"- prepared dataset: `{train_cfg.get('prepared_dir')}`",
                  f"- batch size {train_cfg.get('batch_size')} x accumulation "
                  f"{train_cfg.get('gradient_accumulation_steps')}, learning rate {train_cfg.get('learning_rate')}",
                  f"- augmentations: {train_cfg.get('augment')}", ""]
    lines += ["## Mask fidelity",
              "Each generated pixel is classified by per-class colour statistics learned from the training",
              "images; mIoU against the hint, on held-out maps (validation domains)."]
    if fid:
        t, u = fid["trained"]["miou"], fid["untrained"]["miou"]
        lines += ["", "| ControlNet | mIoU | pixel accuracy |", "| --- | ---: | ---: |",
                  f"| trained | {t:.3f} | {fid['trained']['pixel_accuracy']:.3f} |",
                  f"| untrained (same base, same seeds) | {u:.3f} | {fid['untrained']['pixel_accuracy']:.3f} |",
                  f"| real images (upper bound of the metric) | {fid['real_images']['miou']:.3f} | "
                  f"{fid['real_images']['pixel_accuracy']:.3f} |", "",
                  f"Training improves mIoU by {t - u:+.3f} ({t / max(u, 1e-9):.1f}x) on {fid['num_images']} maps."]
    else:
        lines += ["", "Not measured for this export."]
    if has_grid:
        lines += ["", "## Validation", "Hints (top) and generated images (bottom):", "",
                  "![validation grid](validation_grid.png)"]
    lines += ["", "## Legend", "", legend_markdown(), "", "## Caption template", "",
              f"`{info['caption_template']}`", ""]
    return "\n".join(lines)


def run(cfg: DictConfig) -> ExportResult:
    """Export a checkpoint (or a plain ControlNet folder) as a Seg2Sat model folder."""
    from diffusers import ControlNetModel

    out = Path(cfg.output_dir)
    if out.exists() and not cfg.overwrite:
        raise ModelError(f"{out}: already exists (pass overwrite=true to replace it)")
    # 1. Where the ControlNet and its training config come from.
    train_cfg: dict[str, Any] | None = None
    ckpt: Path | None = None
    steps = None
    if cfg.controlnet_dir:
        cn_dir = Path(cfg.controlnet_dir)
        if not cfg.base_model:
            raise ModelError(f"{cn_dir}: exporting a plain ControlNet needs base_model=<hub id or folder>")
    else:
        ckpt = _checkpoint(cfg)
        cn_dir = ckpt / "controlnet"
        train_cfg = OmegaConf.to_container(OmegaConf.load(Path(cfg.run_dir) / "config.yaml"), resolve=True)
        steps = int(ckpt.name.split("-")[-1])
    controlnet = ControlNetModel.from_pretrained(cn_dir, use_safetensors=True)
    # 2. Write everything into a temp folder, rename at the end.
    with atomic_dir(out, overwrite=bool(cfg.overwrite)) as tmp:
        controlnet.save_pretrained(tmp / "controlnet", safe_serialization=True)
        if cfg.fp16:
            controlnet.to(torch.float16).save_pretrained(tmp / "controlnet_fp16", safe_serialization=True)
        base = str(cfg.base_model) if cfg.base_model else _write_base(train_cfg, tmp)  # type: ignore[arg-type]
        grids = sorted(Path(cfg.run_dir).glob("validation/step-*/grid.png"),
                       key=lambda p: int(p.parent.name.split("-")[1])) if ckpt else []
        if grids:
            shutil.copy(grids[-1], tmp / "validation_grid.png")
        if train_cfg:
            write_text(tmp / "training_config.yaml", OmegaConf.to_yaml(OmegaConf.create(train_cfg)))
        model = (train_cfg or {}).get("model", {})
        info = {
            "format": "seg2sat-model", "version": FORMAT_VERSION, "name": out.name,
            "base_model": base, "controlnet": "controlnet",
            "controlnet_fp16": "controlnet_fp16" if cfg.fp16 else None,
            "resolution": int(model.get("resolution", 512)),
            "prediction_type": "epsilon",
            "caption_template": DEFAULT_TEMPLATE,
            "legend": [{"code": c.code, "name": c.name, "color": c.hex} for c in CLASSES],
            "steps": steps, "checkpoint": str(ckpt) if ckpt else None,
            "fidelity": OmegaConf.to_container(cfg.fidelity, resolve=True) if cfg.fidelity else None,
        }
        from diffusers import DDPMScheduler

        base_path = tmp / base if (tmp / base).exists() else Path(base)
        if (base_path / "scheduler" / "scheduler_config.json").exists():
            info["prediction_type"] = DDPMScheduler.from_pretrained(base_path, subfolder="scheduler").config.prediction_type
        write_json(tmp / MODEL_INFO, info)
        write_text(tmp / "README.md", _model_card(info, train_cfg, bool(grids)))
    log.info("export: %s (base %s)", out, base)
    return ExportResult(model_dir=out, base_model=base, checkpoint=ckpt, steps=steps)
