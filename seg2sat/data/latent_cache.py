"""The latent cache: VAE posteriors, text embeddings and hints of a split, computed once.

The VAE posterior (mean and std) of every image, the text embedding of every caption and the
hint (uint8) are computed once and stored under `<prepared>/cache/<key>/` in shards of
`SHARD_SIZE` samples, read memory-mapped: a rank reads the rows it samples, never the whole
split, and a dataset of 240k tiles is a few hundred files, not a file per tile. Ranks build
disjoint shards in parallel; a killed build resumes at the first missing shard; `index.json`,
written last with the checksum of every file, marks the cache complete, and a shard damaged
later (truncated, changed) is found and encoded again. Training then samples
`mean + std * noise`, exactly what `latent_dist.sample()` would give, without running the VAE.
Only augmentations that commute with the VAE grid can be used with the cache:
horizontal/vertical flips and 90-degree rotations, applied identically to the latents and the
hint (`seg2sat.data.augment.cache_safe`). Crops/scales need pixels.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from seg2sat import faults
from seg2sat.atomic import atomic_path, sha256_of, sweep_tmp, write_bytes
from seg2sat.data.dataset import PreparedDataset, read_manifest, tokenize
from seg2sat.errors import DatasetError

log = logging.getLogger(__name__)


def _fingerprint(components: Any) -> str:
    """A cheap, exact digest of the VAE and text-encoder weights.

    A re-trained base at the same path must not reuse a stale cache. It hashes the bytes of
    up to 1024 evenly strided values per tensor (float sums would depend on the thread count,
    giving ranks different keys).
    """
    digest = hashlib.sha256()
    with torch.no_grad():
        for module in (components.vae, components.text_encoder):
            for name, p in module.state_dict().items():
                flat = p.detach().reshape(-1)
                sample = flat[:: max(1, flat.numel() // 1024)].float().cpu().contiguous()
                digest.update(name.encode())
                digest.update(sample.numpy().tobytes())
    return digest.hexdigest()[:16]


SHARD_SIZE = 1024  # samples per cache file: ~0.5 GB at SD size in float32, 240 files for FLAIR-HUB


CACHE_VERSION = 2  # 2: sharded, memory-mapped, with uint8 hints


def _shard_name(shard: int) -> str:
    return f"shard-{shard:05d}.safetensors"


class LatentCache:
    """VAE posteriors, text embeddings and uint8 hints of a split, in memory-mapped shards."""

    def __init__(self, folder: Path, index: Mapping[str, Any]) -> None:
        from safetensors.torch import load_file

        self.folder, self.n, self.shard_size = folder, int(index["n"]), int(index["shard_size"])
        self.empty = load_file(folder / "empty.safetensors")["empty_embeds"]
        self._files: dict[int, Any] = {}

    def __getstate__(self) -> dict[str, Any]:
        # DataLoader workers started by `spawn` receive the cache pickled: open files stay behind.
        return {**self.__dict__, "_files": {}}

    def __len__(self) -> int:
        return self.n

    def _file(self, shard: int) -> Any:
        from safetensors import safe_open

        if shard not in self._files:
            self._files[shard] = safe_open(str(self.folder / _shard_name(shard)), framework="pt")
        return self._files[shard]

    def get(self, index: int, empty: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(mean, std, text embedding, uint8 hint) of one record, read from its shard."""
        f = self._file(index // self.shard_size)
        i = index % self.shard_size

        def row(name: str) -> torch.Tensor:
            return f.get_slice(name)[i:i + 1][0]

        text = self.empty[0] if empty else row("text_embeds")
        return row("latent_mean").float(), row("latent_std").float(), text.float(), row("hints")

    @staticmethod
    def key(base: str, resolution: int, vae_config: Mapping[str, Any], text_config: Mapping[str, Any],
            ids: list[str], captions: list[str]) -> str:
        """Hash of what the cached values depend on.

        Private config entries (`_use_default_values` is a list in set order, which differs
        between processes) are left out, so every rank computes the same key.
        """

        def public(config: Mapping[str, Any]) -> dict[str, Any]:
            return {k: v for k, v in dict(config).items() if not str(k).startswith("_")}

        blob = json.dumps([CACHE_VERSION, base, resolution, public(vae_config), public(text_config), ids, captions],
                          sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    @classmethod
    def folder_for(cls, prepared_dir: str | Path, split: str, components: Any, resolution: int) -> Path:
        """Where the cache of this split, base and resolution lives."""
        records = read_manifest(prepared_dir, split)
        key = cls.key(components.base, resolution, dict(components.vae.config),
                      {**components.text_encoder.config.to_dict(), "weights": _fingerprint(components)},
                      [r["id"] for r in records], [r["caption"] for r in records])
        return Path(prepared_dir) / "cache" / f"{split}-{key}"

    @classmethod
    def build_or_load(cls, prepared_dir: str | Path, split: str, components: Any, resolution: int,
                      device: torch.device | str = "cpu", batch_size: int = 16, is_main: bool = True,
                      rank: int = 0, world: int = 1, barrier: Any = None,
                      shard_size: int = SHARD_SIZE) -> tuple[LatentCache, bool]:
        """Load the cache for these model parts, or compute it; returns (cache, built).

        With `world` > 1 every rank calls this with its `rank` and a `barrier` (e.g.
        `accelerator.wait_for_everyone`): rank r encodes shards r, r + world, ...; rank 0
        then writes the index. A non-main caller with no barrier only loads.
        """
        folder = cls.folder_for(prepared_dir, split, components, resolution)
        index_path = folder / "index.json"
        if index_path.exists():
            damaged = cache_damage(folder)
            if not damaged:
                return cls(folder, json.loads(index_path.read_text())), False
            log.warning("cache: %s damaged (%s); encoding them again", folder, ", ".join(damaged))
            if rank == 0 and (is_main or barrier is not None):
                for name in [*damaged, "index.json"]:
                    (folder / name).unlink(missing_ok=True)
        if not is_main and barrier is None:
            raise DatasetError(f"{index_path}: cache missing on a non-main process (build it on the main process first)")
        wait = barrier or (lambda: None)
        # 1. Sweep a killed build's half-written shard, then each rank encodes its own shards.
        folder.mkdir(parents=True, exist_ok=True)
        if rank == 0:
            sweep_tmp(folder)
        wait()
        ds = PreparedDataset(prepared_dir, split, resolution=resolution)
        encode_shards(ds, folder, components, device, rank, world, batch_size, shard_size)
        wait()
        # 2. The empty-prompt embedding and the index, last: the cache is complete.
        if rank == 0:
            _write_index(ds, folder, components, device, shard_size)
        wait()
        return cls(folder, json.loads(index_path.read_text())), True


def encode_shards(ds: PreparedDataset, folder: Path, components: Any, device: torch.device | str, rank: int = 0,
                  world: int = 1, batch_size: int = 16, shard_size: int = SHARD_SIZE) -> list[int]:
    """Encode shards rank, rank + world, ... of `ds` that are not on disk yet; returns those done.

    Each shard is written whole (temp file, then rename): a killed build keeps the finished ones.
    """
    from safetensors.torch import save_file

    done = []
    for shard in range(rank, -(-len(ds) // shard_size), world):
        path = folder / _shard_name(shard)
        if path.exists():
            continue
        rows = range(shard * shard_size, min(len(ds), (shard + 1) * shard_size))
        tensors = _encode_rows(ds, rows, components, device, batch_size)
        with atomic_path(path, needed=sum(t.numel() * t.element_size() for t in tensors.values())) as tmp:
            save_file(tensors, str(tmp))
        done.append(shard)
        faults.progress("cache.shard", len(done))
    return done


def _write_index(ds: PreparedDataset, folder: Path, components: Any, device: torch.device | str,
                 shard_size: int) -> None:
    from safetensors.torch import save_file

    with torch.no_grad():
        empty = components.text_encoder(tokenize(components.tokenizer, [""]).to(device))[0].float().cpu()
    with atomic_path(folder / "empty.safetensors", needed=empty.numel() * 4) as tmp:
        save_file({"empty_embeds": empty.contiguous()}, str(tmp))
    shards = -(-len(ds) // shard_size)
    files = ["empty.safetensors", *(_shard_name(i) for i in range(shards))]
    index = {"version": CACHE_VERSION, "n": len(ds), "shard_size": shard_size, "shards": shards,
             "ids": [r["id"] for r in ds.records], "sha256": {name: sha256_of(folder / name) for name in files}}
    write_bytes(folder / "index.json", json.dumps(index).encode(), durable=True)


def cache_damage(folder: Path) -> list[str]:
    """The files of a cache that are missing or differ from the checksums in its index (all, if it is unreadable).

    Indexes written before checksums existed are trusted for the files they list.
    """
    try:
        index = json.loads((folder / "index.json").read_text(encoding="utf-8"))
        files = ["empty.safetensors", *(_shard_name(i) for i in range(int(index["shards"])))]
        sums = index.get("sha256") or {}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return sorted(p.name for p in folder.glob("*.safetensors"))
    if not isinstance(sums, dict):
        return files
    return [name for name in files if not (folder / name).is_file()
            or (name in sums and sha256_of(folder / name) != sums[name])]


def _encode_rows(ds: PreparedDataset, rows: range, components: Any, device: torch.device | str,
                 batch_size: int) -> dict[str, torch.Tensor]:
    """VAE posteriors, text embeddings and uint8 hints of dataset rows, as contiguous CPU tensors."""
    vae, te = components.vae, components.text_encoder
    means, stds, texts, hints = [], [], [], []
    with torch.no_grad():
        for start in range(rows.start, rows.stop, batch_size):
            idx = range(start, min(rows.stop, start + batch_size))
            items = [ds[i] for i in idx]
            pix = torch.stack([it["pixel_values"] for it in items]).to(device, vae.dtype)
            dist = vae.encode(pix).latent_dist
            means.append(dist.mean.float().cpu())
            stds.append(dist.std.float().cpu())
            ids_ = tokenize(components.tokenizer, [ds.records[i]["caption"] for i in idx]).to(device)
            texts.append(te(ids_)[0].float().cpu())
            hints.append(torch.stack([it["conditioning"] for it in items]))
    tensors = {"latent_mean": torch.cat(means), "latent_std": torch.cat(stds), "text_embeds": torch.cat(texts),
               "hints": torch.cat(hints)}
    return {k: v.contiguous() for k, v in tensors.items()}
