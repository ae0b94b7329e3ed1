"""Mask fidelity: does a generated image follow its land-cover map? Re-segment it and compare.

As ControlNet (Zhang et al., 2023) and ControlNet++ (Li et al., 2024) do, a segmentation
network trained on *real* images (`seg2sat.evaluation.judge`) re-segments each generated image,
and the prediction is scored against the map it was generated from (mIoU, pixel accuracy). The
same judge scores the real validation images (the ceiling of the metric), the real images after
a round trip through the base's VAE (what the base can render at all), and images of an
untrained ControlNet (the floor). The **fidelity ratio** is generated mIoU / real mIoU.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from seg2sat.atomic import atomic_path, sweep_tmp, write_json
from seg2sat.data.pixels import from_vae_range
from seg2sat.evaluation.judge import Judge, to_tensor
from seg2sat.hints import codes_to_hint
from seg2sat.labels import CODES, MAX_CODE, PALETTE, class_name

log = logging.getLogger(__name__)


@dataclass
class Counts:
    """Per-image, per-class pixel counts of predictions against targets (so subsets score cheaply)."""

    inter: np.ndarray  # (N, C) pixels of class c predicted as c
    union: np.ndarray  # (N, C)
    present: np.ndarray  # (N, C) bool: class c in the image's target
    correct: np.ndarray  # (N,)
    total: np.ndarray  # (N,)

    def scores(self, idx: np.ndarray | None = None) -> dict[str, Any]:
        """MIoU, pixel accuracy and per-class IoU over the images `idx` (all by default)."""
        sel = slice(None) if idx is None else idx
        inter, union = self.inter[sel].sum(0), self.union[sel].sum(0)
        present = self.present[sel].any(0)
        ious = {class_name(c): float(inter[c] / union[c]) for c in CODES if present[c]}
        return {"miou": float(np.mean(list(ious.values()))),
                "pixel_accuracy": float(self.correct[sel].sum() / self.total[sel].sum()), "per_class_iou": ious}


def count(preds: Iterable[np.ndarray], targets: Iterable[np.ndarray]) -> Counts:
    """Per-image intersections and unions of each class."""
    rows = []
    for pred, target in zip(preds, targets, strict=True):
        p = np.bincount(pred.reshape(-1).astype(np.int64), minlength=MAX_CODE + 1)
        t = np.bincount(target.reshape(-1).astype(np.int64), minlength=MAX_CODE + 1)
        both = np.bincount(target[pred == target].astype(np.int64), minlength=MAX_CODE + 1)
        rows.append((both, p + t - both, t > 0, int(both.sum()), target.size))
    if not rows:
        raise ValueError("segmentation_scores: no images")
    inter, union, present, correct, total = (np.array(v) for v in zip(*rows, strict=True))
    return Counts(inter, union, present, correct, total)


def segmentation_scores(preds: Iterable[np.ndarray], targets: Iterable[np.ndarray]) -> dict[str, Any]:
    """MIoU, pixel accuracy and per-class IoU of predicted code maps against targets.

    Intersections and unions are summed over all images per class, then averaged over the
    classes present in the targets (a class predicted but never mapped counts in no mean,
    but it lowers the IoU of the classes it took pixels from).
    """
    return count(preds, targets).scores()


def mask_fidelity(judge: Judge, images: Sequence[np.ndarray] | np.ndarray,
                  targets: Sequence[np.ndarray] | np.ndarray) -> dict[str, Any]:
    """Re-segment `images` with the judge and score them against their target codes."""
    preds = judge.classify(np.stack(list(images)))
    return segmentation_scores(list(preds), list(targets))


def ratio_noise(judge: Judge, generated: np.ndarray, real: np.ndarray, codes: np.ndarray, draws: int = 200,
                seed: int = 0) -> float:
    """Standard deviation of generated/real mIoU when the maps are resampled (bootstrap).

    The noise any comparison of two ratios on these maps must beat: with 24 maps it is a few
    hundredths, the size of the seed-to-seed changes measured in docs/fidelity.md.
    """
    gen = count(list(judge.classify(generated)), list(codes))
    ref = count(list(judge.classify(real)), list(codes))
    return _bootstrap_std(gen, ref, draws, seed)


def _bootstrap_std(gen: Counts, ref: Counts, draws: int = 200, seed: int = 0) -> float:
    """`ratio_noise` from counts already made (a report classifies each image set once)."""
    rng = np.random.default_rng(seed)
    n = len(gen.total)
    ratios = []
    for _ in range(draws):
        idx = rng.integers(0, n, n)
        ratios.append(gen.scores(idx)["miou"] / max(ref.scores(idx)["miou"], 1e-9))
    return float(np.std(ratios))


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
        out.append(from_vae_range(rec).permute(0, 2, 3, 1).cpu().numpy())
    return np.concatenate(out)


@dataclass
class Judges:
    """The judges of a report: the main one, another of a different kind, and the reward model's view.

    The reward model (the segmenter a reward fine-tune trained against) is shown in the grid only:
    a model is never scored by the network it was optimised for.
    """

    main: Judge
    second: Judge | None = None
    reward: Judge | None = None


@dataclass(frozen=True)
class ReportSettings:
    """What a fidelity report generates and measures."""

    sampling: dict[str, Any]
    seed: int = 0
    batch_size: int = 8
    vae_round_trip: bool = True
    realism_weights: Path | None = None  # the Inception TorchScript; None: no KID/FID
    sweep_steps: tuple[int, ...] = field(default_factory=tuple)  # steps to sweep for the fewest faithful


def _judged(judge: Judge, generated: np.ndarray, real: np.ndarray, codes: np.ndarray) -> dict[str, Any]:
    """A judge's scores of the generated and the real images, and their ratio with its noise.

    Each image set is classified once: its counts give the scores and the bootstrap alike (the
    same numbers as `mask_fidelity` and `ratio_noise`, without classifying twice).
    """
    gen = count(list(judge.classify(generated)), list(codes))
    ref = count(list(judge.classify(real)), list(codes))
    out = {"kind": judge.config.kind, "widths": list(judge.config.widths), "seed": judge.config.seed,
           "generated": gen.scores(), "real_images": ref.scores()}
    out["fidelity_ratio"] = out["generated"]["miou"] / out["real_images"]["miou"]
    out["ratio_std"] = _bootstrap_std(gen, ref)
    return out


def _sweep_entry(steps: int, main: dict[str, Any], second: dict[str, Any] | None,
                 realism: dict[str, Any] | None) -> dict[str, Any]:
    """A row of the steps sweep from a generation's scores: both judges' ratios, KID/FID."""
    entry = {"steps": steps, "fidelity_ratio": main["fidelity_ratio"], "ratio_std": main["ratio_std"]}
    if second is not None:
        entry.update(second_ratio=second["fidelity_ratio"], second_ratio_std=second["ratio_std"])
    if realism is not None:
        entry.update(realism)
    return entry


def _scored_at(pipe: Any, steps: int, judges: Judges, captions: list[str], real: np.ndarray, codes: np.ndarray,
               settings: ReportSettings, real_features: np.ndarray | None) -> dict[str, Any]:
    """Generate the maps at `steps` and score them like the main generation (a sweep row)."""
    from seg2sat.evaluation.realism import realism_scores

    images = generate_images(pipe, codes, captions, {**settings.sampling, "steps": steps}, settings.seed,
                             settings.batch_size)
    second = _judged(judges.second, images, real, codes) if judges.second is not None else None
    realism = None if settings.realism_weights is None else realism_scores(
        real, images, settings.realism_weights, real_features, seed=settings.seed)
    return _sweep_entry(steps, _judged(judges.main, images, real, codes), second, realism)


def fewest_faithful_steps(sweep: list[dict[str, Any]]) -> int:
    """The fewest steps whose ratios (both judges) and KID are within noise of the best.

    Within noise: a ratio at most one bootstrap standard deviation (of the best entry) below the
    best ratio; a KID at most one subset standard deviation above the best KID.
    """
    def near_best(key: str, noise: str, higher: bool) -> set[int]:
        if not all(key in e for e in sweep):
            return {e["steps"] for e in sweep}
        best = max(sweep, key=lambda e: e[key]) if higher else min(sweep, key=lambda e: e[key])
        return {e["steps"] for e in sweep if (best[key] - e[key] if higher else e[key] - best[key]) <= best[noise]}

    ok = (near_best("fidelity_ratio", "ratio_std", True) & near_best("second_ratio", "second_ratio_std", True)
          & near_best("kid_x1000", "kid_std_x1000", False))
    return min(ok) if ok else max(e["steps"] for e in sweep)


def _steps_sweep(pipe: Any, report: dict[str, Any], judges: Judges, records: Sequence[dict[str, Any]],
                 real: np.ndarray, codes: np.ndarray, settings: ReportSettings,
                 real_features: np.ndarray | None) -> tuple[list[dict[str, Any]], int]:
    """Each swept step count scored like the main generation.

    The model's own count is the main generation: its row is the report's own scores, taken as
    they are (the same images gave them) rather than measured again.
    """
    t0 = time.perf_counter()
    captions = [r["caption"] for r in records]
    own = int(settings.sampling["steps"])
    sweep = [_sweep_entry(steps, report, report.get("second_judge"), report.get("realism")) if steps == own
             else _scored_at(pipe, steps, judges, captions, real, codes, settings, real_features)
             for steps in sorted(set(settings.sweep_steps))]
    log.info("fidelity: steps sweep %s scored in %.1f s", [e["steps"] for e in sweep], time.perf_counter() - t0)
    return sweep, fewest_faithful_steps(sweep)


def fidelity_report(pipe: Any, floor: Any | None, judges: Judges, records: Sequence[dict[str, Any]],
                    real: np.ndarray, codes: np.ndarray, settings: ReportSettings) -> tuple[dict[str, Any], np.ndarray]:
    """Scores of a model (and of its untrained floor) on maps with real images; and its images.

    `fidelity_ratio` = generated mIoU / real mIoU by the main judge (`second_judge` has another
    kind's); `gain_over_untrained` = generated / untrained mIoU (same base, seeds and settings);
    `vae_ratio` is the ratio of the real images after the base VAE's round trip, the most a
    ControlNet on this base can reach; `realism` is KID/FID against the real images; `steps_sweep`
    scores other step counts and `recommended_steps` is the fewest within noise of the best.
    """
    from seg2sat.evaluation.realism import features, realism_scores

    # 1. The model's images, scored by the main judge (and its noise), then the other kind.
    captions = [r["caption"] for r in records]
    generated = generate_images(pipe, codes, captions, settings.sampling, settings.seed, settings.batch_size)
    main = _judged(judges.main, generated, real, codes)
    report: dict[str, Any] = {"num_images": len(codes), "sampling": dict(settings.sampling), "seed": settings.seed,
                              "generated": main["generated"], "real_images": main["real_images"],
                              "fidelity_ratio": main["fidelity_ratio"], "ratio_std": main["ratio_std"]}
    real_miou = report["real_images"]["miou"]
    if judges.second is not None:
        report["second_judge"] = _judged(judges.second, generated, real, codes)
    # 2. Realism against the real images.
    real_features = features(real, settings.realism_weights) if settings.realism_weights is not None else None
    if real_features is not None:
        report["realism"] = realism_scores(real, generated, settings.realism_weights, real_features, settings.seed)
    # 3. The floor (an untrained ControlNet) and the ceiling (the VAE's round trip).
    if floor is not None:
        report["untrained"] = mask_fidelity(judges.main, generate_images(
            floor, codes, captions, settings.sampling, settings.seed, settings.batch_size), codes)
        report["floor_ratio"] = report["untrained"]["miou"] / real_miou
        report["gain_over_untrained"] = report["generated"]["miou"] / max(report["untrained"]["miou"], 1e-9)
    if settings.vae_round_trip:
        report["vae_round_trip"] = mask_fidelity(judges.main, vae_round_trip(pipe.vae, real), codes)
        report["vae_ratio"] = report["vae_round_trip"]["miou"] / real_miou
    # 4. Fewer steps: the fewest whose scores stay within noise of the best.
    if settings.sweep_steps:
        report["steps_sweep"], report["recommended_steps"] = _steps_sweep(
            pipe, report, judges, records, real, codes, settings, real_features)
    return report, generated


def grid_image(*columns: np.ndarray, scale: int = 2) -> np.ndarray:
    """Rows of the columns side by side (e.g. map | generated | re-segmented | real), with white gaps."""
    rows = []
    for row in zip(*columns, strict=True):
        cells = [np.kron(a, np.ones((scale, scale, 1), np.uint8)) for a in row]
        gap = np.full((cells[0].shape[0], 4, 3), 255, np.uint8)
        rows.append(np.concatenate([c for cell in cells for c in (cell, gap)][:-1], axis=1))
        rows.append(np.full((4, rows[-1].shape[1], 3), 255, np.uint8))
    return np.concatenate(rows[:-1], axis=0)


def write_outputs(out_dir: Path, report: dict[str, Any], judges: Judges, hints: np.ndarray,
                  generated: np.ndarray, real: np.ndarray, grid_images: int) -> tuple[Path, Path]:
    """`fidelity.json` and `grid.png` in `out_dir`, each atomic (a killed run's temp files swept).

    The grid's columns: map | generated | judge's view | [reward model's view] | real.
    """
    for name in ("grid.png", "fidelity.json"):
        sweep_tmp(out_dir, name)
    k = min(grid_images, len(hints))
    views = [np.stack([codes_to_hint(c) for c in j.classify(generated[:k])])
             for j in (judges.main, judges.reward) if j is not None]
    grid = grid_image(hints[:k], generated[:k], *views, real[:k])
    grid_path = out_dir / "grid.png"
    with atomic_path(grid_path, needed=grid.nbytes) as tmp:
        Image.fromarray(grid).save(tmp, format="PNG")
    json_path = write_json(out_dir / "fidelity.json", report)
    return json_path, grid_path
