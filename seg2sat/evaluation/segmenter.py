"""The reference segmenter: does a (synthetic) training set help a segmenter on real tiles?

`seg2sat segment` trains the judge's own network (`judge.NETWORKS`: the compact U-Net or the
atrous net) on one or more FLAIR-layout datasets and scores it on a test dataset. It is the
yardstick of docs/synthetic.md, made a tool so that a user can ask it of their own data:
- **several training sets**, each drawn with a `weight` (relative) or a `rate` (the share of
  samples it supplies: at a fixed number of steps, rate r of a synthetic set replaces r of the
  real samples, the replacement curve of Le et al. 2023), in one or more **phases** (pretrain on
  generated pairs, then fine-tune on real ones: FreeMask's other route);
- **classical augmentation** by default (flips, quarter turns, colour jitter, a scale crop), so
  that a synthetic set is compared with what augmentation alone gives;
- **ignored pixels** (labels.IGNORE_CODE, and nodata) count in no loss and in no score.
Every draw comes from one seeded generator: a run is reproducible from its seed.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from seg2sat.atomic import atomic_path
from seg2sat.errors import ConfigError, DatasetError
from seg2sat.evaluation.judge import Judge, JudgeConfig, to_tensor
from seg2sat.labels import CODES, IGNORE_CODE, MAX_CODE, PALETTE, class_name

DEFAULT_LEGEND = "flair19"  # FLAIR-1's 19 classes (FLAIR-HUB's are read into them)
MERGED_LEGEND = "flair13"  # `prepare merge13=true`: codes 13..19 merged into "other"


# ---------------------------------------------------------------------------------------------
# Datasets: tiles, their labels and what they may not share with a test set.
# ---------------------------------------------------------------------------------------------


@dataclass
class TileSet:
    """The tiles of one dataset: (N, H, W, 3) uint8 images, (N, H, W) codes and where labels hold."""

    name: str
    path: Path
    ids: list[str]
    images: np.ndarray
    codes: np.ndarray
    valid: np.ndarray  # (N, H, W) bool: False on ignored and nodata pixels (no loss, no score)
    sources: list[str | None] = field(default_factory=list)  # the real tile a synthetic one was rendered from
    legend: str = DEFAULT_LEGEND

    def targets(self) -> np.ndarray:
        """The codes with every pixel that is not valid set to IGNORE_CODE."""
        return np.where(self.valid, self.codes, np.uint8(IGNORE_CODE)).astype(np.uint8)


def _select(tiles: list[Any], key: Callable[[Any], str | None], domains: Sequence[str] | None,
            limit: int | None, seed: int) -> list[Any]:
    """The tiles of `domains` (all when None), then `limit` of them drawn with `seed` (kept in order)."""
    if domains:
        tiles = [t for t in tiles if key(t) in set(domains)]
    if limit and limit < len(tiles):
        keep = np.sort(np.random.default_rng(seed).permutation(len(tiles))[:limit])
        tiles = [tiles[i] for i in keep]
    return tiles


def _flair_tiles(name: str, root: Path, select: Mapping[str, Any]) -> TileSet:
    """A FLAIR-1/-2/-HUB tree through its layout (seg2sat.data.tiles): RGB, codes, ignore and nodata."""
    from seg2sat.data.tiles import discover, read_pair

    tiles = discover(root).tiles
    if select.get("split"):
        tiles = [t for t in tiles if t.split == select["split"]]
    tiles = _select(tiles, lambda t: t.domain, select.get("domains"), select.get("limit"), int(select.get("seed", 0)))
    images, codes, valid = [], [], []
    for tile in tiles:
        img, c, v = read_pair(tile)
        images.append(img.rgb())
        codes.append(c)
        valid.append(np.ones(c.shape, bool) if v is None else v)
    legends = {str(t.meta.get("legend") or DEFAULT_LEGEND) for t in tiles}
    if len(legends) > 1:
        raise DatasetError(f"{root}: its tiles declare different legends ({', '.join(sorted(legends))})")
    source = [str(t.meta["source"]).split(":", 1)[1] if str(t.meta.get("source", "")).startswith("prepared:")
              else None for t in tiles]
    return _stacked(name, root, [t.id for t in tiles], images, codes, valid, source, legends.pop() if legends else "")


def _prepared_tiles(name: str, root: Path, select: Mapping[str, Any]) -> TileSet:
    """A prepared dataset's split (`split`, default train): its images, hints read back to codes, valid masks."""
    from seg2sat.data.dataset import load_rgb, read_manifest
    from seg2sat.hints import hint_to_codes

    records = read_manifest(root, select.get("split") or "train")
    records = _select(records, lambda r: r.get("domain"), select.get("domains"), select.get("limit"),
                      int(select.get("seed", 0)))
    images = [load_rgb(root / r["image"]) for r in records]
    codes = [hint_to_codes(load_rgb(root / r["hint"]), source=root / r["hint"]) for r in records]
    valid = [load_rgb(root / r["valid"])[..., 0] > 0 if r.get("valid") else np.ones(c.shape, bool)
             for r, c in zip(records, codes, strict=True)]
    return _stacked(name, root, [r["id"] for r in records], images, codes, valid, [None] * len(records),
                    prepared_legend(root))


