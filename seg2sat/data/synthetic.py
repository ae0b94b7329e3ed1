"""Procedural sample data in the FLAIR layout: the embedded default of the demo and tests.

Each scene is a land-cover map (fields, forest, a river or pond, roads, buildings with pools,
greenhouses, vineyards, ...) and an RGB "photo" of it in which every class has its own
look: a base colour that is NOT its hint colour, plus a texture (furrows, vine rows, tree
crowns, smooth water). So a model must really learn the map -> appearance mapping, and the
fidelity metric can tell whether it did. Files are real GeoTIFFs (EPSG:2154, 0.2 m) in
FLAIR's official tree, with a `flair-1_metadata_aerial.json`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from affine import Affine
from scipy import ndimage

from seg2sat.geo.raster import FLAIR_CRS, FLAIR_RESOLUTION, write_geotiff
from seg2sat.geo.styles import colormap
from seg2sat.labels import code_of

# Domain -> Lambert-93 anchor (x, y) of its tile grid (roughly inside the department).
DOMAINS: dict[str, tuple[float, float]] = {
    "D064_2021": (407000.0, 6260000.0),
    "D033_2020": (420000.0, 6420000.0),
    "D075_2019": (651000.0, 6862000.0),
    "D013_2020": (893000.0, 6247000.0),
    "D067_2021": (1050000.0, 6840000.0),
    "D029_2021": (170000.0, 6800000.0),
}

# Rendered look of each class: base RGB and texture kind. Base colours are deliberately far
# from the hint colours (hints are saturated legend colours; photos are muted).
LOOK: dict[str, tuple[tuple[int, int, int], str]] = {
    "building": ((176, 92, 74), "roof"),                # tiled roofs (grey roofs drawn per building)
    "pervious surface": ((128, 122, 100), "noise"),     # gravel, dirt tracks
    "impervious surface": ((78, 79, 84), "smooth"),     # asphalt
    "bare soil": ((166, 134, 96), "noise"),
    "water": ((38, 66, 96), "water"),
    "coniferous": ((18, 40, 28), "crowns"),             # darker than its hint green
    "deciduous": ((62, 108, 52), "crowns"),
    "brushwood": ((112, 118, 72), "noise"),
    "vineyard": ((104, 120, 64), "rows"),
    "herbaceous vegetation": ((112, 158, 82), "noise"),
    "agricultural land": ((196, 184, 116), "rows"),
    "plowed land": ((142, 110, 82), "furrows"),
    "swimming pool": ((70, 172, 204), "smooth"),
    "snow": ((236, 238, 242), "smooth"),
    "clear cut": ((130, 120, 90), "noise"),
    "mixed": ((80, 100, 60), "crowns"),
    "ligneous": ((90, 130, 70), "crowns"),
    "greenhouse": ((222, 226, 232), "rows"),
    "other": ((96, 96, 96), "noise"),
}
_LOOK_BY_CODE: dict[int, tuple[tuple[int, int, int], str]] = {code_of(n): look for n, look in LOOK.items()}


def _codes(*names: str) -> tuple[int, ...]:
    """Legend codes of class names: the scene rules below name classes, never numbers."""
    return tuple(code_of(n) for n in names)


BUILDING, IMPERVIOUS, BARE_SOIL, WATER, POOL, BRUSHWOOD, GREENHOUSE = _codes(
    "building", "impervious surface", "bare soil", "water", "swimming pool", "brushwood", "greenhouse")
# Fields and their draw probabilities; forest blobs draw deciduous twice as often as the others.
FIELD_CLASSES = _codes("agricultural land", "plowed land", "herbaceous vegetation", "pervious surface", "vineyard")
FIELD_PROBS = (0.3, 0.25, 0.25, 0.1, 0.1)
FOREST_CLASSES = _codes("deciduous", "coniferous", "deciduous", "mixed")
VEGETATION = frozenset(_codes("coniferous", "deciduous", "brushwood", "vineyard", "herbaceous vegetation",
                              "agricultural land", "clear cut", "mixed", "ligneous"))  # bright in NIR
TALL = _codes("building", "coniferous", "deciduous", "mixed")  # raised in the elevation band


@dataclass
class SampleTile:
    """One generated tile."""

    id: str
    domain: str
    zone: str
    img: Path
    msk: Path
    meta: dict


def _rect(codes: np.ndarray, rng: np.random.Generator, code: int, hmin: int, hmax: int) -> tuple[int, int, int, int]:
    h, w = codes.shape
    rh, rw = rng.integers(hmin, hmax + 1, 2)
    r, c = rng.integers(0, max(1, h - rh)), rng.integers(0, max(1, w - rw))
    codes[r : r + rh, c : c + rw] = code
    return r, c, rh, rw


def _blob(shape: tuple[int, int], rng: np.random.Generator, scale: float) -> np.ndarray:
    """A smooth random blob mask (thresholded low-pass noise)."""
    noise = ndimage.gaussian_filter(rng.normal(size=shape), sigma=scale)
    return noise > np.quantile(noise, rng.uniform(0.55, 0.8))


def scene_codes(size: int, rng: np.random.Generator) -> np.ndarray:
    """A random land-cover map (size x size, FLAIR codes)."""
    s = size
    # 1. Fields: split the tile into 2-4 rectangular parcels.
    codes = np.empty((s, s), np.uint8)
    cut_r, cut_c = rng.integers(s // 4, 3 * s // 4, 2)
    for (r0, r1) in ((0, cut_r), (cut_r, s)):
        for (c0, c1) in ((0, cut_c), (cut_c, s)):
            codes[r0:r1, c0:c1] = rng.choice(FIELD_CLASSES, p=FIELD_PROBS)
    # 2. Forest and brush.
    codes[_blob((s, s), rng, s / 10)] = rng.choice(FOREST_CLASSES)
    if rng.random() < 0.3:
        codes[_blob((s, s), rng, s / 16) & (rng.random() < 0.9)] = BRUSHWOOD
    # 3. Water: a river band or a pond.
    yy, xx = np.mgrid[0:s, 0:s]
    if rng.random() < 0.5:
        centre = s * rng.uniform(0.2, 0.8) + s * 0.12 * np.sin(xx / s * 2 * np.pi * rng.uniform(0.5, 1.5))
        codes[np.abs(yy - centre) < s * rng.uniform(0.05, 0.1)] = WATER
    elif rng.random() < 0.6:
        cy, cx = rng.uniform(0.2, 0.8, 2) * s
        ry, rx = rng.uniform(0.08, 0.18, 2) * s
        codes[((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1] = WATER
    # 4. Roads (impervious), then buildings along them, pools beside some buildings.
    width = max(2, s // 24)
    if rng.random() < 0.8:
        r = rng.integers(s // 8, 7 * s // 8)
        codes[r : r + width, :] = IMPERVIOUS
        for _ in range(rng.integers(1, 5)):
            side = -1 if rng.random() < 0.5 else 1
            bh, bw = rng.integers(s // 12, s // 6, 2)
            c = rng.integers(0, s - bw)
            r0 = r - bh - 2 if side < 0 else r + width + 2
            if 0 <= r0 and r0 + bh < s:
                codes[r0 : r0 + bh, c : c + bw] = BUILDING
                if rng.random() < 0.4 and c + bw + s // 10 < s:
                    pr = r0 + bh // 4
                    codes[pr : pr + max(2, bh // 2), c + bw + 1 : c + bw + 1 + max(2, s // 16)] = POOL
    if rng.random() < 0.4:
        c = rng.integers(s // 8, 7 * s // 8)
        codes[:, c : c + width] = IMPERVIOUS
    # 5. Occasional greenhouses and bare soil.
    if rng.random() < 0.15:
        _rect(codes, rng, GREENHOUSE, s // 10, s // 5)
    if rng.random() < 0.2:
        codes[_blob((s, s), rng, s / 20) & (codes != IMPERVIOUS) & (codes != BUILDING)] = BARE_SOIL
    return codes


def _texture(kind: str, shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w]
    if kind == "smooth":
        return rng.normal(0, 2, shape)
    if kind == "water":
        return ndimage.gaussian_filter(rng.normal(0, 6, shape), 2) + 3 * np.sin(xx / 3.0)
    if kind == "noise":
        return rng.normal(0, 9, shape)
    if kind == "crowns":
        return ndimage.gaussian_filter(rng.normal(0, 40, shape), 1.2)
    if kind == "rows":
        return 14 * np.sign(np.sin(xx * 2 * np.pi / 4)) + rng.normal(0, 4, shape)
    if kind == "furrows":
        return 12 * np.sin((xx + yy) * 2 * np.pi / 5) + rng.normal(0, 5, shape)
    if kind == "roof":
        return 10 * np.sign(np.sin(yy * 2 * np.pi / 6)) + rng.normal(0, 4, shape)
    raise ValueError(f"unknown texture {kind!r}")


def render(codes: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A 5-band uint8 FLAIR-like image (R, G, B, NIR, elevation) of a code map."""
    h, w = codes.shape
    rgb = np.zeros((h, w, 3), np.float32)
    for code in np.unique(codes):
        base, kind = _LOOK_BY_CODE[int(code)]
        where = codes == code
        tex = _texture(kind, (h, w), rng)[where]
        rgb[where] = np.asarray(base, np.float32)[None] + tex[:, None]
    # Some buildings get grey roofs: per connected building, a coin flip.
    labels_, n = ndimage.label(codes == BUILDING)
    for i in range(1, n + 1):
        if rng.random() < 0.4:
            rgb[labels_ == i] = (150, 150, 156) + rng.normal(0, 4, ((labels_ == i).sum(), 1))
    rgb += ndimage.gaussian_filter(rng.normal(0, 4, (h, w)), 4)[..., None]  # lighting
    nir = np.where(np.isin(codes, list(VEGETATION)), 170.0, 60.0) + rng.normal(0, 8, (h, w))
    elev = 40 + 10 * np.isin(codes, TALL) + rng.normal(0, 1, (h, w))
    bands = np.concatenate([rgb, nir[..., None], elev[..., None]], axis=-1)
    return np.clip(np.rint(bands), 0, 255).astype(np.uint8).transpose(2, 0, 1)


