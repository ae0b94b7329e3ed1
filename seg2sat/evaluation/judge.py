"""The re-segmentation judge: a compact U-Net trained on a dataset's real images, cached per dataset.

As ControlNet (Zhang et al., 2023) and ControlNet++ (Li et al., 2024) do, a segmentation
network trained on *real* images re-segments each generated image, and the prediction is
scored against the map it was generated from (mIoU, pixel accuracy). No pretrained aerial
segmenter exists offline, so the judge is a compact U-Net trained here on the training
split's real images -> codes, and cached per dataset. The same judge scores
- the real validation images: the ceiling of the metric;
- the real images after a round trip through the base's VAE: what the base can render at all;
- images of the trained ControlNet and of an untrained one (zero convolutions, so the
  base's own text-to-image): the floor.
The **fidelity ratio** is generated mIoU / real mIoU.

The judge is trained with photometric augmentation (brightness, colour shifts, mild blur,
noise) so that it scores *which class is where* rather than the exact sharpness or white
balance of the photos; sharpness has its own ceiling, the VAE round trip.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from seg2sat import faults
from seg2sat.atomic import atomic_dir, sha256_of, sweep_tmp
from seg2sat.data.dataset import load_rgb, read_manifest
from seg2sat.data.pixels import to_vae_range
from seg2sat.errors import ConfigError, DatasetError
from seg2sat.hints import hint_to_codes
from seg2sat.labels import MAX_CODE

log = logging.getLogger(__name__)
JUDGE_VERSION = 1  # bump when the network or its training changes: invalidates cached judges


# ---------------------------------------------------------------------------------------------
# The judge: a compact U-Net, (B, 3, H, W) in [-1, 1] -> (B, MAX_CODE + 1, H, W) logits.
# ---------------------------------------------------------------------------------------------


def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.GroupNorm(8, c_out), nn.SiLU(),
                         nn.Conv2d(c_out, c_out, 3, padding=1), nn.GroupNorm(8, c_out), nn.SiLU())


class SegNet(nn.Module):
    """Three-level U-Net; logit `k` is FLAIR code `k` (logit 0 is never a target)."""

    def __init__(self, widths: Sequence[int] = (16, 32, 64)) -> None:
        super().__init__()
        w0, w1, w2 = widths
        self.enc1, self.enc2, self.enc3 = _block(3, w0), _block(w0, w1), _block(w1, w2)
        self.dec2, self.dec1 = _block(w2 + w1, w1), _block(w1 + w0, w0)
        self.head = nn.Conv2d(w0, MAX_CODE + 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits per pixel; sides must be multiples of 4."""
        a = self.enc1(x)
        b = self.enc2(F.max_pool2d(a, 2))
        c = self.enc3(F.max_pool2d(b, 2))
        b = self.dec2(torch.cat([F.interpolate(c, scale_factor=2.0), b], 1))
        a = self.dec1(torch.cat([F.interpolate(b, scale_factor=2.0), a], 1))
        return self.head(a)


