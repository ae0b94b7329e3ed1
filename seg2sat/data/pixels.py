"""Pixel scales: uint8 images in [0, 255] and the [-1, 1] range Stable Diffusion's VAE reads and writes."""

from __future__ import annotations

import torch


def to_vae_range(pixels: torch.Tensor) -> torch.Tensor:
    """Float values in [0, 255] -> [-1, 1], in the tensor's own float dtype."""
    return pixels / 127.5 - 1


def from_vae_range(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] images (clamped first) -> rounded uint8 in [0, 255]."""
    return ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
