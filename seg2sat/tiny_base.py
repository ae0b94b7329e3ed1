"""Pretrain the tiny Stable Diffusion base on prepared data (the demo's stand-in for SD weights).

A ControlNet steers a *trained* UNet through a *trained* VAE; random ones cannot render
anything, so the offline demo first teaches the tiny base to draw the sample data:
1. the VAE learns to reconstruct the training images (MSE + a small KL term);
2. the latent scale is set so latents have unit variance (SD's `scaling_factor`);
3. the UNet learns text-conditioned denoising of those latents (epsilon objective);
4. everything is saved as a diffusers folder (safetensors), atomically.
The text encoder stays random and frozen: it still maps different captions to different
embeddings, which is all the tiny UNet needs.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from seg2sat.data.dataset import load_rgb, read_manifest, tokenize
from seg2sat.models import build_tiny_components, save_pipeline_parts

log = logging.getLogger(__name__)


@dataclass
class PretrainResult:
    """Where the base was saved and how well it learned."""

    folder: Path
    vae_mse_start: float
    vae_mse_end: float
    unet_loss_start: float
    unet_loss_end: float
    seconds: float


def _images(prepared_dir: Path, split: str) -> tuple[torch.Tensor, list[str]]:
    rows = read_manifest(prepared_dir, split)
    pix = np.stack([load_rgb(prepared_dir / r["image"]) for r in rows]).astype(np.float32)
    return torch.from_numpy(pix).permute(0, 3, 1, 2) / 127.5 - 1, [r["caption"] for r in rows]


def _random_crops(images: torch.Tensor, k: int, size: int, g: torch.Generator) -> torch.Tensor:
    idx = torch.randint(0, len(images), (k,), generator=g)
    h, w = images.shape[-2:]
    ys = torch.randint(0, h - size + 1, (k,), generator=g) // 8 * 8
    xs = torch.randint(0, w - size + 1, (k,), generator=g) // 8 * 8
    return torch.stack([images[i, :, y : y + size, x : x + size] for i, y, x in zip(idx, ys, xs, strict=True)])


def _augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Random flips/rot90 of a batch (the scenes have no preferred orientation)."""
    if torch.rand((), generator=g) < 0.5:
        x = x.flip(-1)
    k = int(torch.randint(0, 4, (), generator=g))
    return torch.rot90(x, k, dims=(-2, -1)) if k else x


def pretrain_tiny_base(
    prepared_dir: str | Path,
    out_dir: str | Path,
    vae_steps: int = 600,
    unet_steps: int = 400,
    batch_size: int = 16,
    lr: float = 2e-3,
    seed: int = 0,
) -> PretrainResult:
    """Train the tiny VAE then UNet on the train split and save a diffusers base folder."""
    t0 = time.perf_counter()
    prepared_dir = Path(prepared_dir)
    parts = build_tiny_components(seed)
    vae, unet, te, tok, sched = (parts[k] for k in ("vae", "unet", "text_encoder", "tokenizer", "scheduler"))
    images, captions = _images(prepared_dir, "train")
    g = torch.Generator().manual_seed(seed)
    n = len(images)

    # 1. VAE: reconstruction + a small KL so latents stay well-behaved. It is convolutional,
    #    so it trains on random crops of half the tile size: 4x cheaper per step.
    opt = torch.optim.AdamW(vae.parameters(), lr=lr)
    vae.train()
    mses = []
    crop = max(32, images.shape[-1] // 2)
    for _ in range(vae_steps):
        x = _augment(_random_crops(images, batch_size, crop, g), g)
        dist = vae.encode(x).latent_dist
        z = dist.mean + dist.std * torch.randn(dist.mean.shape, generator=g)
        rec = vae.decode(z).sample
        mse = F.mse_loss(rec, x)
        loss = mse + 1e-6 * dist.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        mses.append(float(mse.detach()))
    vae.eval().requires_grad_(False)

    # 2. Latent scale: unit variance, as SD's scaling_factor does.
    with torch.no_grad():
        latents = torch.cat([vae.encode(images[i : i + 64]).latent_dist.mean for i in range(0, n, 64)])
        text = torch.cat([te(tokenize(tok, captions[i : i + 64]))[0] for i in range(0, n, 64)])
        empty = te(tokenize(tok, [""]))[0]
    scale = float(1.0 / latents.std())
    vae.register_to_config(scaling_factor=scale)
    latents = latents * scale

    # 3. UNet: text-conditioned epsilon prediction (10% empty prompts, for guidance).
    opt = torch.optim.AdamW(unet.parameters(), lr=lr)
    unet.train()
    losses = []
    for _ in range(unet_steps):
        idx = torch.randint(0, n, (batch_size,), generator=g)
        z = _augment(latents[idx], g)
        cond = torch.where((torch.rand(batch_size, generator=g) < 0.1)[:, None, None], empty, text[idx])
        noise = torch.randn(z.shape, generator=g)
        t = torch.randint(0, sched.config.num_train_timesteps, (batch_size,), generator=g)
        pred = unet(sched.add_noise(z, noise, t), t, encoder_hidden_states=cond).sample
        loss = F.mse_loss(pred, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    unet.eval().requires_grad_(False)

    # 4. Save.
    folder = save_pipeline_parts(parts, out_dir)

    def avg(v: list[float], first: bool) -> float:
        k = max(1, len(v) // 10)
        return float(np.mean(v[:k] if first else v[-k:])) if v else float("nan")

    res = PretrainResult(folder, avg(mses, True), avg(mses, False), avg(losses, True), avg(losses, False),
                         time.perf_counter() - t0)
    log.info("tiny base: VAE mse %.4f -> %.4f, UNet loss %.4f -> %.4f in %.0f s", res.vae_mse_start,
             res.vae_mse_end, res.unet_loss_start, res.unet_loss_end, res.seconds)
    return res
