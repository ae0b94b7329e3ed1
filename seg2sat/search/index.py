"""Tile search: find the tiles of a survey by a sentence (French or English) or by example.

By sentence. Each tile's map is described in words (`seg2sat.search.describe.describe`) and the
description embedded with a multilingual sentence encoder (`seg2sat.search.encoders`), and so is
the query; the nearest descriptions by cosine are the answer. Nothing here trains or loads a
network over images: a sentence query costs a description per tile and one encoder call.

By example (`example=`, or `by_example=true` at indexing). Each tile's real image goes through
the encoder of the dataset's re-segmentation judge (`seg2sat.evaluation.judge`: a compact U-Net
trained on the dataset's real images -> codes, so its deepest features encode *which land cover
is where*); the features are pooled on a 2x2 grid plus globally, L2-normalised, and the nearest
tiles by cosine are the answer. The judge is trained once per dataset, on fixed-size crops.

The index (descriptions, text vectors, image features) is built once per dataset, encoder and
describer version and kept in `<prepared>/cache/search-<key>/`, written atomically.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from seg2sat.atomic import atomic_dir
from seg2sat.errors import ConfigError, DatasetError
from seg2sat.search.describe import DESCRIBER_VERSION, describe
from seg2sat.search.encoders import TextEncoder, text_encoder


@dataclass
class Hit:
    """One search result."""

    id: str
    score: float
    description: str
    rank: int
    record: dict[str, Any] = field(default_factory=dict)


@dataclass
class TileIndex:
    """Descriptions and vectors of a set of tiles."""

    ids: list[str]
    descriptions: list[str]
    text_vectors: np.ndarray
    encoder: str
    image_vectors: np.ndarray | None = None
    records: list[dict[str, Any]] = field(default_factory=list)
    key: str = ""

    def __len__(self) -> int:
        return len(self.ids)

    def _hits(self, scores: np.ndarray, k: int, skip: int | None = None) -> list[Hit]:
        if skip is not None:
            scores = scores.copy()
            scores[skip] = -np.inf
        k = min(k, len(scores) - (skip is not None))
        top = np.argpartition(-scores, k - 1)[:k] if k < len(scores) else np.arange(len(scores))
        top = top[np.argsort(-scores[top], kind="stable")]
        return [Hit(self.ids[i], float(scores[i]), self.descriptions[i], r + 1,
                    self.records[i] if self.records else {}) for r, i in enumerate(top)]

    def search_text(self, query: str, k: int = 5, encoder: TextEncoder | None = None) -> list[Hit]:
        """The k tiles whose description is closest to the query (any language the encoder reads)."""
        if not query.strip():
            raise ConfigError("search: the query is empty; write a sentence, e.g. query=\"clairière entourée de forêt\"")
        encoder = encoder or text_encoder(self.encoder)
        if encoder.name != self.encoder:
            raise ConfigError(f"the index was built with {self.encoder!r}; query it with the same encoder, "
                              f"not {encoder.name!r}")
        return self._hits(self.text_vectors @ encoder.encode([query])[0], k)

    def search_example(self, tile_id: str, k: int = 5) -> list[Hit]:
        """The k tiles whose image features are closest to tile `tile_id`'s (itself excluded)."""
        if self.image_vectors is None:
            raise ConfigError("this index has no image features; build it with by_example=true")
        if tile_id not in self.ids:
            raise DatasetError(f"tile {tile_id!r} is not in the index ({len(self)} tiles, e.g. {self.ids[0]!r})")
        i = self.ids.index(tile_id)
        return self._hits(self.image_vectors @ self.image_vectors[i], k, skip=i)


