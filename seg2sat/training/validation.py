"""Validation during training: the fixed validation maps generated, spread over ranks, saved and logged."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig
from PIL import Image

from seg2sat.atomic import atomic_dir
from seg2sat.data.dataset import load_rgb, read_manifest
from seg2sat.generation.models import Components


def validate(accelerator: Any, comps: Components, controlnet: Any, cfg: DictConfig, run_dir: Path,
             step: int) -> Path | None:
    """Generate the fixed validation maps, spread over ranks; main saves images and a grid."""
    from seg2sat.generation.pipeline import generate
    from seg2sat.generation.tiny import assemble_pipeline

    records = read_manifest(cfg.prepared_dir, "val")[: int(cfg.num_validation_images)]
    if not records:
        return None
    parts = {"vae": comps.vae, "text_encoder": comps.text_encoder, "tokenizer": comps.tokenizer,
             "unet": comps.unet, "scheduler": comps.noise_scheduler}
    pipe = assemble_pipeline(parts, accelerator.unwrap_model(controlnet), "unipc")
    pipe.set_progress_bar_config(disable=True)
    mine = list(range(accelerator.process_index, len(records), accelerator.num_processes))
    outputs = []
    for i in mine:
        rec = records[i]
        hint = load_rgb(Path(cfg.prepared_dir) / rec["hint"])
        with torch.autocast(accelerator.device.type, enabled=accelerator.mixed_precision != "no"):
            image = generate(pipe, hint, rec["caption"], steps=int(cfg.validation_inference_steps),
                             guidance_scale=float(cfg.validation_guidance_scale), seed=int(cfg.seed) + i)
        outputs.append((i, hint, image))
    gathered = accelerator.gather_for_metrics(outputs, use_gather_object=True)
    if not accelerator.is_main_process:
        return None
    gathered = sorted(gathered, key=lambda t: t[0])
    out = run_dir / "validation" / f"step-{step}"
    grid = np.concatenate([np.concatenate([hint, image], axis=0) for _, hint, image in gathered], axis=1)
    with atomic_dir(out, overwrite=True) as tmp:  # the step's folder appears whole, or not at all
        for i, _, image in gathered:
            Image.fromarray(image).save(tmp / f"{i:02d}.png")
        Image.fromarray(grid).save(tmp / "grid.png")
    for tracker in accelerator.trackers:
        if tracker.name == "wandb":
            import wandb

            tracker.log({"validation": [wandb.Image(grid, caption=f"step {step}")]}, step=step)
        elif tracker.name == "tensorboard":
            tracker.writer.add_image("validation", grid, step, dataformats="HWC")
    return out / "grid.png"
