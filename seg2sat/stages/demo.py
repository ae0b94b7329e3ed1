"""`seg2sat demo`: the whole product on the embedded default, with no download.

1. synthetic sample data in the FLAIR layout  (`sample-data`)
2. prepare it                                   (`prepare`)
3. pretrain the tiny Stable Diffusion base      (a real run starts from SD weights instead)
4. train a ControlNet on it                     (`train`)
5. measure mask fidelity, trained vs untrained ControlNet, on held-out maps
6. export the model folder                      (`export`)
7. generate a sample image next to its hint

Each step skips work whose output already exists (unless `rebuild=true`), so a killed demo
resumes where it stopped.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf
from PIL import Image

from seg2sat.atomic import atomic_path, write_json
from seg2sat.config import compose
from seg2sat.data.dataset import load_rgb, read_manifest

log = logging.getLogger(__name__)


@dataclass
class DemoResult:
    """What the demo built and measured."""

    model_dir: Path
    sample_image: Path
    fidelity: dict[str, Any]
    seconds: dict[str, float] = field(default_factory=dict)


def _paths_overrides(cfg: DictConfig) -> list[str]:
    """Forward the demo's resolved paths to every stage it runs."""
    paths = OmegaConf.to_container(cfg.paths, resolve=True)
    return [f"paths.{k}={v}" for k, v in paths.items()]


def _stage_cfg(cfg: DictConfig, stage: str, extra: list[str]) -> DictConfig:
    return compose(stage, [*_paths_overrides(cfg), *extra])


def measure_fidelity(
    prepared_dir: Path,
    trained_pipe: Any,
    untrained_pipe: Any,
    num_images: int,
    steps: int,
    guidance_scale: float,
    seed: int,
) -> dict[str, Any]:
    """MIoU of images generated from held-out hints, trained vs untrained ControlNet.

    The colour model is fitted on the training split's real images; the scored maps come
    from the validation split (other domains), with the same seeds for both models.
    """
    from seg2sat.fidelity import fit_colour_model, mask_fidelity
    from seg2sat.hints import hint_to_codes
    from seg2sat.pipeline import generate

    records = read_manifest(prepared_dir)
    train = [r for r in records if r["split"] == "train"]
    val = [r for r in records if r["split"] == "val"][:num_images]
    if not val:
        raise ValueError(f"{prepared_dir}: no validation tiles to measure fidelity on")
    colour_model = fit_colour_model(
        (load_rgb(prepared_dir / r["image"]), hint_to_codes(load_rgb(prepared_dir / r["hint"])))
        for r in train
    )
    hints = [load_rgb(prepared_dir / r["hint"]) for r in val]
    targets = [hint_to_codes(h) for h in hints]
    scores = {}
    for name, pipe in (("trained", trained_pipe), ("untrained", untrained_pipe)):
        images = [
            generate(pipe, h, r["caption"], steps=steps, guidance_scale=guidance_scale, seed=seed + i)
            for i, (h, r) in enumerate(zip(hints, val, strict=True))
        ]
        scores[name] = mask_fidelity(colour_model, images, targets)
    scores["real_images"] = mask_fidelity(
        colour_model, [load_rgb(prepared_dir / r["image"]) for r in val], targets
    )
    scores["num_images"] = len(val)
    scores["miou_gain"] = scores["trained"]["miou"] - scores["untrained"]["miou"]
    return scores


def _side_by_side(hint: np.ndarray, image: np.ndarray, scale: int) -> np.ndarray:
    big = [np.kron(a, np.ones((scale, scale, 1), np.uint8)) for a in (hint, image)]
    gap = np.full((big[0].shape[0], 8, 3), 255, np.uint8)
    return np.concatenate([big[0], gap, big[1]], axis=1)


