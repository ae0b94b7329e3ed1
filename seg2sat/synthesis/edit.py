"""Edited maps: rare classes added where they belong, until a tile holds its target share.

Two edits, both keeping the map plausible:
1. **Swaps within compatible groups**: a forest stand becomes another forest type or a clear
   cut, a crop field plowed land, a meadow brushwood, vineyards ligneous crops; a class is swapped
   in only where its group is already on the map.
2. **Objects from a shape bank**: connected components cut from the real masks of a prepared
   dataset (pools, greenhouses, buildings, vineyard parcels, clear cuts, ...), placed by simple
   rules: a pool beside a house, greenhouses and vineyards in farmland, buildings beside a road, a
   clear cut inside a forest; at most 10% of an object may cover anything else than the classes
   its rule allows under it. Objects are placed until the tile reaches its target share or the
   attempts run out (the report says how far it got).
Every choice draws from the tile's own generator, so a tile's edits depend only on its seed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from seg2sat.labels import code_of

_C = code_of
# Classes that can stand in for each other on a map (a swap keeps the scene plausible).
SWAP_GROUPS: tuple[frozenset[int], ...] = (
    frozenset({_C("coniferous"), _C("deciduous"), _C("mixed"), _C("clear cut")}),
    frozenset({_C("agricultural land"), _C("plowed land")}),
    frozenset({_C("herbaceous vegetation"), _C("brushwood")}),
    frozenset({_C("bare soil"), _C("pervious surface")}),
    frozenset({_C("vineyard"), _C("ligneous")}),
)
FARMLAND = frozenset({_C("agricultural land"), _C("plowed land"), _C("herbaceous vegetation")})
FOREST = frozenset({_C("coniferous"), _C("deciduous"), _C("mixed")})
OPEN = frozenset({_C("herbaceous vegetation"), _C("pervious surface"), _C("agricultural land"), _C("plowed land"),
                  _C("bare soil"), _C("brushwood")})


@dataclass(frozen=True)
class Rule:
    """Where an object of a class may go: the classes under it, and a class it must stand next to."""

    under: frozenset[int]
    near: frozenset[int] = frozenset()
    distance: int = 3  # pixels


RULES: dict[int, Rule] = {
    _C("swimming pool"): Rule(OPEN, near=frozenset({_C("building")}), distance=4),
    _C("greenhouse"): Rule(FARMLAND),
    _C("vineyard"): Rule(FARMLAND),
    _C("ligneous"): Rule(FARMLAND),
    _C("building"): Rule(OPEN, near=frozenset({_C("impervious surface")}), distance=6),
    _C("clear cut"): Rule(FOREST),
    _C("water"): Rule(OPEN | FOREST),
}
DEFAULT_RULE = Rule(OPEN)


@dataclass
class ShapeBank:
    """Binary shapes of each class, cut from real masks (connected components)."""

    shapes: dict[int, list[np.ndarray]] = field(default_factory=dict)

    @classmethod
    def from_maps(cls, maps: Iterable[np.ndarray], codes: Iterable[int], min_px: int = 4,
                  max_share: float = 0.25) -> ShapeBank:
        """Components of `codes` in `maps`, from `min_px` pixels to `max_share` of a tile."""
        wanted = set(codes)
        bank: dict[int, list[np.ndarray]] = {c: [] for c in wanted}
        for m in maps:
            for code in wanted & set(np.unique(m).tolist()):
                labels, n = ndimage.label(m == code)
                for i, box in enumerate(ndimage.find_objects(labels), start=1):
                    shape = labels[box] == i
                    if min_px <= shape.sum() <= max_share * m.size:
                        bank[code].append(shape)
        return cls({c: v for c, v in bank.items() if v})

    def has(self, code: int) -> bool:
        """Whether the bank holds shapes of `code`."""
        return bool(self.shapes.get(code))


def swappable(code: int, present: Iterable[int]) -> bool:
    """Whether a class of `code`'s group is in `present` (so a swap can bring `code` in)."""
    group = next((g for g in SWAP_GROUPS if code in g), frozenset())
    return bool((group - {code}) & set(present))


