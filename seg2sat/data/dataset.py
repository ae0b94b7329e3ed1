"""Training data over a prepared manifest, with an exact-resume sampler.

Exact resume: the sampler's order depends only on (seed, epoch) and each rank takes a fixed
slice of it, so resuming at (epoch, batch) replays no batch and skips none. Every random
choice made for a sample (augmentation, empty prompt) is seeded by (seed, epoch, index): it
does not depend on which worker or process loads it, nor on what came before. An
`augment.seed` replaces the run seed for the augmentation draws only. With a latent cache
(`seg2sat.data.latent_cache`) the dataset reads latents instead of pixels.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, Sampler

from seg2sat.data.augment import build_augment, check_augment
from seg2sat.data.pixels import to_vae_range
from seg2sat.errors import DatasetError
from seg2sat.geo.raster import read_plain_image

log = logging.getLogger(__name__)


def read_manifest(prepared_dir: str | Path, split: str | None = None) -> list[dict[str, Any]]:
    """Records of a prepared dataset (optionally one split), in manifest order."""
    path = Path(prepared_dir) / "manifest.jsonl"
    if not path.exists():
        raise DatasetError(f"{path}: no manifest; run `seg2sat prepare` first")
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        try:
            row = json.loads(line) if line.strip() else None
        except ValueError:
            row = "damaged"
        if row is not None and not (isinstance(row, dict) and isinstance(row.get("id"), str)):
            raise DatasetError(f"{path}: line {n} is not a tile record (damaged?); run `seg2sat prepare` again")
        if row is not None:
            rows.append(row)
    if split is not None:
        rows = [r for r in rows if r.get("split") == split]
    return rows


def load_rgb(path: str | Path) -> np.ndarray:
    """An RGB image file as (H, W, 3) uint8 (a broken file is a one-line `RasterError`)."""
    return read_plain_image(path)


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A per-sample seed: independent of worker, process and order."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1)[0])


def dihedral(k: int, flip_h: bool, flip_v: bool, *arrays: torch.Tensor) -> list[torch.Tensor]:
    """Apply the same flips and rot90 to (C, H, W) tensors (latents and hints alike)."""
    out = []
    for a in arrays:
        if flip_h:
            a = a.flip(-1)
        if flip_v:
            a = a.flip(-2)
        if k:
            a = torch.rot90(a, k, dims=(-2, -1))
        out.append(a.contiguous())
    return out


def dihedral_draw(cfg: Mapping[str, Any] | None, seed: int) -> tuple[int, bool, bool]:
    """The flips/rotation drawn for one sample from the augmentation probabilities."""
    cfg = dict(cfg or {})
    rng = np.random.default_rng(seed)
    u = rng.random(4)
    k = int(rng.integers(1, 4)) if u[0] < float(cfg.get("rot90") or 0) else 0
    return k, bool(u[1] < float(cfg.get("hflip") or 0)), bool(u[2] < float(cfg.get("vflip") or 0))


class ShardedEpochSampler(Sampler[int]):
    """Yields `epoch * n + index` for this rank's share of a seeded permutation.

    The permutation is truncated to a multiple of `world * batch_size` so every rank gets the
    same number of full batches; `start_batch` skips batches already trained (resume).
    `set_epoch` moves it on, so one DataLoader (and its persistent workers) serves every epoch.
    """

    def __init__(self, n: int, seed: int, epoch: int, rank: int = 0, world: int = 1,
                 batch_size: int = 1, start_batch: int = 0) -> None:
        self.n, self.seed, self.epoch = n, seed, epoch
        self.rank, self.world, self.batch_size, self.start_batch = rank, world, batch_size, start_batch
        self.batches_per_epoch = n // (world * batch_size)
        if self.batches_per_epoch == 0:
            raise DatasetError(f"{n} samples is fewer than one batch on every process "
                               f"({world} x {batch_size}); lower batch_size")

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """The next `iter()` yields `epoch` from its `start_batch`-th batch."""
        self.epoch, self.start_batch = epoch, start_batch

    def order(self) -> list[int]:
        """This rank's sample indexes for the whole epoch."""
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        perm = torch.randperm(self.n, generator=g)[: self.batches_per_epoch * self.world * self.batch_size]
        # Rank r takes the r-th batch of every group of `world` consecutive batches.
        batches = perm.view(self.batches_per_epoch, self.world, self.batch_size)[:, self.rank]
        return batches.reshape(-1).tolist()

    def __iter__(self) -> Iterator[int]:
        start = self.start_batch * self.batch_size
        return iter(self.epoch * self.n + i for i in self.order()[start:])

    def __len__(self) -> int:
        return (self.batches_per_epoch - self.start_batch) * self.batch_size


