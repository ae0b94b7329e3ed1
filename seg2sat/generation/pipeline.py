"""One tile: colour hint + prompt + seed -> aerial image (wraps diffusers' ControlNet pipeline)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from seg2sat.errors import LegendError
from seg2sat.generation.sampling import VAE_FACTOR, Sampling
from seg2sat.hints import hint_to_codes


def check_hint(hint: np.ndarray, source: str | Path | None = None) -> np.ndarray:
    """An (H, W, 3) uint8 legend-colour hint whose sides are multiples of the VAE factor."""
    hint = np.asarray(hint)
    hint_to_codes(hint, source=source)  # raises LegendError naming the off-legend colours
    h, w = hint.shape[:2]
    if h % VAE_FACTOR or w % VAE_FACTOR:
        raise LegendError(f"{source or 'hint'}: size {w}x{h} is not a multiple of {VAE_FACTOR}")
    return hint[..., :3]


def generate(
    pipe: Any,
    hint: np.ndarray,
    prompt: str,
    *,
    negative_prompt: str = Sampling.negative_prompt,
    steps: int = Sampling.steps,
    guidance_scale: float = Sampling.guidance_scale,
    controlnet_scale: float = Sampling.controlnet_scale,
    seed: int | None = 0,
    generator: torch.Generator | None = None,
    callback: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """Generate one aerial image for a hint; returns (H, W, 3) uint8.

    The hint is given at the output size (no resampling: a resized hint would blend legend
    colours). The seed makes the result reproducible; pass `generator` to control it fully.
    """
    if generator is None:
        generator = torch.Generator(device="cpu").manual_seed(int(seed or 0))
    return generate_batch(pipe, [hint], [prompt], negative_prompt=negative_prompt, steps=steps,
                          guidance_scale=guidance_scale, controlnet_scale=controlnet_scale,
                          generators=[generator], callback=callback)[0]


def generate_batch(
    pipe: Any,
    hints: Sequence[np.ndarray],
    prompts: Sequence[str],
    *,
    negative_prompt: str = Sampling.negative_prompt,
    steps: int = Sampling.steps,
    guidance_scale: float = Sampling.guidance_scale,
    controlnet_scale: float = Sampling.controlnet_scale,
    seeds: Sequence[int] | None = None,
    generators: Sequence[torch.Generator] | None = None,
    callback: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """Generate one image per (hint, prompt) in one batched call; returns (N, H, W, 3) uint8.

    Each image draws its noise from its own generator (`seeds[i]`), so an image does not
    depend on the rest of the batch: `generate_batch(...)[i]` matches `generate(...)` with
    the same seed up to float rounding. All hints must have the same size.
    """
    # 1. Check inputs.
    hints = [check_hint(h) for h in hints]
    if len(hints) != len(prompts) or not hints:
        raise ValueError(f"generate_batch: {len(hints)} hints for {len(prompts)} prompts")
    if len({h.shape for h in hints}) > 1:
        raise LegendError(f"generate_batch: hints of different sizes {sorted({h.shape[:2] for h in hints})}")
    h, w = hints[0].shape[:2]
    if generators is None:
        seeds = list(seeds) if seeds is not None else [0] * len(hints)
        generators = [torch.Generator(device="cpu").manual_seed(int(s)) for s in seeds]

    # 2. Progress callback in diffusers' step-end form.
    def on_step_end(_pipe: Any, step: int, _t: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        if callback is not None:
            callback(step + 1, steps)
        return kwargs

    # 3. Denoise and decode.
    out = pipe(
        prompt=list(prompts), image=[Image.fromarray(x) for x in hints], height=h, width=w,
        num_inference_steps=steps, guidance_scale=guidance_scale,
        negative_prompt=[negative_prompt] * len(hints) if negative_prompt else None,
        controlnet_conditioning_scale=controlnet_scale, generator=list(generators), output_type="np",
        callback_on_step_end=on_step_end,
    )
    return np.clip(np.rint(out.images * 255), 0, 255).astype(np.uint8)