def swap_in(codes: np.ndarray, code: int, rng: np.random.Generator) -> bool:
    """Turn one component of a class of `code`'s group into `code`; False when none is on the map."""
    group = next((g for g in SWAP_GROUPS if code in g), frozenset())
    others = sorted((group - {code}) & set(np.unique(codes).tolist()))
    if not others:
        return False
    labels, n = ndimage.label(codes == others[int(rng.integers(len(others)))])
    codes[labels == int(rng.integers(1, n + 1))] = code
    return True


def place(codes: np.ndarray, shape: np.ndarray, code: int, rng: np.random.Generator, attempts: int = 40,
          rule: Rule | None = None) -> bool:
    """Stamp `shape` as `code` where its class's rule allows it; False when no spot was found."""
    rule = rule or RULES.get(code, DEFAULT_RULE)
    h, w = codes.shape
    sh, sw = shape.shape
    if sh >= h or sw >= w:
        return False
    near = ndimage.binary_dilation(np.isin(codes, list(rule.near)), iterations=rule.distance) if rule.near else None
    for _ in range(attempts):
        r, c = int(rng.integers(0, h - sh + 1)), int(rng.integers(0, w - sw + 1))
        window = codes[r:r + sh, c:c + sw]
        if np.isin(window[shape], list(rule.under)).mean() < 0.9:
            continue
        if near is not None and not near[r:r + sh, c:c + sw][shape].any():
            continue
        window[shape] = code
        return True
    return False


def share(codes: np.ndarray, code: int) -> float:
    """The share of `code` in a map."""
    return float((codes == code).mean())


def needed_shapes(codes: Iterable[int]) -> set[int]:
    """The classes whose shapes a bank needs for these targets: them, and what they stand next to."""
    out = set(codes)
    for code in list(out):
        out |= set(RULES.get(code, DEFAULT_RULE).near)
    return out


def _place_one(out: np.ndarray, code: int, bank: ShapeBank, rng: np.random.Generator,
               edits: list[dict[str, object]], tries: int = 5) -> bool:
    """One object of `code` from the bank, trying a few shapes; its neighbour first when the map has none.

    A pool needs a house: when the map holds no class its rule stands next to, one object of such
    a class is placed first (by its own rule); if none can be, the object goes anywhere its rule
    allows under it (the edit says so).
    """
    rule = RULES.get(code, DEFAULT_RULE)
    if rule.near and not np.isin(out, list(rule.near)).any():
        host = next((n for n in sorted(rule.near) if bank.has(n)), None)
        if host is None or not _place_one(out, host, bank, rng, edits, tries):
            rule = Rule(rule.under)
            edits.append({"code": code, "edit": "relaxed", "near": sorted(RULES[code].near)})
        else:
            edits.append({"code": host, "edit": "host", "for": code})
    shapes = bank.shapes.get(code, [])
    return any(place(out, shapes[int(rng.integers(len(shapes)))], code, rng, rule=rule) for _ in range(tries)) \
        if shapes else False


def edit_map(codes: np.ndarray, needs: Mapping[int, float], bank: ShapeBank, rng: np.random.Generator,
             max_objects: int = 30) -> tuple[np.ndarray, list[dict[str, object]]]:
    """A copy of `codes` holding at least `needs[code]` of each class (as far as it can); the edits made.

    1. Swap within the class's group when the map holds none of it yet (one component);
    2. place objects from the bank until the share is reached, at most `max_objects` per class.
    """
    out = codes.copy()
    edits: list[dict[str, object]] = []
    for code, target in sorted(needs.items()):
        if share(out, code) == 0 and swap_in(out, code, rng):
            edits.append({"code": code, "edit": "swap", "share": share(out, code)})
        placed = 0
        while share(out, code) < target and placed < max_objects and _place_one(out, code, bank, rng, edits):
            placed += 1
        if placed:
            edits.append({"code": code, "edit": "objects", "count": placed, "share": share(out, code)})
    return out, edits
