"""A Seg2Sat model folder from a training checkpoint or a plain ControlNet: weights, base, card.

The folder holds the ControlNet in diffusers format (safetensors), a reference to its
Stable Diffusion base (hub id or path; the tiny base is copied in, since it exists nowhere
else), the legend and caption template it was trained with, the training config, the last
validation grid, a model card the Hugging Face hub reads and a STAC MLM item
(`seg2sat.training.card`). It is written to a temp folder and renamed when complete.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from seg2sat.atomic import atomic_dir, size_of, sweep_tmp, write_json, write_text
from seg2sat.errors import ModelError
from seg2sat.generation.models import MODEL_INFO, read_model_info, save_pipeline_parts
from seg2sat.generation.tiny import TINY_PRESET, TINY_RANDOM, build_tiny_components
from seg2sat.labels import CLASSES
from seg2sat.prompts import DEFAULT_TEMPLATE
from seg2sat.training.card import model_card, write_mlm_item
from seg2sat.training.checkpoint import list_checkpoints, resolve_resume

log = logging.getLogger(__name__)
FORMAT_VERSION = 1


@dataclass
class ExportResult:
    """The exported folder and what it references."""

    model_dir: Path
    base_model: str
    checkpoint: Path | None
    steps: int | None
    hub_files: list[str] = field(default_factory=list)  # what `push_to_hub` sent (or would send)


def _checkpoint(cfg: DictConfig) -> Path:
    run_dir = Path(cfg.run_dir)
    if cfg.checkpoint == "latest" and not list_checkpoints(run_dir):
        raise ModelError(f"{run_dir}: no checkpoint found (train first, or pass checkpoint=path)")
    ckpt = resolve_resume(run_dir, str(cfg.checkpoint))
    assert ckpt is not None
    if not (ckpt / "controlnet" / "config.json").exists():
        raise ModelError(f"{ckpt}: checkpoint has no controlnet/ folder")
    return ckpt


def trained_on_base(train_cfg: dict[str, Any] | None, base_model: str | None) -> str:
    """The base the ControlNet was trained on, as training loaded it (a folder, a hub id, `tiny-random-<seed>`).

    For the tiny preset `base_model` is the copy inside the exported folder; this names its origin.
    """
    if train_cfg is None:  # a plain ControlNet: the base it is exported with
        return str(base_model)
    return str(train_cfg.get("resolved_base") or train_cfg["model"].get("base"))


def _write_base(train_cfg: dict[str, Any], dest: Path) -> str:
    """The base reference; for the tiny preset, copy (or rebuild) its weights into base/."""
    model = train_cfg["model"]
    resolved = trained_on_base(train_cfg, None)
    if model["name"] != TINY_PRESET:
        return resolved
    if resolved.startswith(TINY_RANDOM):  # random tiny weights: rebuilt from their seed
        save_pipeline_parts(build_tiny_components(int(model.get("seed", 0))), dest / "base")
    else:
        if not (Path(resolved) / "model_index.json").exists():
            raise ModelError(f"{resolved}: the tiny base this run was trained on is gone")
        shutil.copytree(resolved, dest / "base")
    return "base"


def trained_with(train_cfg: dict[str, Any] | None) -> tuple[int, str]:
    """The resolution a run trained at and the caption template its prepared data used.

    Both come from the run itself (its config, and the `prepare_config.yaml` of its data), not
    from the preset's defaults: a model trained at 768 px on French captions must say so.
    """
    if not train_cfg:  # a plain ControlNet: its base's resolution, captions of our default template
        return 512, DEFAULT_TEMPLATE
    resolution = int(train_cfg.get("resolution") or train_cfg.get("model", {}).get("resolution", 512))
    prepare_yaml = Path(str(train_cfg.get("prepared_dir"))) / "prepare_config.yaml"
    if not prepare_yaml.exists():
        log.warning("export: %s not found; recording the default caption template", prepare_yaml)
        return resolution, DEFAULT_TEMPLATE
    caption = OmegaConf.load(prepare_yaml).get("caption") or {}
    return resolution, str(caption.get("template") or DEFAULT_TEMPLATE)


def write_model_card(model_dir: str | Path) -> Path:
    """(Re)write README.md (the hub's card) and model.stac.json of a folder from its seg2sat.json."""
    model_dir = Path(model_dir)
    info = read_model_info(model_dir)
    train_yaml = model_dir / "training_config.yaml"
    train_cfg = OmegaConf.to_container(OmegaConf.load(train_yaml), resolve=True) if train_yaml.exists() else None
    readme = write_text(model_dir / "README.md",
                        model_card(info, train_cfg, (model_dir / "validation_grid.png").exists()))  # type: ignore[arg-type]
    write_mlm_item(model_dir, info)
    return readme


def card_settings(cfg: DictConfig, train_cfg: dict[str, Any] | None) -> dict[str, Any]:
    """The card's licence, datasets and tags: the export's `card` group, the licence else the base preset's."""
    card = OmegaConf.to_container(cfg.card, resolve=True) if cfg.get("card") else {}
    preset = (train_cfg or {}).get("model") or {}
    return {"license": card.get("license") or preset.get("license") or "other",
            "datasets": list(card.get("datasets") or []), "tags": list(card.get("tags") or [])}


def record_fidelity(model_dir: str | Path, fidelity: dict[str, Any]) -> None:
    """Store measured fidelity in an exported folder's seg2sat.json and model card (atomic writes).

    A measured `recommended_steps` (the fewest steps within noise of the best) becomes the model's
    recommended `sampling.steps`: infer, mosaic, the app and the dry-run estimates use it when
    their config leaves steps null.
    """
    model_dir = Path(model_dir)
    for name in (MODEL_INFO, "README.md"):  # what a killed run left
        sweep_tmp(model_dir, name)
    info = read_model_info(model_dir)
    info["fidelity"] = fidelity
    if fidelity.get("recommended_steps"):
        info["sampling"] = {**(info.get("sampling") or {}), "steps": int(fidelity["recommended_steps"])}
    write_json(model_dir / MODEL_INFO, info, durable=True)
    write_model_card(model_dir)


def export_model(cfg: DictConfig) -> ExportResult:
    """Export a checkpoint (or a plain ControlNet folder) as a Seg2Sat model folder (`conf/export.yaml`)."""
    from diffusers import ControlNetModel

    out = Path(cfg.output_dir)
    if out.exists() and not cfg.overwrite:
        raise ModelError(f"{out}: already exists (pass overwrite=true to replace it)")
    sweep_tmp(out.parent, out.name)  # what a killed export of this folder left
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
    with atomic_dir(out, overwrite=bool(cfg.overwrite), needed=2 * size_of(cn_dir)) as tmp:
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
        resolution, template = trained_with(train_cfg)
        info = {
            "format": "seg2sat-model", "version": FORMAT_VERSION, "name": out.name,
            "base_model": base, "trained_on_base": trained_on_base(train_cfg, cfg.base_model),
            "controlnet": "controlnet",
            "controlnet_fp16": "controlnet_fp16" if cfg.fp16 else None,
            "resolution": resolution,
            "prediction_type": "epsilon",
            "caption_template": template,
            "legend": [{"code": c.code, "name": c.name, "color": c.hex} for c in CLASSES],
            "steps": steps, "checkpoint": str(ckpt) if ckpt else None,
            "fidelity": OmegaConf.to_container(cfg.fidelity, resolve=True) if cfg.fidelity else None,
            "sampling": OmegaConf.to_container(cfg.sampling, resolve=True) if cfg.get("sampling") else None,
            "card": card_settings(cfg, train_cfg),
        }
        from diffusers import DDPMScheduler

        base_path = tmp / base if (tmp / base).exists() else Path(base)
        if (base_path / "scheduler" / "scheduler_config.json").exists():
            info["prediction_type"] = DDPMScheduler.from_pretrained(base_path, subfolder="scheduler").config.prediction_type
        write_json(tmp / MODEL_INFO, info)
        write_text(tmp / "README.md", model_card(info, train_cfg, bool(grids)))
        write_mlm_item(tmp, info)
    log.info("export: %s (base %s)", out, base)
    return ExportResult(model_dir=out, base_model=base, checkpoint=ckpt, steps=steps)