def prepared_legend(root: Path) -> str:
    """A prepared dataset's legend: MERGED_LEGEND when it was prepared with `merge13=true`."""
    from omegaconf import OmegaConf

    config = Path(root) / "prepare_config.yaml"
    return MERGED_LEGEND if config.exists() and bool(OmegaConf.load(config).get("merge13")) else DEFAULT_LEGEND


def _stacked(name: str, root: Path, ids: list[str], images: list[np.ndarray], codes: list[np.ndarray],
             valid: list[np.ndarray], sources: list[str | None], legend: str) -> TileSet:
    if not ids:
        return TileSet(name, root, [], np.zeros((0, 1, 1, 3), np.uint8), np.zeros((0, 1, 1), np.uint8),
                       np.zeros((0, 1, 1), bool), [], legend or DEFAULT_LEGEND)
    shapes = {c.shape for c in codes}
    if len(shapes) > 1:
        raise DatasetError(f"{root}: tiles of several sizes ({', '.join(f'{h}x{w}' for h, w in sorted(shapes))}); "
                           "prepare them to one size (`seg2sat prepare size=`)")
    return TileSet(name, root, ids, np.stack(images), np.stack(codes), np.stack(valid), sources,
                   legend or DEFAULT_LEGEND)


def load_tiles(name: str, spec: Mapping[str, Any]) -> TileSet:
    """The tiles a dataset entry selects (`path`, `domains`, `split`, `limit`, `seed`).

    `path` is a FLAIR-layout root (what `sample-data`, `synthesize` and FLAIR's downloads hold),
    or a prepared dataset (a `manifest.jsonl`; `split` picks train or val, train by default).
    """
    if not spec.get("path"):
        raise ConfigError(f"{name}: needs a path (a FLAIR-layout root or a prepared dataset)")
    root = Path(str(spec["path"]))
    if not root.is_dir():
        raise DatasetError(f"{root}: dataset {name!r} not found (not a folder)")
    if (root / "manifest.jsonl").exists():
        return _prepared_tiles(name, root, spec)
    return _flair_tiles(name, root, spec)


def _fingerprints(s: TileSet) -> dict[str, str]:
    """The sha-256 of each tile's pixels -> its id (equal pixels: the same image, whatever the file)."""
    return {hashlib.sha256(image.tobytes()).hexdigest(): tid for image, tid in zip(s.images, s.ids, strict=True)}


def check_sets(train: Sequence[TileSet], test: TileSet) -> None:
    """Refuse, in one line each: an empty selection, another legend, and a test set the training sets overlap.

    Overlap is a tile id in both, the same image bytes in both, or a synthetic training tile
    rendered from a test tile's map (its metadata `source`).
    """
    for s in (*train, test):
        if not s.ids:
            raise DatasetError(f"{s.path}: dataset {s.name!r} selects no tiles (check its domains/split/limit)")
        if not s.valid.any():
            raise DatasetError(f"{s.path}: dataset {s.name!r} has no labelled pixel (every one ignored or nodata)")
        if s.legend != test.legend:
            raise DatasetError(f"{s.path}: dataset {s.name!r} uses legend {s.legend}, the test set "
                               f"{test.path} uses {test.legend}; prepare both the same way (merge13=)")
    test_ids, test_bytes = set(test.ids), _fingerprints(test)
    for s in train:
        shared = sorted(test_ids & set(s.ids))
        if shared:
            raise DatasetError(f"{s.path}: dataset {s.name!r} overlaps the test set {test.path}: "
                               f"{len(shared)} same tile id(s), first {shared[0]}")
        same = [tid for digest, tid in _fingerprints(s).items() if digest in test_bytes]
        if same:
            raise DatasetError(f"{s.path}: dataset {s.name!r} overlaps the test set {test.path}: "
                               f"{len(same)} tile(s) with the same image bytes as a test tile, first {same[0]}")
        rendered = sorted({src for src in s.sources if src in test_ids})
        if rendered:
            raise DatasetError(f"{s.path}: dataset {s.name!r} overlaps the test set {test.path}: its tiles are "
                               f"rendered from {len(rendered)} test tile map(s), first {rendered[0]}")


