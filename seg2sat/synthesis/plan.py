"""The plan of a synthetic dataset: which map, edits, seed, style and season each tile gets.

The plan depends only on the config and the sources (never on workers or timing): tile i takes
source i mod S, the maps of each source in a seeded order, its seed from (run seed, i); edited
tiles get every share target, and count targets go to the first edited tiles until the count is
met. Before anything is generated, a target that no source can reach is refused: a class that is
in no source map, not in the shape bank, and not reachable by a swap.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from seg2sat.errors import ConfigError
from seg2sat.labels import MAX_CODE, NAMES
from seg2sat.synthesis.edit import ShapeBank, swappable
from seg2sat.synthesis.sources import MaskItem
from seg2sat.synthesis.spec import SynthesisSpec

PRESENCE = 1e-9  # a count target asks for the class to be present at all


@dataclass(frozen=True)
class TilePlan:
    """What one synthetic tile is made of."""

    index: int
    id: str
    source: int  # index in the spec's sources
    item: int  # index in that source's maps
    edited: bool
    needs: dict[int, float] = field(default_factory=dict)  # code -> minimum share (edited tiles)
    seed: int = 0
    style: str | None = None
    season: str | None = None


def tile_seed(seed: int, index: int) -> int:
    """A 63-bit seed for tile `index` of a run (independent of the order tiles are made in)."""
    return int(np.random.SeedSequence([seed, index, 7]).generate_state(2, np.uint64)[0] >> np.uint64(1))


def check_reachable(spec: SynthesisSpec, items: Sequence[Sequence[MaskItem]], bank: ShapeBank) -> None:
    """Refuse a target class that no edited source can put on a map."""
    edited = [i for i, s in enumerate(spec.sources) if s.kind == "edited"]
    present: set[int] = set()
    for i in edited:
        for item in items[i]:
            present |= set(np.unique(item.codes).tolist())
    for t in spec.target.classes:
        if t.code not in present and not bank.has(t.code) and not swappable(t.code, present):
            raise ConfigError(f"target.classes: no source can reach {t.name!r}: it is in no edited source's maps, "
                              "in no shape cut from them, and no swap makes it; add a source that holds it")


def _orders(spec: SynthesisSpec, items: Sequence[Sequence[MaskItem]],
            hardness: Sequence[Sequence[float]] | None) -> list[np.ndarray]:
    """Per source, the maps its tiles take in turn: a seeded permutation, or draws in proportion to hardness."""
    if hardness is None:
        return [np.random.default_rng([spec.seed, s, 11]).permutation(len(src)) for s, src in enumerate(items)]
    per_source = -(-spec.target.n_tiles // len(spec.sources))
    orders = []
    for s, h in enumerate(hardness):
        p = np.maximum(np.asarray(h, np.float64), 1e-12)
        orders.append(np.random.default_rng([spec.seed, s, 17]).choice(len(p), size=per_source, p=p / p.sum()))
    return orders


def make_plan(spec: SynthesisSpec, items: Sequence[Sequence[MaskItem]],
              hardness: Sequence[Sequence[float]] | None = None) -> list[TilePlan]:
    """Every tile of the run, in order (see the module's docstring for the rules).

    `hardness` (per source, per map; `trust.resample`): maps are drawn in proportion to it
    instead of each in turn, so hard maps are rendered more often (FreeMask's re-sampling).
    """
    orders = _orders(spec, items, hardness)
    counts = {t.code: t.tiles for t in spec.target.classes if t.tiles}
    plans = []
    n_sources = len(spec.sources)
    for i in range(spec.target.n_tiles):
        s = i % n_sources
        item = int(orders[s][(i // n_sources) % len(orders[s])])
        rng = np.random.default_rng([spec.seed, i, 13])
        edited = spec.sources[s].kind == "edited"
        needs = {t.code: t.share for t in spec.target.classes if t.share} if edited else {}
        if edited:
            for code, left in counts.items():
                if left:
                    needs.setdefault(code, PRESENCE)
                    counts[code] = left - 1
        plans.append(TilePlan(index=i, id=str(spec.id_start + i), source=s, item=item, edited=edited, needs=needs,
                              seed=tile_seed(spec.seed, i),
                              style=spec.variety.styles[int(rng.integers(len(spec.variety.styles)))],
                              season=spec.variety.seasons[int(rng.integers(len(spec.variety.seasons)))]))
    return plans


def class_table(maps: Sequence[np.ndarray]) -> dict[str, dict[str, float]]:
    """Per class: its share of all labelled pixels and the number of maps holding it (ignored pixels count nowhere)."""
    pixels = np.zeros(MAX_CODE + 1, np.int64)
    tiles = np.zeros(MAX_CODE + 1, np.int64)
    total = 0
    for m in maps:
        counts = np.bincount(m.reshape(-1), minlength=MAX_CODE + 1)[:MAX_CODE + 1]  # IGNORE_CODE is above
        pixels += counts
        tiles += counts > 0
        total += int(counts.sum())
    return {NAMES[c - 1]: {"share": round(float(pixels[c]) / max(1, total), 5), "tiles": int(tiles[c])}
            for c in range(1, MAX_CODE + 1) if pixels[c]}


def map_reuse(plans: Sequence[TilePlan], items: Sequence[Sequence[MaskItem]]) -> dict[str, Any]:
    """How many distinct maps the sources hold, how many the plan renders, and how often each.

    Maps are told apart by their codes (two windows of one uniform raster are one map); an edited
    tile counts as a rendering of the map it was edited from. A map rendered k times gives k
    images of one layout: a segmenter learns little from the repeats.
    """
    def key(item: MaskItem) -> str:
        return hashlib.sha1(item.codes.tobytes()).hexdigest()

    keys = [[key(m) for m in src] for src in items]
    uses = Counter(keys[p.source][p.item] for p in plans)
    counts = sorted(uses.values(), reverse=True)
    per_source = []
    for s, src_keys in enumerate(keys):
        mine = Counter(src_keys[p.item] for p in plans if p.source == s)
        per_source.append({"maps": len(src_keys), "distinct": len(set(src_keys)), "tiles": sum(mine.values()),
                           "used": len(mine), "max_reuse": max(mine.values(), default=0)})
    return {"distinct_in_sources": len({k for src in keys for k in src}), "tiles": len(plans), "used": len(uses),
            "max_reuse": counts[0] if counts else 0,
            "mean_reuse": round(len(plans) / len(uses), 3) if uses else 0.0,
            "reused": sum(c > 1 for c in counts), "per_source": per_source}