def run(cfg: DictConfig) -> DemoResult:
    """Run the embedded demo end to end; returns the model folder and the measured fidelity."""
    from seg2sat import models
    from seg2sat.pipeline import generate
    from seg2sat.stages import export, prepare, sample_data, train
    from seg2sat.tiny_base import pretrain_tiny_base

    seconds: dict[str, float] = {}
    redo = ["overwrite=true"] if cfg.rebuild else []

    def timed(name: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        out = fn(*args, **kwargs)
        seconds[name] = round(time.perf_counter() - t0, 2)
        log.info("demo: %s done in %.1f s", name, seconds[name])
        return out

    # 1-2. Data.
    timed("sample_data", sample_data.run, _stage_cfg(cfg, "sample_data", [*cfg.sample_data]))
    prep = timed("prepare", prepare.run, _stage_cfg(cfg, "prepare", [*cfg.prepare, *redo]))
    prepared_dir = Path(prep.prepared_dir)

    # 3. The tiny base (a real run loads Stable Diffusion instead).
    base_dir = Path(cfg.paths.models_dir) / "tiny-base"
    if cfg.rebuild or not (base_dir / "model_index.json").exists():
        timed("pretrain_base", pretrain_tiny_base, prepared_dir, base_dir,
              vae_steps=cfg.pretrain.vae_steps, unet_steps=cfg.pretrain.unet_steps,
              batch_size=cfg.pretrain.batch_size, seed=cfg.seed)

    # 4. ControlNet training on top of it.
    train_cfg = _stage_cfg(cfg, "train", [*cfg.train, "model=tiny", f"model.pretrained_dir={base_dir}",
                                          f"seed={cfg.seed}", "resume=latest"])
    if cfg.rebuild and Path(train_cfg.run_dir).exists():
        shutil.rmtree(train_cfg.run_dir)  # a rebuilt base invalidates the old run
    trained = timed("train", train.run, train_cfg)

    # 5. Fidelity, trained vs untrained, same seeds and maps.
    trained_pipe = models.load_pipeline(Path(trained.checkpoints[-1]) / "controlnet", base=base_dir)
    untrained_pipe = models.load_pipeline_from_base(base_dir)
    fidelity = timed("fidelity", measure_fidelity, prepared_dir, trained_pipe, untrained_pipe,
                     cfg.fidelity.num_images, cfg.fidelity.steps, cfg.fidelity.guidance_scale, cfg.seed)

    # 6. Export with the measured numbers in the model card.
    model_dir = Path(cfg.paths.models_dir) / cfg.model_name
    export_cfg = _stage_cfg(cfg, "export", [*cfg.export, f"run_dir={trained.run_dir}",
                                            f"output_dir={model_dir}", "overwrite=true"])
    OmegaConf.update(export_cfg, "fidelity", fidelity, force_add=True)
    timed("export", export.run, export_cfg)

    # 7. One image from a held-out map, next to its hint.
    pipe = models.load_pipeline(model_dir)
    record = next(r for r in read_manifest(prepared_dir) if r["split"] == "val")
    hint = load_rgb(prepared_dir / record["hint"])
    image = timed("sample", generate, pipe, hint, record["caption"], steps=cfg.sample.steps,
                  guidance_scale=cfg.sample.guidance_scale, seed=cfg.seed)
    out_dir = Path(cfg.paths.outputs_dir) / "demo"
    sample_path = out_dir / "sample.png"
    with atomic_path(sample_path) as tmp:
        Image.fromarray(_side_by_side(hint, image, scale=4)).save(tmp, format="PNG")
    write_json(out_dir / "demo.json", {"model_dir": str(model_dir), "sample": str(sample_path),
                                       "caption": record["caption"], "fidelity": fidelity,
                                       "seconds": seconds})
    print(f"demo: model in {model_dir}\n"
          f"demo: sample image {sample_path} (hint | generated)\n"
          f"demo: mask fidelity mIoU trained {fidelity['trained']['miou']:.3f} vs untrained "
          f"{fidelity['untrained']['miou']:.3f} (real images {fidelity['real_images']['miou']:.3f})")
    return DemoResult(model_dir=model_dir, sample_image=sample_path, fidelity=fidelity, seconds=seconds)
