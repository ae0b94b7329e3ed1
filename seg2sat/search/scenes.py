"""A labelled search benchmark: scenes of known kinds, and French/English queries that should find them."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from seg2sat.errors import ConfigError
from seg2sat.labels import BY_NAME, NAMES
from seg2sat.search.encoders import TextEncoder, text_encoder
from seg2sat.search.index import TileIndex, build_index

QUERIES_FILE = Path(__file__).parent / "queries.json"


def _blob(size: int, rng: np.random.Generator, radius: float, centre: tuple[float, float]) -> np.ndarray:
    """A wobbly disc: a threshold of distance plus smooth noise."""
    yy, xx = np.mgrid[:size, :size] / size
    noise = ndimage.gaussian_filter(rng.normal(size=(size, size)), size / 10)
    noise /= np.abs(noise).max() + 1e-9
    return np.hypot(yy - centre[0], xx - centre[1]) < radius * (1 + 0.25 * noise)


def _band(size: int, rng: np.random.Generator, vertical: bool, width: int) -> np.ndarray:
    """A band that crosses the tile, with a gentle random meander."""
    pos = size * rng.uniform(0.3, 0.7) + np.cumsum(rng.normal(0, 0.4, size))
    idx = np.arange(size)[None, :] if vertical else np.arange(size)[:, None]
    along = pos[:, None] if vertical else pos[None, :]
    return np.abs(idx - along) < width / 2


def scene(kind: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """A (size, size) code map of one scene kind (the labelled set of `benchmark_scenes`)."""
    c = {n: BY_NAME[n].code for n in NAMES}
    forest = c[str(rng.choice(["deciduous", "coniferous", "mixed"]))]
    centre = tuple(rng.uniform(0.4, 0.6, 2))
    m = np.full((size, size), forest, np.uint8)
    if kind == "clearing_in_forest":
        m[_blob(size, rng, rng.uniform(0.15, 0.25), centre)] = c["herbaceous vegetation"]
    elif kind == "lake_in_forest":
        m[:] = c["coniferous"]
        m[_blob(size, rng, rng.uniform(0.15, 0.25), centre)] = c["water"]
    elif kind == "road_across_fields":
        m[:] = c[str(rng.choice(["agricultural land", "plowed land"]))]
        m[_band(size, rng, bool(rng.integers(2)), max(2, size // 16))] = c["impervious surface"]
    elif kind == "river_through_forest":
        m[_band(size, rng, bool(rng.integers(2)), max(3, size // 10))] = c["water"]
    elif kind == "village":
        m[:] = c["herbaceous vegetation"]
        m[_band(size, rng, True, max(2, size // 20)) | _band(size, rng, False, max(2, size // 20))] = c["impervious surface"]
        for _ in range(int(rng.integers(8, 14))):
            y, x = rng.integers(0, size - size // 8, 2)
            if (m[y: y + size // 10, x: x + size // 10] == c["herbaceous vegetation"]).all():
                m[y: y + size // 10, x: x + size // 10] = c["building"]
    elif kind == "vineyards":
        m[:] = c["vineyard"]
        m[_band(size, rng, bool(rng.integers(2)), max(2, size // 24))] = c["pervious surface"]
    elif kind == "snowy_mountain":
        m[:] = c["coniferous"]
        m[: int(size * rng.uniform(0.4, 0.6))] = c["snow"]
    elif kind == "greenhouses":
        m[:] = c["agricultural land"]
        for i in range(int(rng.integers(3, 6))):
            y = int(size * (0.1 + 0.17 * i))
            m[y: y + size // 10, size // 6: size - size // 6] = c["greenhouse"]
    elif kind == "houses_with_pools":
        m[:] = c["herbaceous vegetation"]
        for y in range(size // 8, size - size // 4, size // 3):
            for x in range(size // 8, size - size // 4, size // 3):
                m[y: y + size // 8, x: x + size // 8] = c["building"]
                m[y + size // 6: y + size // 6 + size // 16, x: x + size // 12] = c["swimming pool"]
    elif kind == "forest_edge":
        cut = int(size * rng.uniform(0.4, 0.6))
        m[cut:] = c[str(rng.choice(["agricultural land", "herbaceous vegetation"]))]
    elif kind == "bare_soil_in_fields":
        m[:] = c["agricultural land"]
        m[_blob(size, rng, rng.uniform(0.15, 0.25), centre)] = c["bare soil"]
    elif kind == "pond_in_meadow":
        m[:] = c["herbaceous vegetation"]
        m[_blob(size, rng, rng.uniform(0.1, 0.18), centre)] = c["water"]
    else:
        raise ConfigError(f"unknown scene kind {kind!r}")
    return m


SCENE_KINDS = ("clearing_in_forest", "lake_in_forest", "road_across_fields", "river_through_forest", "village",
               "vineyards", "snowy_mountain", "greenhouses", "houses_with_pools", "forest_edge",
               "bare_soil_in_fields", "pond_in_meadow")


def benchmark_scenes(size: int = 64, per_kind: int = 4, distractors: int = 24, seed: int = 0
                     ) -> tuple[list[str], list[np.ndarray], list[str]]:
    """(ids, code maps, kinds) of the labelled search set.

    `per_kind` maps of each scene kind, then the sample generator's scenes as distractors
    (kind "synthetic", relevant to no query).
    """
    from seg2sat.data.synthetic import scene_codes

    rng = np.random.default_rng(seed)
    ids, maps, kinds = [], [], []
    for kind in SCENE_KINDS:
        for i in range(per_kind):
            ids.append(f"{kind}-{i}")
            maps.append(scene(kind, size, rng))
            kinds.append(kind)
    for i in range(distractors):
        ids.append(f"synthetic-{i}")
        maps.append(scene_codes(size, rng).astype(np.uint8))
        kinds.append("synthetic")
    return ids, maps, kinds


def scenes_index(encoder: TextEncoder | None = None, seed: int = 0
                 ) -> tuple[TileIndex, dict[str, np.ndarray], list[str]]:
    """The labelled scenes indexed by their maps: (index, {id: map}, kinds) (the app's and the lesson's)."""
    ids, maps, kinds = benchmark_scenes(seed=seed)
    return build_index(ids, maps, encoder or text_encoder()), dict(zip(ids, maps, strict=True)), kinds


def load_queries(path: Path = QUERIES_FILE) -> list[dict[str, str]]:
    """The labelled query set: [{"query", "lang", "kind"}]."""
    return json.loads(path.read_text(encoding="utf-8"))["queries"]


def recall_at_k(index: TileIndex, kinds: Sequence[str], queries: Sequence[dict[str, str]], k: int = 5,
                encoder: TextEncoder | None = None) -> dict[str, Any]:
    """Mean over queries of |relevant in top k| / min(k, |relevant|), overall and per language."""
    per_query = []
    t0 = time.perf_counter()
    for q in queries:
        relevant = {i for i, kd in zip(index.ids, kinds, strict=True) if kd == q["kind"]}
        if not relevant:
            raise ConfigError(f"query {q['query']!r}: no tile of kind {q['kind']!r}")
        top = {h.id for h in index.search_text(q["query"], k, encoder)}
        per_query.append({**q, "recall": len(top & relevant) / min(k, len(relevant))})
    seconds = time.perf_counter() - t0
    by_lang = {lang: float(np.mean([p["recall"] for p in per_query if p["lang"] == lang]))
               for lang in sorted({p["lang"] for p in per_query})}
    return {"recall": float(np.mean([p["recall"] for p in per_query])), "by_lang": by_lang, "k": k,
            "queries": per_query, "seconds_per_query": seconds / len(queries)}
