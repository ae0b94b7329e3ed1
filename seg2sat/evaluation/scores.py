"""Mask fidelity: does a generated image follow its land-cover map? Re-segment it and compare.

As ControlNet (Zhang et al., 2023) and ControlNet++ (Li et al., 2024) do, a segmentation
network trained on *real* images (`seg2sat.evaluation.judge`) re-segments each generated image,
and the prediction is scored against the map it was generated from (mIoU, pixel accuracy). The
same judge scores the real validation images (the ceiling of the metric), the real images after
a round trip through the base's VAE (what the base can render at all), and images of an
untrained ControlNet (the floor). The **fidelity ratio** is generated mIoU / real mIoU.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from seg2sat.atomic import atomic_path, sweep_tmp, write_json
from seg2sat.evaluation.judge import Judge, to_tensor
from seg2sat.hints import codes_to_hint
from seg2sat.labels import CODES, MAX_CODE, PALETTE, class_name


def segmentation_scores(preds: Iterable[np.ndarray], targets: Iterable[np.ndarray]) -> dict[str, Any]:
    """MIoU, pixel accuracy and per-class IoU of predicted code maps against targets.

    Intersections and unions are summed over all images per class, then averaged over the
    classes present in the targets (a class predicted but never mapped counts in no mean,
    but it lowers the IoU of the classes it took pixels from).
    """
    inter = np.zeros(MAX_CODE + 1, np.int64)
    union = np.zeros(MAX_CODE + 1, np.int64)
    present = np.zeros(MAX_CODE + 1, bool)
    correct = total = 0
    for pred, target in zip(preds, targets, strict=True):
        p = np.bincount(pred.reshape(-1).astype(np.int64), minlength=MAX_CODE + 1)
        t = np.bincount(target.reshape(-1).astype(np.int64), minlength=MAX_CODE + 1)
        both = np.bincount(target[pred == target].astype(np.int64), minlength=MAX_CODE + 1)
        inter += both
        union += p + t - both
        present |= t > 0
        correct += int(both.sum())
        total += target.size
    if total == 0:
        raise ValueError("segmentation_scores: no images")
    ious = {class_name(c): float(inter[c] / union[c]) for c in CODES if present[c]}
    return {"miou": float(np.mean(list(ious.values()))), "pixel_accuracy": correct / total,
            "per_class_iou": ious}


def mask_fidelity(judge: Judge, images: Sequence[np.ndarray] | np.ndarray,
                  targets: Sequence[np.ndarray] | np.ndarray) -> dict[str, Any]:
    """Re-segment `images` with the judge and score them against their target codes."""
    preds = judge.classify(np.stack(list(images)))
    return segmentation_scores(list(preds), list(targets))


# ---------------------------------------------------------------------------------------------
# A model's report: generated vs real vs untrained vs the VAE's round trip
# ---------------------------------------------------------------------------------------------


def generate_images(pipe: Any, codes: np.ndarray, captions: Sequence[str], sampling: dict[str, Any],
                    seed: int, batch_size: int = 8) -> np.ndarray:
    """One image per map (seed `seed + i` for map i), in batches; (N, H, W, 3) uint8."""
    from tqdm.auto import tqdm

    from seg2sat.generation.pipeline import generate_batch

    hints = PALETTE[codes]
    out = []
    for i in tqdm(range(0, len(codes), batch_size), desc="generate", unit="batch", leave=False):
        j = min(len(codes), i + batch_size)
        out.append(generate_batch(
            pipe, list(hints[i:j]), list(captions[i:j]), seeds=range(seed + i, seed + j),
            steps=int(sampling["steps"]), guidance_scale=float(sampling["guidance_scale"]),
            controlnet_scale=float(sampling["controlnet_scale"]),
            negative_prompt=str(sampling.get("negative_prompt") or "")))
    return np.concatenate(out)


@torch.no_grad()
def vae_round_trip(vae: Any, images: np.ndarray, batch_size: int = 16) -> np.ndarray:
    """Encode (posterior mean) and decode real images: what the base can render at best."""
    out = []
    for i in range(0, len(images), batch_size):
        x = to_tensor(images[i : i + batch_size]).to(vae.device, vae.dtype)
        rec = vae.decode(vae.encode(x).latent_dist.mean).sample.float().clamp(-1, 1)
        out.append(((rec + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy())
    return np.concatenate(out)


def fidelity_report(pipe: Any, floor: Any | None, judge: Judge, records: Sequence[dict[str, Any]],
                    real: np.ndarray, codes: np.ndarray, sampling: dict[str, Any], seed: int = 0,
                    batch_size: int = 8, vae_round_trip_ceiling: bool = True) -> tuple[dict[str, Any], np.ndarray]:
    """Scores of a model (and of its untrained floor) on maps with real images; and its images.

    `fidelity_ratio` = generated mIoU / real mIoU; `gain_over_untrained` = generated /
    untrained mIoU (same base, seeds and settings); `vae_ratio` is the ratio of the real
    images after the base VAE's round trip, the most a ControlNet on this base can reach.
    """
    captions = [r["caption"] for r in records]
    generated = generate_images(pipe, codes, captions, sampling, seed, batch_size)
    report: dict[str, Any] = {"num_images": len(codes), "sampling": dict(sampling), "seed": seed,
                              "generated": mask_fidelity(judge, generated, codes),
                              "real_images": mask_fidelity(judge, real, codes)}
    real_miou = report["real_images"]["miou"]
    report["fidelity_ratio"] = report["generated"]["miou"] / real_miou
    if floor is not None:
        report["untrained"] = mask_fidelity(judge, generate_images(floor, codes, captions, sampling, seed,
                                                                   batch_size), codes)
        report["floor_ratio"] = report["untrained"]["miou"] / real_miou
        report["gain_over_untrained"] = report["generated"]["miou"] / max(report["untrained"]["miou"], 1e-9)
    if vae_round_trip_ceiling:
        report["vae_round_trip"] = mask_fidelity(judge, vae_round_trip(pipe.vae, real), codes)
        report["vae_ratio"] = report["vae_round_trip"]["miou"] / real_miou
    return report, generated


def grid_image(hints: np.ndarray, generated: np.ndarray, resegmented: np.ndarray, real: np.ndarray,
               scale: int = 2) -> np.ndarray:
    """Rows of map | generated | re-segmented (as a hint) | real, with white gaps."""
    rows = []
    for row in zip(hints, generated, resegmented, real, strict=True):
        cells = [np.kron(a, np.ones((scale, scale, 1), np.uint8)) for a in row]
        gap = np.full((cells[0].shape[0], 4, 3), 255, np.uint8)
        rows.append(np.concatenate([c for cell in cells for c in (cell, gap)][:-1], axis=1))
        rows.append(np.full((4, rows[-1].shape[1], 3), 255, np.uint8))
    return np.concatenate(rows[:-1], axis=0)


def write_outputs(out_dir: Path, report: dict[str, Any], judge: Judge, hints: np.ndarray,
                  generated: np.ndarray, real: np.ndarray, grid_images: int) -> tuple[Path, Path]:
    """`fidelity.json` and `grid.png` in `out_dir`, each written atomically (a killed run's temp files swept)."""
    for name in ("grid.png", "fidelity.json"):
        sweep_tmp(out_dir, name)
    k = min(grid_images, len(hints))
    reseg = np.stack([codes_to_hint(c) for c in judge.classify(generated[:k])])
    grid = grid_image(hints[:k], generated[:k], reseg, real[:k])
    grid_path = out_dir / "grid.png"
    with atomic_path(grid_path, needed=grid.nbytes) as tmp:
        Image.fromarray(grid).save(tmp, format="PNG")
    json_path = write_json(out_dir / "fidelity.json", report)
    return json_path, grid_path
