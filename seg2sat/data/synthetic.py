"""Procedural sample data in the FLAIR layout: the embedded default of the demo and tests.

Each scene is a land-cover map (fields, forest, a river or pond, roads, buildings with pools,
greenhouses, vineyards, ...) and an RGB "photo" of it in which every class has its own
look: a base colour that is NOT its hint colour, plus a texture (furrows, vine rows, tree
crowns, smooth water). So a model must really learn the map -> appearance mapping, and the
fidelity metric can tell whether it did. Files are real GeoTIFFs (EPSG:2154, 0.2 m) in
FLAIR's official tree, with a `flair-1_metadata_aerial.json`.

A domain can be given its own look (`Look`: an acquisition colour cast, a brightness, a season's
colours, a texture scale), so that a shift between places exists to be measured (and a
generator specialised on a place has something to learn: `seg2sat specialize`). A look changes
only how a domain's maps are rendered: its maps, and every other domain's tiles, stay
bit-identical to the demo's.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from affine import Affine
from scipy import ndimage

from seg2sat.atomic import write_json
from seg2sat.errors import ConfigError
from seg2sat.geo.geotiff import write_geotiff
from seg2sat.geo.raster import FLAIR_CRS, FLAIR_RESOLUTION
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

# A season's colours: the classes whose base colour differs from LOOK's (which is a summer).
# Only vegetation changes: leaves turn and fall, crops ripen or lie in stubble, grass greens.
SEASONS: dict[str, dict[str, tuple[int, int, int]]] = {
    "spring": {"herbaceous vegetation": (104, 176, 80), "agricultural land": (120, 170, 80),
               "deciduous": (84, 140, 64), "vineyard": (116, 140, 76), "mixed": (86, 120, 66)},
    "summer": {},
    "autumn": {"deciduous": (156, 104, 48), "mixed": (120, 96, 56), "herbaceous vegetation": (150, 146, 88),
               "agricultural land": (176, 150, 100), "vineyard": (140, 112, 60), "ligneous": (140, 110, 60),
               "brushwood": (130, 110, 70)},
    "winter": {"deciduous": (96, 88, 78), "mixed": (70, 76, 62), "herbaceous vegetation": (128, 130, 104),
               "agricultural land": (150, 132, 104), "vineyard": (118, 104, 86), "brushwood": (110, 104, 84),
               "ligneous": (104, 100, 86), "plowed land": (120, 96, 78)},
}
SEASON_MONTH = {"spring": 4, "summer": 7, "autumn": 10, "winter": 1}  # the month written in a tile's date
LOOKS_NAME = "sample_looks.json"  # beside the metadata: the looks the tiles were rendered with


@dataclass(frozen=True)
class Look:
    """How a domain's camera and date make its tiles look; the defaults are the demo's look.

    A real shift between places is mostly this: another camera's white balance (`cast`, a gain
    per R, G, B), another exposure or sun height (`brightness`), another date (`season`: the
    colours of the vegetation), another ground resolution (`texture_scale`: 2 draws rows,
    furrows and crowns twice as coarse).
    """

    cast: tuple[float, float, float] = (1.0, 1.0, 1.0)
    brightness: float = 1.0
    season: str | None = None  # None: LOOK's colours and the dates as drawn
    texture_scale: float = 1.0

    def __post_init__(self) -> None:
        cast = tuple(float(c) for c in self.cast)
        object.__setattr__(self, "cast", cast)
        if len(cast) != 3 or min(cast) <= 0:
            raise ConfigError(f"cast {list(cast)}: expected 3 positive gains (R, G, B)")
        if not float(self.brightness) > 0:
            raise ConfigError(f"brightness {self.brightness}: expected a positive gain")
        if self.season is not None and self.season not in SEASONS:
            raise ConfigError(f"season {self.season!r}: choose one of {', '.join(SEASONS)} (or null)")
        if not float(self.texture_scale) > 0:
            raise ConfigError(f"texture_scale {self.texture_scale}: expected a positive scale")

    @classmethod
    def from_config(cls, domain: str, settings: Mapping[str, object] | None) -> Look:
        """A domain's look from config (`looks: {D013_2020: {cast: [1.1, 1, 0.9], ...}}`)."""
        settings = dict(settings or {})
        unknown = sorted(set(settings) - {f for f in cls.__dataclass_fields__})
        if unknown:
            raise ConfigError(f"looks.{domain}: unknown key(s) {', '.join(unknown)}; "
                              f"known: {', '.join(cls.__dataclass_fields__)}")
        try:
            return cls(**settings)  # type: ignore[arg-type]
        except ConfigError as exc:
            raise ConfigError(f"looks.{domain}: {exc}") from exc

    @property
    def is_default(self) -> bool:
        """True for the demo's look (tiles bit-identical to those rendered without a look)."""
        return self == DEFAULT_LOOK

    def base_colour(self, code: int) -> tuple[tuple[int, int, int], str]:
        """A class's base colour in this look's season, and its texture kind."""
        base, kind = _LOOK_BY_CODE[code]
        if self.season is not None:
            base = SEASONS[self.season].get(NAME_OF_CODE[code], base)
        return base, kind


