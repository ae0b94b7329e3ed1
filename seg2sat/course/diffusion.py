"""Diffusion intuition: forward noising with a real noise schedule, and a denoising trajectory.

x_t = sqrt(alpha_bar_t) * x_0 + sqrt(1 - alpha_bar_t) * noise: `signal_level(t)` is
sqrt(alpha_bar_t), the share of the image left at step t. The trajectory decodes the
pipeline's intermediate latents (what the model "sees" while it denoises).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from seg2sat.data.pixels import from_vae_range, to_vae_range

TIMESTEPS = [0, 100, 250, 500, 750, 999]  # the steps the lesson and the app's Diffusion tab show


def noise_schedule() -> Any:
    """Stable Diffusion's noise schedule (a DDPM scheduler with its betas), built offline."""
    from diffusers import DDPMScheduler

    from seg2sat.generation.tiny import tiny_scheduler_config

    return DDPMScheduler(**tiny_scheduler_config())


def example_tile(seed: int = 0) -> np.ndarray:
    """A 64 x 64 image of 8 x 8 blocks of random colours: noise on it is easy to see."""
    rng = np.random.default_rng(seed)
    return np.kron(rng.integers(0, 255, (8, 8, 3)), np.ones((8, 8, 1))).astype(np.uint8)


def signal_level(scheduler: Any, timesteps: list[int]) -> list[float]:
    """sqrt(alpha_bar_t) of the scheduler at each timestep."""
    ab = scheduler.alphas_cumprod
    return [float(torch.sqrt(ab[int(t)])) for t in timesteps]


def forward_noising(scheduler: Any, image: np.ndarray, timesteps: list[int], seed: int = 0) -> list[np.ndarray]:
    """An (H, W, 3) uint8 image noised to each timestep with the scheduler's own `add_noise`."""
    x0 = to_vae_range(torch.from_numpy(image).permute(2, 0, 1)[None].double())
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    out = []
    for t in timesteps:
        xt = scheduler.add_noise(x0, noise, torch.tensor([int(t)]))
        out.append(from_vae_range(xt[0].permute(1, 2, 0)).numpy())
    return out


def denoising_trajectory(pipe: Any, hint: np.ndarray, prompt: str, steps: int = 10, seed: int = 0,
                         every: int = 2, guidance_scale: float = 3.0) -> list[tuple[int, np.ndarray]]:
    """(step, decoded image) every `every` steps while the pipeline denoises, and the final image."""
    from PIL import Image

    frames: list[tuple[int, np.ndarray]] = []

    def grab(p: Any, step: int, _t: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        if step % every == 0 or step == steps - 1:
            with torch.no_grad():
                lat = kwargs["latents"] / p.vae.config.scaling_factor
                img = p.vae.decode(lat.to(p.vae.dtype)).sample[0].float()
            frames.append((step + 1, from_vae_range(img.permute(1, 2, 0)).numpy()))
        return kwargs

    pipe(prompt=prompt, image=Image.fromarray(hint), height=hint.shape[0], width=hint.shape[1],
         num_inference_steps=steps, guidance_scale=guidance_scale,
         generator=torch.Generator().manual_seed(seed), callback_on_step_end=grab,
         callback_on_step_end_tensor_inputs=["latents"], output_type="np")
    return frames
