"""The training objective: noise a batch, predict with the ControlNet into the frozen UNet, compare.

`diffusion_forward` keeps every intermediate (latents, noise, timesteps, prediction) so that a
reward on the predicted clean image (`seg2sat.training.reward`) can be added to the diffusion
loss without a second forward pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from seg2sat.data.dataset import hint_to_float
from seg2sat.errors import Seg2SatError
from seg2sat.generation.models import Components


def sample_timesteps(n: int, num_train_timesteps: int, how: str, gen: torch.Generator,
                     device: torch.device) -> torch.Tensor:
    """Training timesteps: `uniform`, or `cubic` (T2I-Adapter's t = T(1 - u^3)).

    Cubic sampling spends more steps at high noise, where the layout of the image is decided
    and where a ControlNet has the most to say (docs/fidelity.md measures the difference).
    """
    if how == "uniform":
        return torch.randint(0, num_train_timesteps, (n,), generator=gen, device=device).long()
    if how == "cubic":
        u = torch.rand(n, generator=gen, device=device)
        return ((1 - u**3) * num_train_timesteps).long().clamp_(0, num_train_timesteps - 1)
    raise Seg2SatError(f"timestep_sampling={how!r}: choose uniform or cubic")


@dataclass
class DiffusionStep:
    """One training forward: clean and noisy latents, noise, timesteps, prediction and target."""

    latents: torch.Tensor
    noise: torch.Tensor
    timesteps: torch.Tensor
    noisy: torch.Tensor
    pred: torch.Tensor
    target: torch.Tensor

    def mse(self) -> torch.Tensor:
        """The diffusion loss."""
        return F.mse_loss(self.pred.float(), self.target.float(), reduction="mean")


def diffusion_forward(batch: dict[str, Any], comps: Components, controlnet: Any, gen: torch.Generator,
                      weight_dtype: torch.dtype, timestep_sampling: str = "uniform",
                      small_t: tuple[int, int] | None = None) -> DiffusionStep:
    """Noise a batch, run the ControlNet into the frozen UNet, return the prediction and its target.

    `small_t=(k, t_max)` redraws the first k timesteps in [0, t_max): the samples a reward loss
    reads (a one-step prediction of the clean image is only good at low noise). Without it the
    draws are exactly those of plain training.
    """
    device = comps.unet.device
    # 1. Latents: from the cache (posterior mean/std) or by encoding pixels.
    if "latent_mean" in batch:
        mean = batch["latent_mean"].to(device, non_blocking=True)
        std = batch["latent_std"].to(device, non_blocking=True)
        latents = mean + std * torch.randn(mean.shape, generator=gen, device=device)
    else:
        with torch.no_grad():
            dist = comps.vae.encode(batch["pixel_values"].to(device, weight_dtype, non_blocking=True)).latent_dist
            latents = dist.mean + dist.std * torch.randn(dist.mean.shape, generator=gen, device=device,
                                                         dtype=dist.mean.dtype)
    latents = latents.float() * comps.vae.config.scaling_factor
    # 2. Text conditioning.
    if "text_embeds" in batch:
        text = batch["text_embeds"].to(device, weight_dtype, non_blocking=True)
    else:
        with torch.no_grad():
            text = comps.text_encoder(batch["input_ids"].to(device, non_blocking=True))[0]
    # 3. Forward diffusion.
    bsz = latents.shape[0]
    noise = torch.randn(latents.shape, generator=gen, device=device)
    timesteps = sample_timesteps(bsz, comps.noise_scheduler.config.num_train_timesteps, timestep_sampling,
                                 gen, device)
    if small_t is not None:
        k, t_max = small_t
        timesteps[:k] = torch.randint(0, t_max, (k,), generator=gen, device=device)
    noisy = comps.noise_scheduler.add_noise(latents, noise, timesteps)
    # 4. ControlNet residuals into the frozen UNet.
    cond = hint_to_float(batch["conditioning"].to(device, non_blocking=True))
    down, mid = controlnet(noisy, timesteps, encoder_hidden_states=text.float(), controlnet_cond=cond,
                           return_dict=False)
    pred = comps.unet(noisy.to(weight_dtype), timesteps, encoder_hidden_states=text,
                      down_block_additional_residuals=[r.to(weight_dtype) for r in down],
                      mid_block_additional_residual=mid.to(weight_dtype), return_dict=False)[0]
    # 5. Target by the base model's objective.
    if comps.prediction_type == "v_prediction":
        target = comps.noise_scheduler.get_velocity(latents, noise, timesteps)
    elif comps.prediction_type == "epsilon":
        target = noise
    else:
        raise Seg2SatError(f"unsupported prediction_type {comps.prediction_type!r}")
    return DiffusionStep(latents, noise, timesteps, noisy, pred, target)


def compute_loss(batch: dict[str, Any], comps: Components, controlnet: Any, gen: torch.Generator,
                 weight_dtype: torch.dtype, timestep_sampling: str = "uniform") -> torch.Tensor:
    """The ControlNet diffusion loss of one batch (epsilon or v-prediction)."""
    return diffusion_forward(batch, comps, controlnet, gen, weight_dtype, timestep_sampling).mse()