NAME_OF_CODE: dict[int, str] = {code_of(n): n for n in LOOK}
DEFAULT_LOOK = Look()


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


def _grain(noise: np.ndarray, scale: float) -> np.ndarray:
    """White noise made `scale` times coarser (same spread); unchanged at scale <= 1."""
    if scale <= 1:
        return noise
    coarse = ndimage.gaussian_filter(noise, scale - 1)
    return coarse * (noise.std() / max(float(coarse.std()), 1e-6))


def _texture(kind: str, shape: tuple[int, int], rng: np.random.Generator, scale: float = 1.0) -> np.ndarray:
    """A class's texture; `scale` stretches its periods and blurs (the same random draws at any scale)."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w]
    if scale != 1:
        yy, xx = yy / scale, xx / scale
    if kind == "smooth":
        return _grain(rng.normal(0, 2, shape), scale)
    if kind == "water":
        return ndimage.gaussian_filter(rng.normal(0, 6, shape), 2 * scale) + 3 * np.sin(xx / 3.0)
    if kind == "noise":
        return _grain(rng.normal(0, 9, shape), scale)
    if kind == "crowns":
        return ndimage.gaussian_filter(rng.normal(0, 40, shape), 1.2 * scale)
    if kind == "rows":
        return 14 * np.sign(np.sin(xx * 2 * np.pi / 4)) + rng.normal(0, 4, shape)
    if kind == "furrows":
        return 12 * np.sin((xx + yy) * 2 * np.pi / 5) + rng.normal(0, 5, shape)
    if kind == "roof":
        return 10 * np.sign(np.sin(yy * 2 * np.pi / 6)) + rng.normal(0, 4, shape)
    raise ValueError(f"unknown texture {kind!r}")


def render(codes: np.ndarray, rng: np.random.Generator, look: Look = DEFAULT_LOOK) -> np.ndarray:
    """A 5-band uint8 FLAIR-like image (R, G, B, NIR, elevation) of a code map, in a domain's look.

    A look draws the same random numbers: one map in two looks differs only by the look.
    """
    h, w = codes.shape
    rgb = np.zeros((h, w, 3), np.float32)
    for code in np.unique(codes):
        base, kind = look.base_colour(int(code))
        where = codes == code
        tex = _texture(kind, (h, w), rng, look.texture_scale)[where]
        rgb[where] = np.asarray(base, np.float32)[None] + tex[:, None]
    # Some buildings get grey roofs: per connected building, a coin flip.
    labels_, n = ndimage.label(codes == BUILDING)
    for i in range(1, n + 1):
        if rng.random() < 0.4:
            rgb[labels_ == i] = (150, 150, 156) + rng.normal(0, 4, ((labels_ == i).sum(), 1))
    rgb += ndimage.gaussian_filter(rng.normal(0, 4, (h, w)), 4)[..., None]  # lighting
    if look.cast != DEFAULT_LOOK.cast or look.brightness != DEFAULT_LOOK.brightness:
        rgb = rgb * (np.asarray(look.cast, np.float32) * np.float32(look.brightness))  # the camera, the light
    nir = np.where(np.isin(codes, list(VEGETATION)), 170.0, 60.0) + rng.normal(0, 8, (h, w))
    elev = 40 + 10 * np.isin(codes, TALL) + rng.normal(0, 1, (h, w))
    bands = np.concatenate([rgb, nir[..., None], elev[..., None]], axis=-1)
    return np.clip(np.rint(bands), 0, 255).astype(np.uint8).transpose(2, 0, 1)


def tile_paths(root: Path, domain: str, zone: str, tile_id: str) -> tuple[Path, Path]:
    """The official FLAIR tree: images and masks in sibling trees."""
    img = root / "flair_aerial_train" / domain / zone / "img" / f"IMG_{tile_id}.tif"
    msk = root / "flair_labels_train" / domain / zone / "msk" / f"MSK_{tile_id}.tif"
    return img, msk


def _sample_tile(root: Path, di: int, domain: str, k: int, tiles_per_domain: int, size: int, seed: int,
                 look: Look, rewrite: bool) -> tuple[SampleTile, bool]:
    """Tile `k` of domain number `di`: its record, and whether it was (re)written now."""
    ax, ay = DOMAINS[domain]
    zone = f"Z{di + 1}_UA"
    cols = int(np.ceil(np.sqrt(tiles_per_domain)))
    tile_id = f"{(di + 1) * 10000 + k:06d}"
    x0 = ax + (k % cols) * size * FLAIR_RESOLUTION
    y0 = ay - (k // cols) * size * FLAIR_RESOLUTION
    transform = Affine(FLAIR_RESOLUTION, 0, x0, 0, -FLAIR_RESOLUTION, y0)
    img, msk = tile_paths(root, domain, zone, tile_id)
    half = size * FLAIR_RESOLUTION / 2
    rng = np.random.default_rng([seed, di, k])
    month, day = int(rng.integers(4, 10)), int(rng.integers(1, 28))  # drawn whatever the look: same maps
    if look.season is not None:
        month = SEASON_MONTH[look.season]
    meta = {
        "domain": domain, "zone": zone,
        "patch_centroid_x": x0 + half, "patch_centroid_y": y0 - half, "patch_centroid_z": 40.0,
        "date": f"{domain[-4:]}-{month:02d}-{day:02d}", "time": "11h30", "camera": "synthetic",
    }
    new = rewrite or not (img.exists() and msk.exists())
    if new:
        codes = scene_codes(size, rng)
        write_geotiff(msk, codes[None], FLAIR_CRS, transform, colormap=colormap())
        write_geotiff(img, render(codes, rng, look), FLAIR_CRS, transform)
    return SampleTile(tile_id, domain, zone, img, msk, meta), new


def recorded_looks(root: Path) -> dict[str, dict]:
    """The looks a sample tree's tiles were rendered with (`sample_looks.json`; absent: all default)."""
    path = root / LOOKS_NAME
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: unreadable ({exc}); delete it to render every domain again") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected an object keyed by domain; delete it to render every domain again")
    return data