class AtrousNet(nn.Module):
    """A judge of another kind: no encoder-decoder skips, dilated convolutions at half resolution.

    DeepLab's idea at toy size: a strided stem, residual blocks with growing dilation (a wide
    receptive field without pooling), a 1x1 head, bilinear upsampling. Its errors differ from the
    U-Net's, so a gain both agree on is not an artefact of one network.
    """

    def __init__(self, widths: Sequence[int] = (24, 48)) -> None:
        super().__init__()
        w0, w1 = widths[0], widths[1]
        self.stem = nn.Sequential(nn.Conv2d(3, w0, 3, padding=1), nn.GroupNorm(8, w0), nn.SiLU(),
                                  nn.Conv2d(w0, w1, 3, stride=2, padding=1), nn.GroupNorm(8, w1), nn.SiLU())
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Conv2d(w1, w1, 3, padding=d, dilation=d), nn.GroupNorm(8, w1), nn.SiLU())
            for d in (1, 2, 4, 8))
        self.head = nn.Conv2d(w1, MAX_CODE + 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits per pixel; sides must be even."""
        h = self.stem(x)
        for block in self.blocks:
            h = h + block(h)
        return F.interpolate(self.head(h), size=x.shape[-2:], mode="bilinear", align_corners=False)


NETWORKS = {"unet": SegNet, "atrous": AtrousNet}


@dataclass(frozen=True)
class JudgeConfig:
    """How the judge is trained (part of its cache key)."""

    widths: tuple[int, ...] = (16, 32, 64)
    steps: int = 400
    batch_size: int = 16
    learning_rate: float = 3e-3
    max_blur_sigma: float = 1.5
    seed: int = 0
    # Side of the random crops trained on: a step costs the same on 64 px and 512 px tiles (tiles
    # no larger than this are used whole, so the demo's 64 px judge is unchanged).
    crop_size: int = 64
    kind: str = "unet"  # a key of NETWORKS
    subset: float = 1.0  # share of the split's tiles trained on, chosen with `seed`

    def __post_init__(self) -> None:
        if self.kind not in NETWORKS:
            raise ConfigError(f"judge.kind={self.kind!r}: choose one of {', '.join(NETWORKS)}")
        if not 0 < self.subset <= 1:
            raise ConfigError(f"judge.subset={self.subset}: must be in (0, 1]")

    def build(self) -> nn.Module:
        """The untrained network of this kind and widths."""
        return NETWORKS[self.kind](self.widths)

    @classmethod
    def from_config(cls, cfg: Any) -> JudgeConfig:
        """The judge settings of a config block (`conf/judge/*.yaml`)."""
        from omegaconf import OmegaConf

        block = OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else dict(cfg or {})
        if "widths" in block:
            block["widths"] = tuple(block["widths"])
        return cls(**block)


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, 3, H, W) float in [-1, 1]."""
    return to_vae_range(torch.from_numpy(np.ascontiguousarray(images[..., :3])).permute(0, 3, 1, 2).float())


def _gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Blur each image of (B, 3, H, W) with its own sigma (0 leaves it unchanged)."""
    taps = torch.arange(-3, 4, dtype=x.dtype)
    kernel = torch.exp(-taps[None] ** 2 / (2 * sigma.clamp_min(1e-3)[:, None] ** 2))
    kernel = torch.where(sigma[:, None] > 0.3, kernel, (taps[None] == 0).to(x.dtype))
    kernel = kernel / kernel.sum(1, keepdim=True)  # (B, 7)
    b, c, h, w = x.shape
    k = kernel.repeat_interleave(c, 0)  # one kernel per (image, channel) group
    y = F.conv2d(F.pad(x.reshape(1, b * c, h, w), (3, 3, 0, 0), mode="reflect"), k.view(b * c, 1, 1, 7), groups=b * c)
    y = F.conv2d(F.pad(y, (0, 0, 3, 3), mode="reflect"), k.view(b * c, 1, 7, 1), groups=b * c)
    return y.view(b, c, h, w)


def _photometric(x: torch.Tensor, g: torch.Generator, max_sigma: float) -> torch.Tensor:
    """Brightness/contrast and colour shifts, blur, sensor noise."""
    b = x.shape[0]
    gain = 1 + 0.4 * (torch.rand(b, 1, 1, 1, generator=g) - 0.5)
    shift = 0.2 * (torch.rand(b, 3, 1, 1, generator=g) - 0.5)
    x = _gaussian_blur(x * gain + shift, torch.rand(b, generator=g) * max_sigma)
    return x + 0.03 * torch.randn(x.shape, generator=g)


class Judge:
    """A trained segmentation network and what it was trained on."""

    def __init__(self, net: nn.Module, config: JudgeConfig, info: dict[str, Any]) -> None:
        self.net = net.eval()
        self.config = config
        self.info = info

    @torch.no_grad()
    def logits(self, batch: np.ndarray, batch_size: int) -> Iterator[tuple[int, torch.Tensor]]:
        """(N, H, W, 3) uint8 -> (start, logits of images start..start+batch_size), class 0 never predicted."""
        h, w = batch.shape[1:3]
        ph, pw = -h % 4, -w % 4  # the U-Net pools twice
        for i in range(0, len(batch), batch_size):
            x = to_tensor(batch[i : i + batch_size])
            if ph or pw:
                x = F.pad(x, (0, pw, 0, ph), mode="reflect")
            logits = self.net(x)[:, :, :h, :w]
            logits[:, 0] = -torch.inf  # 0 is not a FLAIR code
            yield i, logits

    def classify(self, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
        """(H, W, 3) or (N, H, W, 3) uint8 images -> (H, W) or (N, H, W) uint8 codes."""
        images = np.asarray(images)
        single = images.ndim == 3
        batch = images[None] if single else images
        h, w = batch.shape[1:3]
        batch_size = max(1, batch_size * 64 * 64 // (h * w))  # activations bounded whatever the tile size
        codes = np.concatenate([lg.argmax(1).to(torch.uint8).numpy() for _, lg in self.logits(batch, batch_size)])
        return codes[0] if single else codes


def image_features(judge: Judge, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """(N, H, W, 3) uint8 -> (N, 5 * C) unit vectors from the judge's deepest encoder level.

    Global mean plus a 2x2 grid of means: the second half keeps *where* each cover is.
    """
    net = judge.net.eval()
    if not isinstance(net, SegNet):
        raise ConfigError(f"image features come from a U-Net judge (judge.kind=unet), not {type(net).__name__}")
    h, w = np.asarray(images[0]).shape[:2]
    batch_size = max(1, batch_size * 64 * 64 // (h * w))  # bounded activations on 512 px tiles
    out = []
    with torch.no_grad():
        for i in range(0, len(images), batch_size):
            x = to_tensor(np.asarray(images[i: i + batch_size]))
            c = net.enc3(F.max_pool2d(net.enc2(F.max_pool2d(net.enc1(x), 2)), 2))
            feats = torch.cat([c.mean((2, 3)), F.adaptive_avg_pool2d(c, 2).flatten(1)], 1)
            out.append(F.normalize(feats, dim=1).numpy())
    return np.concatenate(out).astype(np.float32)


def _class_weights(codes: np.ndarray) -> torch.Tensor:
    """Inverse square-root frequency weights: rare classes (pools, buildings) still count."""
    freq = torch.from_numpy(np.bincount(codes.reshape(-1), minlength=MAX_CODE + 1)).float()
    weights = torch.where(freq > 0, (freq.sum() / freq.clamp_min(1)) ** 0.5, torch.zeros(()))
    return weights / (weights * freq).sum() * freq.sum()


def _batch(images: np.ndarray, codes: np.ndarray, config: JudgeConfig, g: torch.Generator
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """A random batch, cropped to `crop_size` when the tiles are larger, with a random dihedral transform.

    Tiles no larger than the crop are used whole and draw no crop offsets, so a judge of 64 px
    tiles is the same network, bit for bit, as before crops existed.
    """
    idx = torch.randint(0, len(images), (config.batch_size,), generator=g).numpy()
    h, w = images.shape[1:3]
    ch, cw = min(h, config.crop_size), min(w, config.crop_size)
    if (ch, cw) != (h, w):
        rows = torch.randint(0, h - ch + 1, (len(idx),), generator=g).tolist()
        cols = torch.randint(0, w - cw + 1, (len(idx),), generator=g).tolist()
        x_np = np.stack([images[i, r:r + ch, c:c + cw] for i, r, c in zip(idx, rows, cols, strict=True)])
        y_np = np.stack([codes[i, r:r + ch, c:c + cw] for i, r, c in zip(idx, rows, cols, strict=True)])
    else:
        x_np, y_np = images[idx], codes[idx]
    x, y = to_tensor(x_np), torch.from_numpy(y_np.astype(np.int64))
    # Aerial scenes have no up: flips and quarter turns.
    if torch.rand((), generator=g) < 0.5:
        x, y = x.flip(-1), y.flip(-1)
    k = int(torch.randint(0, 4, (), generator=g))
    return torch.rot90(x, k, (-2, -1)), torch.rot90(y, k, (-2, -1))


def train_judge(images: np.ndarray, codes: np.ndarray, config: JudgeConfig = JudgeConfig(),
                progress: Callable[[int, int, float], None] | None = None) -> Judge:
    """Train a SegNet on real (N, H, W, 3) uint8 images and their (N, H, W) codes.

    Each step sees `batch_size` crops of `crop_size` pixels: its cost depends on the crop, not on
    the tile size (measured in docs/fidelity.md), so 512 px FLAIR tiles train as fast as 64 px ones.
    """
    from diffusers.optimization import get_cosine_schedule_with_warmup

    if len(images) == 0:
        raise DatasetError("train_judge: no training images")
    g = torch.Generator().manual_seed(config.seed)
    torch.manual_seed(config.seed)
    net = config.build().train()
    weights = _class_weights(codes)
    opt = torch.optim.AdamW(net.parameters(), lr=config.learning_rate)
    sched = get_cosine_schedule_with_warmup(opt, max(1, config.steps // 10), config.steps)
    t0 = time.perf_counter()
    for step in range(config.steps):
        # 1. A batch of crops; 2. photometric augmentation, then weighted cross-entropy.
        x, y = _batch(images, codes, config, g)
        loss = F.cross_entropy(net(_photometric(x, g, config.max_blur_sigma)), y, weight=weights)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if progress is not None:
            progress(step + 1, config.steps, float(loss.detach()))
    opt.zero_grad(set_to_none=True)  # a trained judge carries no gradient (it is frozen from here on)
    info = {"train_images": len(images), "seconds": round(time.perf_counter() - t0, 1),
            "final_loss": float(loss.detach())}
    return Judge(net, config, info)


def find_prepared(data_dir: str | Path) -> Path:
    """The prepared dataset: `data_dir` itself, or `data_dir/prepared` (a data root)."""
    root = Path(data_dir)
    for candidate in (root, root / "prepared"):
        if (candidate / "manifest.jsonl").exists():
            return candidate
    raise DatasetError(f"{root}: no prepared dataset (no manifest.jsonl here or in prepared/); "
                       "run `seg2sat prepare` first (data_dir=)")


def split_arrays(prepared_dir: str | Path, split: str, limit: int | None = None
                 ) -> tuple[list[dict[str, Any]], np.ndarray, np.ndarray]:
    """(records, (N, H, W, 3) uint8 real images, (N, H, W) uint8 codes) of a prepared split."""
    prepared_dir = Path(prepared_dir)
    records = read_manifest(prepared_dir, split)[: limit or None]
    if not records:
        raise DatasetError(f"{prepared_dir}: no '{split}' tiles in the manifest")
    images = np.stack([load_rgb(prepared_dir / r["image"]) for r in records])
    codes = np.stack([hint_to_codes(load_rgb(prepared_dir / r["hint"]), source=prepared_dir / r["hint"])
                      for r in records])
    return records, images, codes


def _judge_key(records: list[dict[str, Any]], images: np.ndarray, codes: np.ndarray, config: JudgeConfig) -> str:
    digest = hashlib.sha256(json.dumps([JUDGE_VERSION, asdict(config), [r["id"] for r in records]]).encode())
    digest.update(images.tobytes())
    digest.update(codes.tobytes())
    return digest.hexdigest()[:16]


def load_or_train_judge(prepared_dir: str | Path, config: JudgeConfig = JudgeConfig(),
                        split: str = "train") -> tuple[Judge, bool]:
    """The judge of a prepared dataset, from `<prepared>/cache/judge-<key>/` or trained now.

    The key hashes the training split's ids, pixels and codes and the judge config, so a
    changed dataset never reuses a stale judge. Returns (judge, trained_now).
    """
    from safetensors.torch import load_file, save_file

    prepared_dir = Path(prepared_dir)
    records, images, codes = split_arrays(prepared_dir, split)
    if config.subset < 1:  # a subset of its own: a judge that shares no tile choice with another seed's
        keep = np.sort(np.random.default_rng(config.seed).permutation(len(records))[:max(1, round(config.subset * len(records)))])
        records, images, codes = [records[i] for i in keep], images[keep], codes[keep]
    folder = prepared_dir / "cache" / f"judge-{_judge_key(records, images, codes, config)}"
    sweep_tmp(folder.parent, folder.name)  # what a killed run left
    weights = folder / "judge.safetensors"
    cached = _cached_info(folder)
    if cached is not None:
        net = config.build()
        net.load_state_dict(load_file(weights))
        return Judge(net, config, cached), False
    log.info("fidelity: training the judge on %d %s images of %s", len(images), split, prepared_dir)
    from tqdm.auto import tqdm

    with tqdm(total=config.steps, desc="judge", unit="step") as bar:
        def progress(step: int, total: int, loss: float) -> None:
            bar.n = step
            bar.set_postfix(loss=f"{loss:.3f}", refresh=True)
            faults.progress("judge.step", step)

        judge = train_judge(images, codes, config, progress=progress)
    with atomic_dir(folder, overwrite=True, durable=True) as tmp:
        save_file({k: v.contiguous() for k, v in judge.net.state_dict().items()}, str(tmp / "judge.safetensors"))
        info = {**judge.info, "config": asdict(config), "sha256": sha256_of(tmp / "judge.safetensors")}
        (tmp / "judge.json").write_text(json.dumps(info, indent=2))
    judge.info = info  # what a later run loads: a report says the same of a trained and a cached judge
    return judge, True


def _cached_info(folder: Path) -> dict[str, Any] | None:
    """A cached judge's info when its files read whole and its weights match their checksum; else None (retrain)."""
    try:
        info = json.loads((folder / "judge.json").read_text())
        sha = info.get("sha256")
        whole = sha is None or sha256_of(folder / "judge.safetensors") == sha  # older caches hold no checksum
    except (OSError, ValueError, AttributeError):
        return None
    if not whole:
        log.warning("fidelity: the cached judge in %s is damaged; training it again", folder)
    return info if whole else None
