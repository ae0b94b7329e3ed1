"""A generator specialised on a place: the base's UNet adapted to a place's unlabelled images.

FLAIR's real difficulty is the shift between places, dates and cameras, and aerial images
*without* labels exist for every place. A ControlNet needs maps to learn; the UNet does not:
it learns how a place looks (its colours, its textures) by plain denoising of the place's
images, conditioned on one caption, with no map. The ControlNet is kept as it is and steers the
adapted UNet. The adaptation is a LoRA by default (low-rank, `peft`): it moves the UNet little,
so the residuals the ControlNet adds still land where they were trained to; `method=full`
fine-tunes every UNet weight instead. At the end the LoRA is fused into the UNet, so the result
is a plain model folder that `infer`, `mosaic`, `synthesize`, `evaluate`, the app and stock
diffusers load with no change.

Runs resume after a kill: every `checkpointing_steps` the trainable weights, the optimizer, the
lr schedule and the step are saved atomically (`checkpoints/checkpoint-N`, with checksums); a
step's batch, noise and timesteps depend only on (seed, step), so a resumed run equals an
uninterrupted one.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from seg2sat.atomic import atomic_dir, sha256_of, write_json
from seg2sat.data.dataset import tokenize
from seg2sat.data.flair import load_metadata
from seg2sat.errors import ConfigError, DatasetError, RasterError
from seg2sat.geo.raster import (
    GEOTIFF_SUFFIXES,
    PLAIN_IMAGE_SUFFIXES,
    raster_info,
    read_plain_image,
    read_raster,
)
from seg2sat.training.checkpoint import CHECKSUMS, TrainState, resolve_resume, sweep_checkpoint_tmp
from seg2sat.training.objective import sample_timesteps

log = logging.getLogger(__name__)
METHODS = ("lora", "full")
# Every linear and conv of the UNet's blocks: colour and texture live in the resnets as much as in
# the attention (a LoRA on attention alone barely moved the colour cast of a looked domain).
LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2",
                "conv1", "conv2", "conv_shortcut", "time_emb_proj")
TRAINABLE = "trainable.safetensors"  # the trained weights of a checkpoint (LoRA's alone, or the whole UNet)


@dataclass(frozen=True)
class SpecializeSettings:
    """How the UNet is adapted (conf/specialize.yaml's `train` group)."""

    method: str = "lora"
    steps: int = 300
    batch_size: int = 8
    learning_rate: float = 1e-4
    lr_warmup_steps: int = 20
    rank: int = 8  # LoRA rank; alpha = rank keeps LoRA's scale at 1
    alpha: float = 8.0
    target_modules: tuple[str, ...] = LORA_TARGETS
    caption: str = ""  # the one caption every image is denoised under ("": the empty prompt)
    max_grad_norm: float = 1.0
    offset_noise: float = 0.0  # a constant per image and channel added to the noise (see `denoising_loss`)
    checkpointing_steps: int = 100
    seed: int = 0

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"train.method={self.method!r}: choose one of {', '.join(METHODS)}")
        for name in ("steps", "batch_size", "rank", "checkpointing_steps"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"train.{name}={getattr(self, name)}: expected a whole number >= 1")
        if not float(self.learning_rate) > 0:
            raise ConfigError(f"train.learning_rate={self.learning_rate}: expected a positive rate")

    @classmethod
    def from_config(cls, settings: Mapping[str, Any]) -> SpecializeSettings:
        """From a config mapping; unknown keys are one-line errors."""
        unknown = sorted(set(settings) - set(cls.__dataclass_fields__))
        if unknown:
            raise ConfigError(f"train: unknown key(s) {', '.join(unknown)}; known: {', '.join(cls.__dataclass_fields__)}")
        values = dict(settings)
        if "target_modules" in values:
            values["target_modules"] = tuple(values["target_modules"])
        return cls(**values)


# ---------------------------------------------------------------------------------------------
# The place's images: found and checked before any model loads
# ---------------------------------------------------------------------------------------------


@dataclass
class PlaceImages:
    """A place's unlabelled images, checked, as (N, H, W, 3) uint8 RGB."""

    source: Path
    domain: str | None
    paths: list[Path]
    pixels: np.ndarray = field(repr=False)


def _image_files(folder: Path) -> list[Path]:
    """A FLAIR tree's `IMG_*` tiles when it has any (masks are never images), else every image file."""
    flair = sorted(p for p in folder.rglob("IMG_*") if p.suffix.lower() in GEOTIFF_SUFFIXES)
    if flair:
        return flair
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in (*GEOTIFF_SUFFIXES,
                                                                                          *PLAIN_IMAGE_SUFFIXES))