def _record_looks(root: Path, domains: list[str], looks: Mapping[str, Look], recorded: dict[str, dict]) -> None:
    """Write the looks of non-default domains beside the metadata (nothing at all when none has one)."""
    for domain in domains:
        recorded.pop(domain, None)
        if not looks.get(domain, DEFAULT_LOOK).is_default:
            recorded[domain] = asdict(looks[domain])
    if recorded:
        write_json(root / LOOKS_NAME, {d: {**v, "cast": list(v["cast"])} for d, v in sorted(recorded.items())})
    elif (root / LOOKS_NAME).exists():
        (root / LOOKS_NAME).unlink()


def generate(
    root: str | Path,
    domains: list[str],
    tiles_per_domain: int,
    size: int,
    seed: int,
    progress: Callable[[int, int], None] | None = None,
    looks: Mapping[str, Look] | None = None,
) -> tuple[list[SampleTile], int]:
    """Write the sample dataset; returns (tiles, how many were newly written).

    Tile `k` of domain `d` depends only on (seed, d, k) and the domain's look, so re-runs and
    larger datasets keep existing tiles identical; complete tiles (both files present, written
    atomically) are kept, except those of a domain whose look changed since they were rendered
    (the looks are recorded last, so a killed run renders that domain again).
    """
    root, looks = Path(root), dict(looks or {})
    # 1. Known domains; a look only for a domain being written.
    for domain in [*domains, *looks]:
        if domain not in DOMAINS:
            raise ValueError(f"unknown sample domain {domain!r}; known: {', '.join(DOMAINS)}")
    if set(looks) - set(domains):
        raise ConfigError(f"looks: {', '.join(sorted(set(looks) - set(domains)))} not among domains "
                          f"({', '.join(domains)})")
    # 2. Domains whose recorded look differs from the one asked for are rendered again.
    recorded = recorded_looks(root)
    stale = {d for d in domains if recorded.get(d) != (None if looks.get(d, DEFAULT_LOOK).is_default
                                                        else json.loads(json.dumps(asdict(looks[d]))))}
    # 3. The tiles, then the record of their looks.
    tiles, written, total = [], 0, len(domains) * tiles_per_domain
    for di, domain in enumerate(domains):
        for k in range(tiles_per_domain):
            tile, new = _sample_tile(root, di, domain, k, tiles_per_domain, size, seed,
                                     looks.get(domain, DEFAULT_LOOK), domain in stale)
            written += new
            tiles.append(tile)
            if progress:
                progress(len(tiles), total)
    _record_looks(root, domains, looks, recorded)
    return tiles, written
