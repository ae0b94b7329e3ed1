"""Joint augmentation of an image and its colour hint (albumentations).

The hint is passed as albumentations' `mask` target, which is always resampled with nearest
neighbour, so an augmented hint never holds a blended colour outside the legend.

Latent cache: flips and 90-degree rotations commute with the VAE's downsampling grid, so
they can be applied identically to cached latents and to hints. Crops, scales and colour
changes cannot (they would need a re-encode): `cache_safe` says whether a config only uses
the former. Both refuse a key they do not know: a misspelt or unsupported augmentation
must not train silently without it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from seg2sat.errors import ConfigError

if TYPE_CHECKING:  # imported where used: training with the latent cache never needs them
    import albumentations as A

CACHE_SAFE_KEYS: tuple[str, ...] = ("hflip", "vflip", "rot90")
ACCEPTED_KEYS: tuple[str, ...] = (*CACHE_SAFE_KEYS, "crop_scale", "seed")


def check_augment(cfg: Mapping[str, Any] | None) -> dict[str, Any]:
    """The augmentation config as a dict; raises when it holds a key nothing applies.

    Raises:
        ConfigError: naming the unknown keys and listing ACCEPTED_KEYS.
    """
    cfg = dict(cfg or {})
    unknown = [str(k) for k in cfg if k not in ACCEPTED_KEYS]
    if unknown:
        s = "s" if len(unknown) > 1 else ""
        raise ConfigError(f"augment: unknown key{s} {', '.join(map(repr, unknown))}; "
                          f"accepted keys: {', '.join(ACCEPTED_KEYS)}")
    return cfg


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

    Raises:
        ConfigError: for any other key (see `check_augment`).
        ValueError: crop_scale without `size`.
    """
    import albumentations as A
    import cv2

    cfg = check_augment(cfg)
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
    """True when every enabled augmentation can be applied to cached latents.

    Raises:
        ConfigError: for a key that is no augmentation at all (see `check_augment`).
    """
    enabled = {k for k, v in check_augment(cfg).items() if k != "seed" and v}
    return enabled <= set(CACHE_SAFE_KEYS)
