"""A land-cover map in words: which classes and where, what surrounds what, what crosses the tile.

A text model cannot look at a land-cover map, but it can read a description of one, so each
tile's mask is turned into a layout-aware English description computed from its code array
(numpy/scipy): which classes and how much, where (centre, north, ... by the centroid of each
class), what surrounds what (a component that does not touch the border and whose surrounding
ring is mostly one other class: open land inside forest is a *clearing*, water inside anything
is a *lake*), and linear features that cross the tile (a road or river component touching two
borders).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from seg2sat.labels import BY_NAME, class_name, class_shares

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


def _cover(codes: np.ndarray, shares: dict[str, float]) -> str:
    """1-2. The classes above the threshold, largest first, with their share and where they are."""
    parts = []
    for name, share in shares.items():
        place = "across most of the tile" if share > 0.6 else where(codes == BY_NAME[name].code)
        parts.append(f"{GLOSS[name]} ({round(100 * share)}%) {place}")
    return "Mostly " + parts[0] + (", with " + ", ".join(parts[1:]) if parts[1:] else "") + "."


def _enclosures(codes: np.ndarray) -> list[str]:
    """3. Components (>= 2% of the tile) touching no border whose ring is >= 60% one other class."""
    h, w = codes.shape
    width = max(2, min(h, w) // 16)
    out = []
    for name in class_shares(codes):
        for comp in _components(codes == BY_NAME[name].code, int(0.02 * h * w))[:2]:
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
            out.append(f"{thing.capitalize()} {where(comp)}, surrounded by {GLOSS[around]}.")
    return out


def _edge(codes: np.ndarray, shares: dict[str, float]) -> list[str]:
    """4. The two main covers (>= 25% each) on opposite sides."""
    main = [n for n, sh in shares.items() if sh >= 0.25][:2]
    if len(main) != 2:
        return []
    a, b = (where(codes == BY_NAME[n].code) for n in main)
    if a != "in the centre" and b == f"in the {_OPPOSITE.get(a[7:], '')}":
        return [f"The edge of {GLOSS[main[0]]} {a} and {GLOSS[main[1]]} {b}."]
    return []


def _crossings(codes: np.ndarray) -> list[str]:
    """5. A road/river/track component touching two borders and covering < 35% of the tile."""
    area = codes.size
    out = []
    for name, noun in LINEAR.items():
        for comp in _components(codes == BY_NAME[name].code, max(4, int(0.01 * area)))[:2]:
            route = _crossing(sides_touched(comp))
            if route and comp.sum() < 0.35 * area:
                out.append(f"{noun.capitalize()} crosses the tile {route}.")
    return out


def _settlements(codes: np.ndarray) -> list[str]:
    """6. Five or more separate buildings make a village; pools beside them, houses with pools."""
    buildings = _components(codes == BY_NAME["building"].code, 2)
    out = []
    if len(buildings) >= 5:
        out.append(f"A village of {len(buildings)} buildings.")
    if buildings and (codes == BY_NAME["swimming pool"].code).any():
        out.append("Houses with swimming pools.")
    return out


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
    shares = {n: s for n, s in class_shares(codes).items() if s >= min_share}
    if not shares:
        return "an empty tile"
    sentences = [_cover(codes, shares), *_enclosures(codes), *_edge(codes, shares), *_crossings(codes),
                 *_settlements(codes)]
    return " ".join(dict.fromkeys(sentences))  # a repeated sentence adds nothing
