"""One tile: colour hint + prompt + seed -> aerial image (wraps diffusers' ControlNet pipeline)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from seg2sat.errors import LegendError
from seg2sat.hints import hint_to_codes

DEFAULT_NEGATIVE = "blurry, distorted, low quality, text, watermark"


def check_hint(hint: np.ndarray, source: str | Path | None = None) -> np.ndarray:
    """An (H, W, 3) uint8 legend-colour hint whose sides are multiples of 8 (the VAE factor)."""
    hint = np.asarray(hint)
    hint_to_codes(hint, source=source)  # raises LegendError naming the off-legend colours
    h, w = hint.shape[:2]
    if h % 8 or w % 8:
        raise LegendError(f"{source or 'hint'}: size {w}x{h} is not a multiple of 8")
    return hint[..., :3]


def generate(
    pipe: Any,
    hint: np.ndarray,
    prompt: str,
    *,
    negative_prompt: str = "",
    steps: int = 20,
    guidance_scale: float = 7.5,
    controlnet_scale: float = 1.0,
    seed: int | None = 0,
    generator: torch.Generator | None = None,
    callback: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """Generate one aerial image for a hint; returns (H, W, 3) uint8.

    The hint is given at the output size (no resampling: a resized hint would blend legend
    colours). The seed makes the result reproducible; pass `generator` to control it fully.
    """
    # 1. Check inputs.
    hint = check_hint(hint)
    h, w = hint.shape[:2]
    if generator is None:
        generator = torch.Generator(device="cpu").manual_seed(int(seed or 0))

    # 2. Progress callback in diffusers' step-end form.
    def on_step_end(_pipe: Any, step: int, _t: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        if callback is not None:
            callback(step + 1, steps)
        return kwargs

    # 3. Denoise and decode.
    out = pipe(
        prompt=prompt, image=Image.fromarray(hint), height=h, width=w, num_inference_steps=steps,
        guidance_scale=guidance_scale, negative_prompt=negative_prompt or None,
        controlnet_conditioning_scale=controlnet_scale, generator=generator, output_type="np",
        callback_on_step_end=on_step_end,
    )
    image = out.images[0]
    return np.clip(np.rint(image * 255), 0, 255).astype(np.uint8)
