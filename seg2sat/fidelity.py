"""Mask fidelity: does a generated image follow its land-cover hint?

No segmentation network is available offline, so we classify each generated pixel with
per-class colour statistics learned from the training images (a Gaussian per class in RGB
after a small box blur that averages out texture), then score the predicted map against the
hint with mean IoU. It is a crude classifier, but it is the same yardstick for a trained and an
untrained ControlNet, which is what the demo and model card compare.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from seg2sat.labels import CODES, MAX_CODE, class_name


def _smooth(image: np.ndarray, size: int) -> np.ndarray:
    x = image.astype(np.float32)
    if size > 1:
        x = ndimage.uniform_filter(x, size=(size, size, 1), mode="reflect")
    return x


@dataclass
class ColourModel:
    """A Gaussian colour model per class."""

    codes: np.ndarray  # (K,) classes seen in training
    means: np.ndarray  # (K, 3)
    inv_covs: np.ndarray  # (K, 3, 3)
    log_dets: np.ndarray  # (K,)
    blur: int = 3
    counts: dict[int, int] = field(default_factory=dict)

    def classify(self, image: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 image -> (H, W) uint8 codes of the most likely class."""
        x = _smooth(image[..., :3], self.blur).reshape(-1, 3)
        d = x[:, None, :] - self.means[None]  # (N, K, 3)
        maha = np.einsum("nki,kij,nkj->nk", d, self.inv_covs, d)
        best = np.argmin(maha + self.log_dets[None], axis=1)
        return self.codes[best].reshape(image.shape[:2]).astype(np.uint8)


def fit_colour_model(
    pairs: Iterable[tuple[np.ndarray, np.ndarray]], blur: int = 3, min_pixels: int = 20
) -> ColourModel:
    """Fit per-class RGB Gaussians from (image (H, W, 3), codes (H, W)) training pairs."""
    sums = np.zeros((MAX_CODE + 1, 3), np.float64)
    outer = np.zeros((MAX_CODE + 1, 3, 3), np.float64)
    counts = np.zeros(MAX_CODE + 1, np.int64)
    for image, codes in pairs:
        x = _smooth(image[..., :3], blur).reshape(-1, 3).astype(np.float64)
        c = codes.reshape(-1).astype(np.int64)
        counts += np.bincount(c, minlength=MAX_CODE + 1)
        for k in range(3):
            sums[:, k] += np.bincount(c, weights=x[:, k], minlength=MAX_CODE + 1)
            for j in range(3):
                outer[:, k, j] += np.bincount(c, weights=x[:, k] * x[:, j], minlength=MAX_CODE + 1)
    keep = [c for c in CODES if counts[c] >= min_pixels]
    if not keep:
        raise ValueError("fit_colour_model: no class has enough pixels to fit")
    idx = np.array(keep)
    n = counts[idx][:, None]
    means = sums[idx] / n
    covs = outer[idx] / n[..., None] - means[:, :, None] * means[:, None, :]
    covs += np.eye(3)[None] * 4.0  # regularise: flat synthetic colours have tiny variance
    return ColourModel(
        codes=idx.astype(np.uint8),
        means=means.astype(np.float32),
        inv_covs=np.linalg.inv(covs).astype(np.float32),
        log_dets=np.linalg.slogdet(covs)[1].astype(np.float32),
        blur=blur,
        counts={int(c): int(counts[c]) for c in keep},
    )


def iou_per_class(pred: np.ndarray, target: np.ndarray) -> dict[int, float]:
    """IoU of each class present in the target or the prediction."""
    out = {}
    for code in np.union1d(np.unique(pred), np.unique(target)):
        p, t = pred == code, target == code
        union = np.logical_or(p, t).sum()
        out[int(code)] = float(np.logical_and(p, t).sum() / union) if union else 0.0
    return out


def mask_fidelity(
    model: ColourModel, images: Iterable[np.ndarray], targets: Iterable[np.ndarray]
) -> dict[str, float | dict[str, float]]:
    """MIoU and pixel accuracy of generated images against their hint codes.

    IoU is accumulated over all images (intersections and unions summed per class), then
    averaged over the classes present in the targets.
    """
    inter = np.zeros(MAX_CODE + 1, np.int64)
    union = np.zeros(MAX_CODE + 1, np.int64)
    present = np.zeros(MAX_CODE + 1, bool)
    correct = total = 0
    for image, target in zip(images, targets, strict=True):
        pred = model.classify(image)
        for code in np.union1d(np.unique(pred), np.unique(target)):
            p, t = pred == code, target == code
            inter[code] += np.logical_and(p, t).sum()
            union[code] += np.logical_or(p, t).sum()
        present[np.unique(target)] = True
        correct += int((pred == target).sum())
        total += target.size
    if total == 0:
        raise ValueError("mask_fidelity: no images")
    ious = {class_name(c): float(inter[c] / union[c]) for c in CODES if present[c] and union[c]}
    return {"miou": float(np.mean(list(ious.values()))), "pixel_accuracy": correct / total,
            "per_class_iou": ious}