def tile_paths(root: Path, domain: str, zone: str, tile_id: str) -> tuple[Path, Path]:
    """The official FLAIR tree: images and masks in sibling trees."""
    img = root / "flair_aerial_train" / domain / zone / "img" / f"IMG_{tile_id}.tif"
    msk = root / "flair_labels_train" / domain / zone / "msk" / f"MSK_{tile_id}.tif"
    return img, msk


def generate(
    root: str | Path,
    domains: list[str],
    tiles_per_domain: int,
    size: int,
    seed: int,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[list[SampleTile], int]:
    """Write the sample dataset; returns (tiles, how many were newly written).

    Tile `k` of domain `d` depends only on (seed, d, k), so re-runs and larger datasets keep
    existing tiles identical; complete tiles (both files present, written atomically) are kept.
    """
    root = Path(root)
    tiles, written, total = [], 0, len(domains) * tiles_per_domain
    for di, domain in enumerate(domains):
        if domain not in DOMAINS:
            raise ValueError(f"unknown sample domain {domain!r}; known: {', '.join(DOMAINS)}")
        ax, ay = DOMAINS[domain]
        zone = f"Z{di + 1}_UA"
        cols = int(np.ceil(np.sqrt(tiles_per_domain)))
        for k in range(tiles_per_domain):
            tile_id = f"{(di + 1) * 10000 + k:06d}"
            x0 = ax + (k % cols) * size * FLAIR_RESOLUTION
            y0 = ay - (k // cols) * size * FLAIR_RESOLUTION
            transform = Affine(FLAIR_RESOLUTION, 0, x0, 0, -FLAIR_RESOLUTION, y0)
            img, msk = tile_paths(root, domain, zone, tile_id)
            half = size * FLAIR_RESOLUTION / 2
            rng = np.random.default_rng([seed, di, k])
            meta = {
                "domain": domain, "zone": zone,
                "patch_centroid_x": x0 + half, "patch_centroid_y": y0 - half, "patch_centroid_z": 40.0,
                "date": f"{domain[-4:]}-{int(rng.integers(4, 10)):02d}-{int(rng.integers(1, 28)):02d}",
                "time": "11h30", "camera": "synthetic",
            }
            if not (img.exists() and msk.exists()):
                codes = scene_codes(size, rng)
                write_geotiff(msk, codes[None], FLAIR_CRS, transform, colormap=colormap())
                write_geotiff(img, render(codes, rng), FLAIR_CRS, transform)
                written += 1
            tiles.append(SampleTile(tile_id, domain, zone, img, msk, meta))
            if progress:
                progress(len(tiles), total)
    return tiles, written