# ---------------------------------------------------------------------------------------------
# Training: phases of weighted draws, classical augmentation, a loss that skips ignored pixels.
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Augment:
    """Classical augmentation, applied per sample on the fly (probabilities, strength, crop area share)."""

    hflip: float = 0.5
    vflip: float = 0.5
    rot90: float = 0.75  # probability of a quarter turn (1, 2 or 3 turns)
    colour: float = 0.2  # brightness gain in 1 +- colour/2 and per-band shifts in +- colour/2 (on [-1, 1])
    crop_scale: tuple[float, float] | None = (0.5, 1.0)  # area share of a random square crop, resized back

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any] | None) -> Augment:
        """From `augment` (null or {}: none at all); an unknown key is refused."""
        cfg = dict(cfg or {})
        if not cfg:
            return cls(0.0, 0.0, 0.0, 0.0, None)
        unknown = sorted(set(cfg) - set(cls.__dataclass_fields__))
        if unknown:
            raise ConfigError(f"augment: unknown key(s) {', '.join(unknown)}; accepted: "
                              f"{', '.join(cls.__dataclass_fields__)}")
        crop = cfg.get("crop_scale")
        if crop is not None and not (len(crop) == 2 and 0 < float(crop[0]) <= float(crop[1]) <= 1):
            raise ConfigError(f"augment.crop_scale={list(crop)}: give [min, max] area shares in (0, 1]")
        return cls(float(cfg.get("hflip", 0)), float(cfg.get("vflip", 0)), float(cfg.get("rot90", 0)),
                   float(cfg.get("colour", 0)), None if crop is None else (float(crop[0]), float(crop[1])))

    def __call__(self, x: torch.Tensor, y: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, S, S) images in [-1, 1] and (B, S, S) targets, each sample drawn on its own."""
        b = x.shape[0]
        # 1. Scale crop: a square of a random area share, resized back (labels nearest: no blend, ignore kept).
        if self.crop_scale is not None:
            lo, hi = self.crop_scale
            side = (lo + (hi - lo) * torch.rand(b, generator=g)).sqrt()
            theta = torch.zeros(b, 2, 3)
            theta[:, 0, 0] = theta[:, 1, 1] = side
            theta[:, :, 2] = (torch.rand(b, 2, generator=g) * 2 - 1) * (1 - side)[:, None]
            grid = F.affine_grid(theta, list(x.shape), align_corners=False)
            x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
            y = F.grid_sample(y[:, None].float(), grid, mode="nearest", align_corners=False)[:, 0].long()
        # 2. Aerial scenes have no up: flips and quarter turns, each sample its own.
        for p, dim in ((self.hflip, -1), (self.vflip, -2)):
            flip = torch.rand(b, generator=g) < p
            x, y = torch.where(flip[:, None, None, None], x.flip(dim), x), torch.where(flip[:, None, None], y.flip(dim), y)
        turns = torch.where(torch.rand(b, generator=g) < self.rot90, torch.randint(1, 4, (b,), generator=g), 0)
        for k in (1, 2, 3):
            sel = turns == k
            x[sel], y[sel] = torch.rot90(x[sel], k, (-2, -1)), torch.rot90(y[sel], k, (-2, -1))
        # 3. Colour: a brightness gain and a shift per band (sensor and acquisition differences).
        gain = 1 + self.colour * (torch.rand(b, 1, 1, 1, generator=g) - 0.5)
        shift = self.colour * (torch.rand(b, 3, 1, 1, generator=g) - 0.5)
        return x * gain + shift, y


@dataclass(frozen=True)
class Phase:
    """A stretch of training: which sets, with what share of the samples each, for how many steps."""

    sets: tuple[int, ...]  # indices into the training sets
    probabilities: tuple[float, ...]  # of drawing each set, same order
    steps: int


def mix_probabilities(sizes: Sequence[int], weights: Sequence[float | None], rates: Sequence[float | None],
                      names: Sequence[str]) -> tuple[float, ...]:
    """Per set, the probability a sample comes from it.

    A set with a `rate` supplies that share of the samples; the rest is shared by the other sets
    in proportion to `weight` x tiles (no weight: 1, so without weights or rates every tile is
    equally likely, as if the sets were one). A phase on a single set draws only it.
    """
    fixed = sum(r for r in rates if r is not None)
    for name, r, w in zip(names, rates, weights, strict=True):
        if r is not None and not 0 <= r <= 1:
            raise ConfigError(f"{name}.rate={r}: a share of the samples, in [0, 1]")
        if w is not None and w < 0:
            raise ConfigError(f"{name}.weight={w}: must be >= 0")
    if len(sizes) == 1:  # a phase on one set (pretraining on it, say) draws only it, whatever its rate
        return (1.0,)
    if fixed > 1 + 1e-9:
        raise ConfigError(f"rates add up to {fixed:g} > 1 ({', '.join(names)})")
    free = [(w if w is not None else 1.0) * n if r is None else 0.0
            for n, w, r in zip(sizes, weights, rates, strict=True)]
    if sum(free) == 0 and fixed < 1 - 1e-9:
        raise ConfigError(f"rates add up to {fixed:g} < 1 and no other set has a weight ({', '.join(names)})")
    rest = (1 - fixed) / sum(free) if sum(free) else 0.0
    return tuple(r if r is not None else f * rest for r, f in zip(rates, free, strict=True))


@dataclass(frozen=True)
class SegmenterConfig:
    """The network and how it is trained (every phase uses these, with its own steps)."""

    kind: str = "unet"  # a key of judge.NETWORKS
    widths: tuple[int, ...] = (16, 32, 64)
    batch_size: int = 16
    learning_rate: float = 3e-3
    crop_size: int = 64  # square crops of this side (or the smallest tile side, if smaller)
    augment: Augment = field(default_factory=Augment)

    def judge_config(self, seed: int) -> JudgeConfig:
        """The judge settings of the same network (it checks `kind`)."""
        return JudgeConfig(widths=self.widths, kind=self.kind, seed=seed, batch_size=self.batch_size,
                           learning_rate=self.learning_rate, crop_size=self.crop_size)


def class_weights(targets: Sequence[np.ndarray]) -> torch.Tensor:
    """Inverse square-root frequency weights over the labelled pixels (ignored ones count nowhere)."""
    freq = torch.zeros(MAX_CODE + 1)
    for t in targets:
        freq += torch.from_numpy(np.bincount(t.reshape(-1), minlength=IGNORE_CODE + 1)[: MAX_CODE + 1]).float()
    weights = torch.where(freq > 0, (freq.sum() / freq.clamp_min(1)) ** 0.5, torch.zeros(()))
    return weights / (weights * freq).sum() * freq.sum()


def segmentation_loss(logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Weighted cross-entropy over the labelled pixels: an IGNORE_CODE target adds nothing, not even to the mean."""
    return F.cross_entropy(logits, targets, weight=weights, ignore_index=IGNORE_CODE)