class LatentRows(Protocol):
    """What the dataset reads from a latent cache (`seg2sat.data.latent_cache.LatentCache`)."""

    def get(self, index: int, empty: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(mean, std, text embedding, uint8 hint) of one record."""
        ...


class PreparedDataset(Dataset):
    """Samples of a prepared split for ControlNet training.

    Item `epoch * n + index` is record `index` seen in `epoch` (see ShardedEpochSampler):
    pixel_values (3, H, W) in [-1, 1], conditioning (3, H, W) uint8 (the hint, never blended:
    resized with nearest only; `hint_to_float` scales it on the device, so a quarter of the
    bytes cross to the GPU), input_ids (77,), plus index/epoch/id for bookkeeping.
    With a `cache`, `latent_mean`/`latent_std`/`text_embeds` replace pixels and tokens.
    """

    def __init__(self, prepared_dir: str | Path, split: str = "train", resolution: int | None = None,
                 tokenizer: Any = None, augment: Mapping[str, Any] | None = None, seed: int = 0,
                 empty_prompt_prob: float = 0.0, cache: LatentRows | None = None) -> None:
        self.root = Path(prepared_dir)
        self.records = read_manifest(self.root, split)
        if not self.records:
            raise DatasetError(f"{self.root}: no '{split}' tiles in the manifest")
        self.resolution, self.tokenizer, self.seed = resolution, tokenizer, seed
        self.empty_prompt_prob = float(empty_prompt_prob)
        self.augment_cfg = check_augment(augment)
        aug_seed = self.augment_cfg.get("seed")
        self.augment_seed = seed if aug_seed is None else int(aug_seed)
        self.cache = cache
        # Pixel path: albumentations for crops; flips/rot90 go through `dihedral` in both paths
        # so cached and uncached runs draw the same transforms.
        crop = self.augment_cfg.get("crop_scale")
        self._crop = build_augment({"crop_scale": crop}, size=resolution) if crop else None

    def __len__(self) -> int:
        return len(self.records)

    def _pixels(self, rec: dict[str, Any], seed: int) -> tuple[np.ndarray, np.ndarray]:
        image = load_rgb(self.root / rec["image"])
        hint = load_rgb(self.root / rec["hint"])
        if self._crop is not None:
            image, hint = self._crop(image, hint, seed=seed)
        if self.resolution and image.shape[0] != self.resolution:
            image = np.asarray(Image.fromarray(image).resize((self.resolution,) * 2, Image.BICUBIC))
            hint = np.asarray(Image.fromarray(hint).resize((self.resolution,) * 2, Image.NEAREST))
        return image, hint

    def __getitem__(self, key: int) -> dict[str, Any]:
        epoch, index = divmod(int(key), len(self.records))
        rec = self.records[index]
        seed = sample_seed(self.seed, epoch, index)
        aug_seed = sample_seed(self.augment_seed, epoch, index)
        k, fh, fv = dihedral_draw(self.augment_cfg, aug_seed)
        empty = bool(np.random.default_rng(seed + 1).random() < self.empty_prompt_prob)
        item: dict[str, Any] = {"index": index, "epoch": epoch, "id": rec["id"], "empty_prompt": empty}
        if self.cache is not None:
            mean, std, text, hint = self.cache.get(index, empty)
            mean, std, hint = dihedral(k, fh, fv, mean, std, hint)
            item.update(latent_mean=mean, latent_std=std, text_embeds=text, conditioning=hint)
            return item
        image, hint = self._pixels(rec, aug_seed)
        pix = to_vae_range(torch.tensor(image).permute(2, 0, 1).float())
        cond = torch.tensor(hint).permute(2, 0, 1)
        pix, cond = dihedral(k, fh, fv, pix, cond)
        item.update(pixel_values=pix, conditioning=cond)
        if self.tokenizer is not None:
            item["input_ids"] = tokenize(self.tokenizer, "" if empty else rec["caption"])[0]
        return item


def hint_to_float(hint: torch.Tensor) -> torch.Tensor:
    """A uint8 hint batch as float32 in [0, 1] (on whatever device it already is)."""
    return hint.float() / 255 if hint.dtype == torch.uint8 else hint.float()


def tokenize(tokenizer: Any, captions: str | list[str]) -> torch.Tensor:
    """Padded/truncated token ids, (B, max_length)."""
    return tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length,
                     truncation=True, return_tensors="pt").input_ids


def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack tensors, keep lists of the rest."""
    out: dict[str, Any] = {}
    for key in items[0]:
        values = [it[key] for it in items]
        out[key] = torch.stack(values) if isinstance(values[0], torch.Tensor) else torch.tensor(values) \
            if isinstance(values[0], (int, bool)) else values
    return out
