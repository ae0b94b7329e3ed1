"""`seg2sat specialize`: a model folder whose base UNet is adapted to a place's unlabelled images.

The place's images are found and checked (size, bands, 8-bit) and the output folder refused if
it exists before any model loads; the UNet is adapted (`seg2sat.training.specialize`), the new
folder written atomically, and, with `measure.enabled`, the KID of the model's images to the
place's real images is measured before and after and recorded in its seg2sat.json.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from seg2sat.atomic import write_json
from seg2sat.errors import ConfigError, ModelError
from seg2sat.generation.models import (
    MODEL_INFO,
    load_components,
    read_model_info,
    resolve_device_dtype,
)
from seg2sat.training.specialize import (
    SpecializeSettings,
    base_of,
    read_place_images,
    specialize_unet,
    write_specialized,
)

log = logging.getLogger(__name__)


@dataclass
class SpecializeRunResult:
    """The new model folder, what it learned from, and the KID before/after when measured."""

    model_dir: Path
    images: int
    steps: int
    losses: list[float]
    kid: dict[str, Any] = field(default_factory=dict)  # {"before": {...}, "after": {...}} (x1000)


def _measure_records(cfg: DictConfig) -> tuple[Path, list[dict[str, Any]]]:
    """The prepared maps `measure` renders: checked before anything loads."""
    from seg2sat.data.dataset import read_manifest

    if not cfg.measure.maps:
        raise ConfigError("measure.enabled=true needs measure.maps=<a prepared dataset of the place>")
    maps = Path(str(cfg.measure.maps))
    records = [r for r in read_manifest(maps) if not cfg.measure.domain or r.get("domain") == cfg.measure.domain]
    if len(records) < 4:
        raise ConfigError(f"{maps}: {len(records)} record(s) of domain {cfg.measure.domain}; KID needs at least 4")
    return maps, records[: int(cfg.measure.num_images)]


def place_kid(model_dir: Path, maps: Path, records: list[dict[str, Any]], cfg: DictConfig) -> dict[str, float]:
    """KID/FID of a model's images of `records`' maps to those records' real images."""
    from seg2sat.data.dataset import load_rgb
    from seg2sat.evaluation.realism import default_dir, fetch_inception, realism_scores
    from seg2sat.generation.models import load_model
    from seg2sat.generation.pipeline import generate_batch
    from seg2sat.generation.sampling import Sampling

    device, dtype = resolve_device_dtype(str(cfg.device), "auto")
    model = load_model(model_dir, device=device, dtype=dtype, scheduler=str(cfg.sampling.scheduler))
    s = Sampling.from_config(cfg.sampling, model)
    fakes = []
    for i in range(0, len(records), s.batch_size):
        chunk = records[i:i + s.batch_size]
        fakes.append(generate_batch(model.pipe, [load_rgb(maps / r["hint"]) for r in chunk], [r["caption"] for r in chunk],
                                    negative_prompt=s.negative_prompt, steps=s.steps, guidance_scale=s.guidance_scale,
                                    controlnet_scale=s.controlnet_scale, seeds=[s.seed + i + j for j in range(len(chunk))]))
    real = np.stack([load_rgb(maps / r["image"]) for r in records])
    weights = fetch_inception() if cfg.measure.fetch else default_dir() / "inception-2015-12-05.pt"
    return realism_scores(real, np.concatenate(fakes), weights)


def run(cfg: DictConfig) -> SpecializeRunResult:
    """Specialise `model_path` on `images` (conf/specialize.yaml)."""
    # 1. Settings, model folder, output and images: every check before any model loads.
    settings = SpecializeSettings.from_config(OmegaConf.to_container(cfg.train, resolve=True))  # type: ignore[arg-type]
    model_dir, out = Path(str(cfg.model_path)), Path(str(cfg.output_dir))
    info = read_model_info(model_dir)
    if out.exists() and not cfg.overwrite:
        raise ModelError(f"{out}: already exists (pass overwrite=true to replace it)")
    if out.resolve() == model_dir.resolve():
        raise ModelError(f"{out}: the output folder is the input model folder; choose another output_dir")
    place = read_place_images(str(cfg.images), int(info.get("resolution") or 512), cfg.domain)
    measured = _measure_records(cfg) if cfg.measure.enabled else None
    # 2. The base, then its UNet adapted to the place.
    device, _ = resolve_device_dtype(str(cfg.device), "float32")
    comps = load_components({"name": "specialize", "base": base_of(model_dir, info)}, device=device)
    bar = tqdm(total=settings.steps, desc="specialize", unit="step")
    trained = specialize_unet(comps, place.pixels, settings, Path(str(cfg.run_dir)), cfg.resume,
                              progress=lambda done, total: bar.update(done - bar.n))
    bar.close()
    # 3. The new folder: the old one with the adapted UNet fused into its base.
    record = {"images": str(place.source), "domain": place.domain, "num_images": len(place.paths),
              "from_model": str(model_dir), "settings": {**asdict(settings), "target_modules": list(settings.target_modules)},
              "losses": [round(v, 5) for v in trained.losses]}
    parts = {"unet": trained.unet, "vae": comps.vae, "text_encoder": comps.text_encoder, "tokenizer": comps.tokenizer,
             "scheduler": comps.noise_scheduler}
    write_specialized(model_dir, out, info, parts, record, overwrite=bool(cfg.overwrite))
    result = SpecializeRunResult(model_dir=out, images=len(place.paths), steps=trained.steps, losses=trained.losses)
    # 4. KID to the place's real images, before and after.
    if measured is not None:
        result.kid = {"before": place_kid(model_dir, *measured, cfg), "after": place_kid(out, *measured, cfg)}
        new_info = read_model_info(out)
        new_info["specialized"]["kid_to_place"] = result.kid
        write_json(out / MODEL_INFO, new_info, durable=True)
    log.info("specialize: %s (%d images of %s, %d steps)%s", out, result.images, place.source, result.steps,
             f"; KID x1000 {result.kid['before']['kid_x1000']} -> {result.kid['after']['kid_x1000']}" if result.kid else "")
    return result