def _draw(sets: Sequence[tuple[np.ndarray, np.ndarray]], phase: Phase, side: int, config: SegmenterConfig,
          g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch: per sample a set (by the phase's probabilities), a tile, a square crop, then augmentation."""
    probs = torch.tensor(phase.probabilities, dtype=torch.float64)
    which = torch.multinomial(probs, config.batch_size, replacement=True, generator=g).tolist()
    xs, ys = [], []
    for k in which:
        images, targets = sets[phase.sets[k]]
        i = int(torch.randint(0, len(images), (), generator=g))
        h, w = targets.shape[1:3]
        r, c = (int(torch.randint(0, n - side + 1, (), generator=g)) for n in (h, w))
        xs.append(images[i, r:r + side, c:c + side])
        ys.append(targets[i, r:r + side, c:c + side])
    x, y = to_tensor(np.stack(xs)), torch.from_numpy(np.stack(ys).astype(np.int64))
    return config.augment(x, y, g)


def train_segmenter(sets: Sequence[TileSet], phases: Sequence[Phase], config: SegmenterConfig, seed: int,
                    progress: Callable[[int, int, float], None] | None = None) -> Judge:
    """Train the network on the phases in turn (a fresh optimiser and warm-up per phase); a frozen `Judge`."""
    from diffusers.optimization import get_cosine_schedule_with_warmup

    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    judge_config = config.judge_config(seed)
    net = judge_config.build().train()
    arrays = [(s.images, s.targets()) for s in sets]
    side = min(config.crop_size, *(min(s.codes.shape[1:3]) for s in sets))
    total, done, t0, loss = sum(p.steps for p in phases), 0, time.perf_counter(), torch.zeros(())
    for phase in phases:
        # 1. Class weights of this phase's labelled pixels; 2. a fresh optimiser and schedule.
        weights = class_weights([arrays[i][1] for i in phase.sets])
        opt = torch.optim.AdamW(net.parameters(), lr=config.learning_rate)
        sched = get_cosine_schedule_with_warmup(opt, max(1, phase.steps // 10), phase.steps)
        for _ in range(phase.steps):
            # 3. A mixed, augmented batch; the loss over its labelled pixels.
            x, y = _draw(arrays, phase, side, config, g)
            loss = segmentation_loss(net(x), y, weights)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            done += 1
            if progress is not None:
                progress(done, total, float(loss.detach()))
    for p in net.parameters():
        p.grad = None
    info = {"seconds": round(time.perf_counter() - t0, 2), "steps": total, "final_loss": float(loss.detach())}
    return Judge(net, judge_config, info)


# ---------------------------------------------------------------------------------------------
# Scores: a confusion matrix over the labelled pixels, mIoU and per-class IoU from it.
# ---------------------------------------------------------------------------------------------


def confusion(preds: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """(MAX_CODE + 1) x (MAX_CODE + 1) pixel counts, rows the target code, columns the predicted one.

    Pixels whose target is IGNORE_CODE are left out.
    """
    keep = targets != IGNORE_CODE
    t, p = targets[keep].astype(np.int64), preds[keep].astype(np.int64)
    n = MAX_CODE + 1
    return np.bincount(t * n + p, minlength=n * n).reshape(n, n)


def confusion_scores(matrix: np.ndarray) -> dict[str, Any]:
    """MIoU over the classes present in the targets, pixel accuracy, per-class IoU.

    The same definitions as `scores.segmentation_scores` (intersections and unions summed over
    every image, a class predicted but never mapped counts in no mean).
    """
    inter = np.diag(matrix).astype(np.float64)
    union = matrix.sum(0) + matrix.sum(1) - inter
    present = matrix.sum(1) > 0
    ious = {class_name(c): float(inter[c] / union[c]) for c in CODES if present[c]}
    if not ious:
        raise DatasetError("segment: the test set has no labelled pixel to score")
    return {"miou": float(np.mean(list(ious.values()))), "pixel_accuracy": float(inter.sum() / matrix.sum()),
            "per_class_iou": ious}


def write_confusion_png(matrix: np.ndarray, path: Path, title: str) -> Path:
    """The row-normalised confusion matrix of the classes present (targets or predictions), atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    used = [c for c in CODES if matrix[c].sum() or matrix[:, c].sum()]
    sub = matrix[np.ix_(used, used)].astype(np.float64)
    rows = sub / np.maximum(1, sub.sum(1, keepdims=True))
    fig, ax = plt.subplots(figsize=(1.2 + 0.42 * len(used), 1.0 + 0.42 * len(used)))
    ax.imshow(rows, cmap="Blues", vmin=0, vmax=1)
    names = [class_name(c) for c in used]
    ax.set_xticks(range(len(used)), names, rotation=70, ha="right", fontsize=7)
    ax.set_yticks(range(len(used)), names, fontsize=7)
    for tick, c in zip(ax.get_yticklabels(), used, strict=True):
        tick.set_color(PALETTE[c] / 255.0 if PALETTE[c].sum() < 600 else "#333333")
    for (i, j), v in np.ndenumerate(rows):
        if v >= 0.01:
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=6, color="white" if v > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("map")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return path


def score(judge: Judge, test: TileSet) -> tuple[dict[str, Any], np.ndarray]:
    """(scores, confusion matrix) of a trained segmenter on the test tiles' labelled pixels."""
    matrix = confusion(judge.classify(test.images), test.targets())
    return confusion_scores(matrix), matrix