def find_place_images(source: str | Path, domain: str | None = None) -> list[Path]:
    """The image files of a place: a folder of GeoTIFF/PNG tiles, or a FLAIR tree filtered by domain.

    A FLAIR-layout tree's images are its `IMG_*` files (its masks are left out); `domain` keeps
    those whose metadata or path names that domain (`D013_2020`, FLAIR-HUB's `D013-2020`).
    """
    folder = Path(source)
    if not folder.is_dir():
        raise DatasetError(f"{folder}: images folder not found (images=)")
    files = _image_files(folder)
    if domain:
        metadata, _ = load_metadata(folder)
        files = [p for p in files if (metadata.get(p.stem) or {}).get("domain") == domain
                 or any(part.startswith(domain) for part in p.relative_to(folder).parts[:-1])]
    if not files:
        where = f" of domain {domain}" if domain else ""
        raise DatasetError(f"{folder}: no images{where} found (GeoTIFF {'/'.join(GEOTIFF_SUFFIXES)} or "
                           f"{'/'.join(PLAIN_IMAGE_SUFFIXES)} tiles, or a FLAIR tree's IMG_* files)")
    return files


def check_place_images(paths: Sequence[Path], size: int) -> None:
    """Every image is `size` x `size`, 8-bit, with at least 3 bands (R, G, B first); headers only."""
    for path in paths:
        info = raster_info(path)
        if (info["height"], info["width"]) != (size, size):
            raise RasterError(f"{path}: {info['width']}x{info['height']} px; the model's tiles are {size}x{size} "
                              "(cut the place's images into tiles of that size)")
        if info["count"] < 3:
            raise RasterError(f"{path}: {info['count']} band(s); expected an image with R, G, B first "
                              "(a mask or a single band is not an image of the place)")
        if any(d != "uint8" for d in info["dtypes"][:3]):
            raise RasterError(f"{path}: {info['dtypes'][0]} bands; expected 8-bit (uint8) R, G, B")


def read_place_images(source: str | Path, size: int, domain: str | None = None) -> PlaceImages:
    """Find, check and read a place's images (R, G, B of each)."""
    paths = find_place_images(source, domain)
    check_place_images(paths, size)
    pixels = np.stack([read_plain_image(p) if p.suffix.lower() in PLAIN_IMAGE_SUFFIXES
                       else read_raster(p, bands=[1, 2, 3], require_crs=False).array.transpose(1, 2, 0)
                       for p in paths])
    return PlaceImages(source=Path(source), domain=domain, paths=list(paths), pixels=pixels)


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------


def _step_generator(seed: int, step: int, device: torch.device) -> torch.Generator:
    """A step's batch, flips, noise and timesteps depend only on (seed, step): exact resume."""
    g = torch.Generator(device=device)
    g.manual_seed(int(np.random.SeedSequence([seed, step]).generate_state(1)[0]))
    return g


def _trainable_unet(unet: Any, s: SpecializeSettings) -> list[torch.nn.Parameter]:
    """Add the LoRA (or unfreeze the whole UNet); returns the parameters to train, in fp32."""
    unet.float().train()
    if s.method == "full":
        unet.requires_grad_(True)
    else:
        try:
            from peft import LoraConfig
        except ImportError as exc:
            raise ConfigError("train.method=lora needs peft (pip install peft), or use train.method=full") from exc
        unet.requires_grad_(False)
        with torch.random.fork_rng():  # the LoRA's random start depends on the seed alone
            torch.manual_seed(int(s.seed))
            unet.add_adapter(LoraConfig(r=int(s.rank), lora_alpha=float(s.alpha), init_lora_weights="gaussian",
                                        target_modules=list(s.target_modules)))
    return [p for p in unet.parameters() if p.requires_grad]


