"""Pretrain the tiny Stable Diffusion base on prepared data (the offline stand-in for SD weights).

A ControlNet steers a *trained* UNet through a *trained* VAE; random ones cannot render
anything. Real use starts from Stable Diffusion's weights; offline, `seg2sat pretrain` teaches
the tiny base to draw the synthetic sample data, once, and the result ships with the package
(`seg2sat/assets/tiny-base`, see docs/fidelity.md for how it was made and what it scores):
1. the VAE learns to reconstruct the training images (MSE + a small KL term), on random
   crops (it is convolutional: half-size crops cost a quarter);
2. the latent scale is set so latents have unit variance (SD's `scaling_factor`);
3. the UNet learns text-conditioned denoising of those latents (epsilon objective, 10% empty
   prompts for classifier-free guidance);
4. everything is saved as a diffusers folder (safetensors), atomically.
Both phases use warm-up then cosine decay and gradient clipping: at a constant 2e-3 the VAE
was seen to diverge after 1,500 steps. The text encoder stays random and frozen: it still maps
different captions to different embeddings, which is all the tiny UNet needs.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from seg2sat.data.dataset import load_rgb, read_manifest, tokenize
from seg2sat.data.pixels import to_vae_range
from seg2sat.generation.models import save_pipeline_parts
from seg2sat.generation.sampling import VAE_FACTOR
from seg2sat.generation.tiny import build_tiny_components

log = logging.getLogger(__name__)
# Noise levels at which the held-out denoising loss is reported (high t decides the layout).
EVAL_TIMESTEPS = (50, 200, 500, 800, 950)
PRETRAIN_RECORD = "pretrain.json"  # settings and curves, saved inside the base folder


@dataclass(frozen=True)
class PretrainSettings:
    """Steps and optimisation of the two phases (defaults: those of the shipped base)."""

    vae_steps: int = 6000
    unet_steps: int = 12000
    batch_size: int = 16
    vae_lr: float = 2e-3
    unet_lr: float = 2e-3
    warmup_steps: int = 200
    empty_prompt_prob: float = 0.1
    log_every: int = 1000
    seed: int = 0


@dataclass
class PretrainResult:
    """Where the base was saved and how well it learned (curves at `log_every`)."""

    folder: Path
    settings: dict[str, Any]
    vae_curve: list[dict[str, float]] = field(default_factory=list)  # step, train mse, val mse
    unet_curve: list[dict[str, Any]] = field(default_factory=list)  # step, train loss, val loss per t
    seconds: float = 0.0

    @property
    def vae_mse_end(self) -> float:
        """Held-out reconstruction MSE at the end ([-1, 1] pixels)."""
        return self.vae_curve[-1]["val_mse"] if self.vae_curve else float("nan")

    @property
    def unet_loss_end(self) -> float:
        """Training loss (running mean) at the end."""
        return self.unet_curve[-1]["train_loss"] if self.unet_curve else float("nan")


def _images(prepared_dir: Path, split: str) -> tuple[torch.Tensor, list[str]]:
    rows = read_manifest(prepared_dir, split)
    if not rows:
        return torch.zeros(0, 3, 0, 0), []
    pix = np.stack([load_rgb(prepared_dir / r["image"]) for r in rows]).astype(np.float32)
    return to_vae_range(torch.from_numpy(pix).permute(0, 3, 1, 2)), [r["caption"] for r in rows]


def _random_crops(images: torch.Tensor, k: int, size: int, g: torch.Generator) -> torch.Tensor:
    idx = torch.randint(0, len(images), (k,), generator=g)
    h, w = images.shape[-2:]
    ys = torch.randint(0, h - size + 1, (k,), generator=g) // VAE_FACTOR * VAE_FACTOR
    xs = torch.randint(0, w - size + 1, (k,), generator=g) // VAE_FACTOR * VAE_FACTOR
    return torch.stack([images[i, :, y : y + size, x : x + size] for i, y, x in zip(idx, ys, xs, strict=True)])


def _augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Random flips/rot90 of a batch (the scenes have no preferred orientation)."""
    if torch.rand((), generator=g) < 0.5:
        x = x.flip(-1)
    k = int(torch.randint(0, 4, (), generator=g))
    return torch.rot90(x, k, dims=(-2, -1)) if k else x