def build_index(ids: Sequence[str], codes: Sequence[np.ndarray], encoder: TextEncoder,
                image_vectors: np.ndarray | None = None, records: list[dict[str, Any]] | None = None,
                batch_size: int = 256) -> TileIndex:
    """Describe every map, embed the descriptions in batches."""
    if len(ids) != len(codes) or not ids:
        raise DatasetError(f"build_index: {len(ids)} ids for {len(codes)} maps")
    descriptions = [describe(c) for c in codes]
    vectors = np.concatenate([encoder.encode(descriptions[i: i + batch_size])
                              for i in range(0, len(descriptions), batch_size)])
    return TileIndex(list(ids), descriptions, vectors.astype(np.float32), encoder.name, image_vectors,
                     records or [])


def save_index(index: TileIndex, folder: Path) -> Path:
    """Write index.npz + index.json atomically into `folder` (replaced whole)."""
    with atomic_dir(folder, overwrite=True) as tmp:
        arrays = {"text": index.text_vectors}
        if index.image_vectors is not None:
            arrays["image"] = index.image_vectors
        np.savez(tmp / "index.npz", **arrays)
        (tmp / "index.json").write_text(json.dumps({
            "ids": index.ids, "descriptions": index.descriptions, "encoder": index.encoder, "key": index.key,
            "records": index.records}, ensure_ascii=False), encoding="utf-8")
    return folder


def load_index(folder: Path) -> TileIndex:
    """Read an index written by `save_index`."""
    meta = json.loads((folder / "index.json").read_text(encoding="utf-8"))
    with np.load(folder / "index.npz") as z:
        image = z["image"] if "image" in z.files else None
        text = z["text"]
    return TileIndex(meta["ids"], meta["descriptions"], text, meta["encoder"], image, meta["records"], meta["key"])


def index_key(prepared_dir: Path, encoder: str, by_example: bool, judge_config: Any = None) -> str:
    """Hash of the manifest, the describer version, the encoder and the image-feature settings."""
    manifest = prepared_dir / "manifest.jsonl"
    if not manifest.exists():
        raise DatasetError(f"{prepared_dir}: no manifest.jsonl; run `seg2sat prepare` first")
    digest = hashlib.sha256(manifest.read_bytes())
    digest.update(json.dumps([DESCRIBER_VERSION, encoder, by_example, repr(judge_config)]).encode())
    return digest.hexdigest()[:16]


def index_prepared(prepared_dir: str | Path, encoder: str = "use-multilingual", by_example: bool = False,
                   judge_config: Any = None, rebuild: bool = False) -> tuple[TileIndex, bool]:
    """The search index of a prepared dataset, from its cache or built now; (index, built_now).

    1. Key the cache by the manifest, describer version, encoder and judge settings.
    2. Read every tile's hint back to codes and describe it; embed the descriptions.
    3. Only with `by_example`: load (or train once) the dataset's judge and pool its image features.
    """
    from seg2sat.data.dataset import load_rgb, read_manifest
    from seg2sat.evaluation.judge import JudgeConfig, image_features, load_or_train_judge
    from seg2sat.hints import hint_to_codes

    prepared_dir = Path(prepared_dir)
    judge_config = judge_config or JudgeConfig()
    key = index_key(prepared_dir, encoder, by_example, judge_config if by_example else None)
    folder = prepared_dir / "cache" / f"search-{key}"
    if (folder / "index.json").exists() and not rebuild:
        return load_index(folder), False
    records = read_manifest(prepared_dir)
    if not records:
        raise DatasetError(f"{prepared_dir}/manifest.jsonl: no tiles")
    codes = [hint_to_codes(load_rgb(prepared_dir / r["hint"]), source=prepared_dir / r["hint"]) for r in records]
    image_vectors = None
    if by_example:
        judge, _ = load_or_train_judge(prepared_dir, judge_config)
        image_vectors = image_features(judge, np.stack([load_rgb(prepared_dir / r["image"]) for r in records]))
    keep = ("id", "image", "hint", "caption", "split", "domain", "zone")
    index = build_index([r["id"] for r in records], codes, text_encoder(encoder), image_vectors,
                        [{k: r.get(k) for k in keep} for r in records])
    index.key = key
    save_index(index, folder)
    return index, True
