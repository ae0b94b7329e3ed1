"""Joint augmentation of an image and its colour hint (albumentations).

The hint is passed as albumentations' `mask` target, which is always resampled with nearest
neighbour, so an augmented hint never holds a blended colour outside the legend.

Latent cache: flips and 90-degree rotations commute with the VAE's downsampling grid, so
they can be applied identically to cached latents and to hints. Crops, scales and colour
changes cannot (they would need a re-encode): `cache_safe` says whether a config only uses
the former.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # imported where used: training with the latent cache never needs them
    import albumentations as A

CACHE_SAFE_KEYS = frozenset({"hflip", "vflip", "rot90"})


class JointAugment:
    """Apply one albumentations pipeline to an image and its hint; `seed` fixes the draw."""

    def __init__(self, compose: A.Compose) -> None:
        self.compose = compose

    def __call__(self, image: np.ndarray, hint: np.ndarray, seed: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Augmented (image, hint)."""
        if seed is not None:
            self.compose.set_random_seed(seed)
        out = self.compose(image=image, mask=hint)
        return out["image"], out["mask"]


def build_augment(cfg: Mapping[str, Any] | None, size: int | None = None) -> JointAugment | None:
    """Build the joint transform from a config mapping; None when nothing is enabled.

    Keys: hflip, vflip, rot90 (probabilities), crop_scale ([min, max] area fraction of a
    random resized crop back to `size`), seed (int, for reproducible draws).
    """
    import albumentations as A
    import cv2

    cfg = dict(cfg or {})
    steps: list[A.BasicTransform] = []
    if cfg.get("hflip"):
        steps.append(A.HorizontalFlip(p=float(cfg["hflip"])))
    if cfg.get("vflip"):
        steps.append(A.VerticalFlip(p=float(cfg["vflip"])))
    if cfg.get("rot90"):
        steps.append(A.RandomRotate90(p=float(cfg["rot90"])))
    if cfg.get("crop_scale"):
        if size is None:
            raise ValueError("augment.crop_scale needs the output size")
        lo, hi = cfg["crop_scale"]
        steps.append(A.RandomResizedCrop(size=(size, size), scale=(float(lo), float(hi)), ratio=(1.0, 1.0),
                                         interpolation=cv2.INTER_AREA, mask_interpolation=cv2.INTER_NEAREST,
                                         p=1.0))
    if not steps:
        return None
    return JointAugment(A.Compose(steps, seed=cfg.get("seed")))


def cache_safe(cfg: Mapping[str, Any] | None) -> bool:
    """True when every enabled augmentation can be applied to cached latents."""
    enabled = {k for k, v in dict(cfg or {}).items() if k != "seed" and v}
    return enabled <= CACHE_SAFE_KEYS