@torch.no_grad()
def encode_posteriors(vae: Any, images: np.ndarray, batch_size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """The VAE posterior (mean, std) of every image, once: a step then costs the UNet alone.

    A new latent is still sampled from the posterior at every step, as the training loop's
    latent cache does; 64 x 64 x 4 latents of SD are 128 kB an image (mean and std, fp32).
    """
    means, stds = [], []
    for i in range(0, len(images), batch_size):
        x = torch.from_numpy(images[i:i + batch_size]).permute(0, 3, 1, 2).to(vae.device, vae.dtype) / 127.5 - 1
        dist = vae.encode(x).latent_dist
        means.append(dist.mean.float())
        stds.append(dist.std.float())
    return torch.cat(means), torch.cat(stds)


def _batch_latents(posteriors: tuple[torch.Tensor, torch.Tensor], scale: float, batch_size: int,
                   g: torch.Generator) -> torch.Tensor:
    """A step's latents: images drawn by `g`, flipped and rotated alike (on the latent grid), sampled."""
    mean, std = posteriors
    idx = torch.randint(0, len(mean), (batch_size,), generator=g, device=g.device).to(mean.device)
    mean, std = mean[idx], std[idx]
    if torch.rand((), generator=g, device=g.device) < 0.5:
        mean, std = mean.flip(-1), std.flip(-1)
    k = int(torch.randint(0, 4, (), generator=g, device=g.device))
    if k:
        mean, std = torch.rot90(mean, k, dims=(-2, -1)), torch.rot90(std, k, dims=(-2, -1))
    return (mean + std * torch.randn(mean.shape, generator=g, device=g.device)) * scale


def denoising_loss(comps: Any, latents: torch.Tensor, text: torch.Tensor, g: torch.Generator,
                   offset_noise: float = 0.0) -> torch.Tensor:
    """The UNet's own objective on a batch of clean latents: noise them, predict, compare (epsilon or v).

    `offset_noise` adds a random constant per image and channel to the noise (Guttenberg, 2023):
    with zero-mean noise the last timestep still carries an image's mean colour, so a model can
    hardly learn to shift a whole image's colour or brightness, which is much of a place's look.
    """
    noise = torch.randn(latents.shape, generator=g, device=g.device)
    if offset_noise:
        noise = noise + offset_noise * torch.randn((*latents.shape[:2], 1, 1), generator=g, device=g.device)
    t = sample_timesteps(len(latents), comps.noise_scheduler.config.num_train_timesteps, "uniform", g, g.device)
    pred = comps.unet(comps.noise_scheduler.add_noise(latents, noise, t), t,
                      encoder_hidden_states=text.expand(len(latents), -1, -1)).sample
    target = comps.noise_scheduler.get_velocity(latents, noise, t) if comps.prediction_type == "v_prediction" else noise
    return F.mse_loss(pred.float(), target.float())


def _state_dict(params: dict[str, torch.nn.Parameter]) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous().cpu() for k, v in params.items()}


def save_checkpoint(run_dir: Path, params: dict[str, torch.nn.Parameter], opt: Any, sched: Any, step: int) -> Path:
    """checkpoints/checkpoint-<step>: trainable weights, optimizer, lr schedule, step, checksums; atomic."""
    from safetensors.torch import save_file

    final = run_dir / "checkpoints" / f"checkpoint-{step}"
    with atomic_dir(final, overwrite=True, durable=True) as tmp:
        save_file(_state_dict(params), str(tmp / TRAINABLE))
        torch.save({"optimizer": opt.state_dict(), "lr_scheduler": sched.state_dict()}, tmp / "optimizer.pt")
        write_json(tmp / "trainer_state.json", asdict(TrainState(global_step=step)))
        write_json(tmp / CHECKSUMS, {p.name: sha256_of(p) for p in sorted(tmp.iterdir()) if p.is_file()})
    return final


def _resume(run_dir: Path, resume: str | None, params: dict[str, torch.nn.Parameter], opt: Any, sched: Any) -> int:
    """Load the checkpoint `resume` names (`latest`: the newest whole one); returns its step."""
    from safetensors.torch import load_file

    ckpt = resolve_resume(run_dir, resume)
    if ckpt is None:
        return 0
    saved = load_file(str(ckpt / TRAINABLE))
    if set(saved) != set(params):
        raise ConfigError(f"{ckpt}: saved with other trainable weights (another method, rank or targets); "
                          "use another run_dir or resume=null")
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(saved[name])
    states = torch.load(ckpt / "optimizer.pt", map_location="cpu", weights_only=True)
    opt.load_state_dict(states["optimizer"])
    sched.load_state_dict(states["lr_scheduler"])
    step = TrainState.from_file(ckpt / "trainer_state.json").global_step
    log.info("specialize: resumed from %s at step %d", ckpt, step)
    return step


@dataclass
class SpecializeResult:
    """The adapted UNet (LoRA fused in) and how training went."""

    unet: Any
    steps: int
    losses: list[float]  # mean loss per logging interval (tenth of the run)
    resumed_from: int = 0


