"""Per-pixel trust: which generated pixels show their map's class, FreeMask-style.

FreeMask (Yang et al., NeurIPS 2023, arXiv 2310.15160) filters synthetic masks pixel by pixel: a
segmenter trained on *real* data scores every synthetic pixel, and a pixel whose loss is above
`factor` x its class's mean loss on the real data is set to *ignore* (1.25 in the paper; they
report that synthetic images added without this filter lowered mIoU). Here the segmenter is the
synthesis judge (trained on `judge_data`'s real training images), and an ignored pixel is written
as labels.IGNORE_CODE in the mask, which `prepare` and `segment` read as "no label". The
per-image bar (`quality.threshold`) still decides which pairs are kept at all.

Hardness (the paper's other half, its re-sampling of hard masks): a map's hardness is the mean,
over its pixels, of its classes' mean loss on the real set, relative to the real set's mean
pixel loss; with `trust.resample`, maps are drawn in proportion to it, so maps of classes the
judge finds hard are rendered more often.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from seg2sat.errors import ConfigError
from seg2sat.evaluation.judge import Judge
from seg2sat.labels import MAX_CODE

DEFAULT_FACTOR = 1.25  # FreeMask's threshold (conf/synthesize.yaml holds the setting)


@dataclass(frozen=True)
class TrustSettings:
    """Whether untrusted pixels are ignored, from what loss ratio, and whether maps are drawn by hardness."""

    enabled: bool = False
    factor: float = DEFAULT_FACTOR
    resample: bool = False

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any] | None) -> TrustSettings:
        """From `trust` (null: off); refused when the factor is not a positive ratio."""
        cfg = dict(cfg or {})
        settings = cls(bool(cfg.get("enabled", False)), float(cfg.get("factor", DEFAULT_FACTOR)),
                       bool(cfg.get("resample", False)))
        if settings.factor <= 0:
            raise ConfigError(f"trust.factor={settings.factor:g}: a loss ratio, must be > 0 (FreeMask: 1.25)")
        return settings


@torch.no_grad()
def pixel_losses(judge: Judge, images: np.ndarray, codes: np.ndarray, batch_size: int = 16) -> np.ndarray:
    """(N, H, W) cross-entropy of each pixel's code under the judge (unweighted; code 0 is never predicted)."""
    out = []
    for i, logits in judge.logits(images, batch_size):
        target = torch.from_numpy(codes[i:i + batch_size].astype(np.int64))
        out.append(F.cross_entropy(logits, target, reduction="none").numpy())
    return np.concatenate(out)


@dataclass
class Trust:
    """The judge and each class's mean pixel loss on the real set: what a generated pixel is measured by."""

    judge: Judge
    class_loss: np.ndarray  # (MAX_CODE + 1,) mean loss of each code's real pixels (the overall mean where absent)
    overall: float  # the real set's mean pixel loss
    factor: float = DEFAULT_FACTOR

    @classmethod
    def fit(cls, judge: Judge, images: np.ndarray, codes: np.ndarray, factor: float = DEFAULT_FACTOR) -> Trust:
        """Each class's mean loss over the real (images, codes); a class the real set lacks gets the overall mean."""
        losses = pixel_losses(judge, images, codes).reshape(-1).astype(np.float64)
        flat = codes.reshape(-1).astype(np.int64)
        sums = np.bincount(flat, weights=losses, minlength=MAX_CODE + 1)
        counts = np.bincount(flat, minlength=MAX_CODE + 1)
        overall = float(losses.mean())
        class_loss = np.where(counts > 0, sums / np.maximum(counts, 1), overall)
        return cls(judge, class_loss, overall, factor)

    def untrusted(self, image: np.ndarray, codes: np.ndarray) -> np.ndarray:
        """(H, W) bool: True where the pixel's loss exceeds `factor` x its class's mean loss on the real set."""
        loss = pixel_losses(self.judge, image[None], codes[None])[0]
        return loss > self.factor * self.class_loss[codes]

    def hardness(self, codes: np.ndarray) -> float:
        """The map's mean class loss relative to the real set's mean pixel loss (1: as hard as the real set)."""
        return float(np.mean(self.class_loss[codes])) / max(1e-12, self.overall)