def _optimizer(params: Any, lr: float, warmup: int, steps: int) -> tuple[torch.optim.Optimizer, Any]:
    from diffusers.optimization import get_cosine_schedule_with_warmup

    opt = torch.optim.AdamW(params, lr=lr)
    return opt, get_cosine_schedule_with_warmup(opt, min(warmup, max(1, steps // 10)), max(1, steps))


def _step(opt: torch.optim.Optimizer, sched: Any, loss: torch.Tensor, params: Any) -> None:
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    sched.step()


def _train_vae(vae: Any, images: torch.Tensor, val: torch.Tensor, s: PretrainSettings, g: torch.Generator,
               progress: Callable[[str, int, int], None] | None) -> list[dict[str, float]]:
    params = list(vae.parameters())
    opt, sched = _optimizer(params, s.vae_lr, s.warmup_steps, s.vae_steps)
    crop = max(32, images.shape[-1] // 2)
    curve, running = [], None
    vae.train()
    for step in range(1, s.vae_steps + 1):
        x = _augment(_random_crops(images, s.batch_size, crop, g), g)
        dist = vae.encode(x).latent_dist
        z = dist.mean + dist.std * torch.randn(dist.mean.shape, generator=g)
        mse = F.mse_loss(vae.decode(z).sample, x)
        _step(opt, sched, mse + 1e-6 * dist.kl().mean(), params)
        running = float(mse.detach()) if running is None else 0.98 * running + 0.02 * float(mse.detach())
        if step % s.log_every == 0 or step == s.vae_steps:
            curve.append({"step": step, "train_mse": running, "val_mse": _val_mse(vae, val)})
            vae.train()
        if progress:
            progress("vae", step, s.vae_steps)
    vae.eval().requires_grad_(False)
    return curve


@torch.no_grad()
def _val_mse(vae: Any, val: torch.Tensor) -> float:
    if not len(val):
        return float("nan")
    vae.eval()
    return float(F.mse_loss(vae.decode(vae.encode(val).latent_dist.mean).sample, val))


@torch.no_grad()
def _encode(vae: Any, te: Any, tok: Any, images: torch.Tensor, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    if not captions:
        return torch.zeros(0), torch.zeros(0)
    latents = torch.cat([vae.encode(images[i : i + 64]).latent_dist.mean for i in range(0, len(images), 64)])
    text = torch.cat([te(tokenize(tok, captions[i : i + 64]))[0] for i in range(0, len(captions), 64)])
    return latents, text


def _train_unet(unet: Any, sched: Any, latents: torch.Tensor, text: torch.Tensor, empty: torch.Tensor,
                val: tuple[torch.Tensor, torch.Tensor], s: PretrainSettings, g: torch.Generator,
                progress: Callable[[str, int, int], None] | None) -> list[dict[str, Any]]:
    params = list(unet.parameters())
    opt, lr_sched = _optimizer(params, s.unet_lr, s.warmup_steps, s.unet_steps)
    n, bs = len(latents), s.batch_size
    curve, running = [], None
    unet.train()
    for step in range(1, s.unet_steps + 1):
        idx = torch.randint(0, n, (bs,), generator=g)
        z = _augment(latents[idx], g)
        cond = torch.where((torch.rand(bs, generator=g) < s.empty_prompt_prob)[:, None, None], empty, text[idx])
        noise = torch.randn(z.shape, generator=g)
        t = torch.randint(0, sched.config.num_train_timesteps, (bs,), generator=g)
        loss = F.mse_loss(unet(sched.add_noise(z, noise, t), t, encoder_hidden_states=cond).sample, noise)
        _step(opt, lr_sched, loss, params)
        running = float(loss.detach()) if running is None else 0.98 * running + 0.02 * float(loss.detach())
        if step % s.log_every == 0 or step == s.unet_steps:
            curve.append({"step": step, "train_loss": running, "val_loss_at_t": _val_loss(unet, sched, *val)})
            unet.train()
        if progress:
            progress("unet", step, s.unet_steps)
    unet.eval().requires_grad_(False)
    return curve


@torch.no_grad()
def _val_loss(unet: Any, sched: Any, latents: torch.Tensor, text: torch.Tensor) -> dict[str, float]:
    """Held-out denoising loss at fixed noise levels, with a fixed noise draw (comparable over steps)."""
    if not len(latents):
        return {}
    unet.eval()
    g = torch.Generator().manual_seed(123)
    out = {}
    for t in EVAL_TIMESTEPS:
        noise = torch.randn(latents.shape, generator=g)
        ts = torch.full((len(latents),), t)
        pred = unet(sched.add_noise(latents, noise, ts), ts, encoder_hidden_states=text).sample
        out[str(t)] = float(F.mse_loss(pred, noise))
    return out


def _initial_parts(seed: int, init_dir: str | Path | None) -> dict[str, Any]:
    """Random tiny parts, or those of an existing base folder (to fine-tune it on new data)."""
    parts = build_tiny_components(seed)
    if init_dir is None:
        return parts
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    for key, cls in (("unet", UNet2DConditionModel), ("vae", AutoencoderKL), ("text_encoder", CLIPTextModel)):
        parts[key] = cls.from_pretrained(init_dir, subfolder=key, use_safetensors=True)
    return parts


def pretrain_tiny_base(prepared_dir: str | Path, out_dir: str | Path, settings: PretrainSettings = PretrainSettings(),
                       progress: Callable[[str, int, int], None] | None = None,
                       init_dir: str | Path | None = None) -> PretrainResult:
    """Train the tiny VAE then UNet on the train split and save a diffusers base folder.

    The validation split (other domains) is only used to report held-out curves. With
    `init_dir` (a base folder) training starts from its weights: fine-tuning on new data.
    """
    t0 = time.perf_counter()
    prepared_dir = Path(prepared_dir)
    s = settings
    parts = _initial_parts(s.seed, init_dir)
    vae, unet, te, tok, sched = (parts[k] for k in ("vae", "unet", "text_encoder", "tokenizer", "scheduler"))
    images, captions = _images(prepared_dir, "train")
    val_images, val_captions = _images(prepared_dir, "val")
    g = torch.Generator().manual_seed(s.seed)

    # 1. VAE.
    vae_curve = _train_vae(vae, images, val_images, s, g, progress)

    # 2. Latent scale: unit variance, as SD's scaling_factor does.
    latents, text = _encode(vae, te, tok, images, captions)
    val_latents, val_text = _encode(vae, te, tok, val_images, val_captions)
    with torch.no_grad():
        empty = te(tokenize(tok, [""]))[0]
    scale = float(1.0 / latents.std())
    vae.register_to_config(scaling_factor=scale)

    # 3. UNet.
    val = (val_latents * scale, val_text) if len(val_captions) else (torch.zeros(0), torch.zeros(0))
    unet_curve = _train_unet(unet, sched, latents * scale, text, empty, val, s, g, progress)

    # 4. Save.
    res = PretrainResult(Path(out_dir), asdict(s), vae_curve, unet_curve, round(time.perf_counter() - t0, 1))
    record = {"settings": res.settings, "init": str(init_dir) if init_dir else None,
              "data": str(prepared_dir), "train_images": len(images),
              "val_images": len(val_images), "vae_curve": vae_curve, "unet_curve": unet_curve,
              "seconds": res.seconds, "threads": torch.get_num_threads()}
    save_pipeline_parts(parts, out_dir, extra_json={PRETRAIN_RECORD: record})
    log.info("tiny base: VAE held-out mse %.4f, UNet loss %.4f, in %.0f s -> %s", res.vae_mse_end,
             res.unet_loss_end, res.seconds, res.folder)
    return res