def specialize_unet(comps: Any, images: np.ndarray, s: SpecializeSettings, run_dir: str | Path,
                    resume: str | None = None, progress: Callable[[int, int], None] | None = None) -> SpecializeResult:
    """Adapt `comps.unet` to `images` ((N, H, W, 3) uint8) by denoising them; fuse a LoRA at the end.

    1. the trainable weights (a LoRA, or the whole UNet), AdamW with warm-up, resume;
    2. steps: the images encoded once; a batch drawn by (seed, step), flipped, sampled, noised, denoised;
    3. checkpoints every `checkpointing_steps` and at the end;
    4. the LoRA fused into the UNet's weights and removed.
    """
    from diffusers.optimization import get_scheduler

    run_dir = Path(run_dir)
    device = comps.unet.device
    if (run_dir / "checkpoints").is_dir():
        sweep_checkpoint_tmp(run_dir)  # what a killed run left
    # 1. What trains, and from where.
    trainable = _trainable_unet(comps.unet, s)
    params = {n: p for n, p in comps.unet.named_parameters() if p.requires_grad}
    opt = torch.optim.AdamW(trainable, lr=float(s.learning_rate))
    sched = get_scheduler("constant_with_warmup", opt, num_warmup_steps=int(s.lr_warmup_steps),
                          num_training_steps=int(s.steps))
    start = _resume(run_dir, resume, params, opt, sched)
    posteriors = encode_posteriors(comps.vae, images)
    scale = float(comps.vae.config.scaling_factor)
    with torch.no_grad():
        text = comps.text_encoder(tokenize(comps.tokenizer, [s.caption]).to(device))[0].float()
    # 2-3. The loop.
    losses, window = [], []
    every = max(1, int(s.steps) // 10)
    for step in range(start, int(s.steps)):
        g = _step_generator(int(s.seed), step, device)
        loss = denoising_loss(comps, _batch_latents(posteriors, scale, int(s.batch_size), g), text, g,
                              float(s.offset_noise))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, float(s.max_grad_norm))
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        window.append(loss.detach())  # read by the host only at log intervals
        done = step + 1
        if done % every == 0 or done == int(s.steps):
            losses.append(float(torch.stack(window).mean()))
            window = []
        if done % int(s.checkpointing_steps) == 0 or done == int(s.steps):
            save_checkpoint(run_dir, params, opt, sched, done)
        if progress:
            progress(done, int(s.steps))
    # 4. Fuse.
    comps.unet.eval().requires_grad_(False)
    if s.method == "lora":
        comps.unet.fuse_lora()
        comps.unet.unload_lora()
    return SpecializeResult(unet=comps.unet, steps=int(s.steps), losses=losses, resumed_from=start)


# ---------------------------------------------------------------------------------------------
# The new model folder
# ---------------------------------------------------------------------------------------------


def base_of(model_dir: Path, info: Mapping[str, Any]) -> str:
    """A model folder's base: its own subfolder (the tiny base's `base/`), else the path or hub id it names."""
    inside = model_dir / str(info["base_model"])
    return str(inside) if inside.exists() else str(info["base_model"])


def write_specialized(model_dir: Path, out: Path, info: Mapping[str, Any], parts: Mapping[str, Any],
                      record: Mapping[str, Any], overwrite: bool = False) -> Path:
    """`out`: the model folder as it was, its base saved whole into `base/` with the adapted UNet.

    Everything else (the ControlNet, its fp16 copy, the training config, the grid) is copied
    byte for byte. seg2sat.json names the new base and records what it was specialised on; the
    fidelity measured on the original moves into that record (it is not this model's).
    """
    from seg2sat.generation.models import MODEL_INFO, save_pipeline_parts
    from seg2sat.training.export import write_model_card

    own_base = (model_dir / str(info["base_model"])).is_dir()
    with atomic_dir(out, overwrite=overwrite, durable=True) as tmp:
        for item in sorted(model_dir.iterdir()):
            if (own_base and item.name == str(info["base_model"])) or item.name == MODEL_INFO:
                continue
            (shutil.copytree if item.is_dir() else shutil.copy2)(item, tmp / item.name)
        save_pipeline_parts(parts, tmp / "base")
        new_info = {**info, "name": out.name, "base_model": "base", "fidelity": None,
                    "specialized": {**record, "from_fidelity": info.get("fidelity")}}
        write_json(tmp / MODEL_INFO, new_info)
        write_model_card(tmp)
    return out
