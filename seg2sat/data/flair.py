"""Find FLAIR tiles on disk and pair images with masks: FLAIR-1, FLAIR-2 and FLAIR-HUB trees.

FLAIR-1 and FLAIR-2 share one layout (docs/data.md cites IGN's and torchgeo's code for it):
- the official one, where images and masks live in sibling trees:
  `flair_aerial_train/D064_2021/Z7_UA/img/IMG_066278.tif` and
  `flair_labels_train/D064_2021/Z7_UA/msk/MSK_066278.tif` (and the `_test` trees, named
  `flair_2_aerial_test`/`flair_2_labels_test` in FLAIR-2, which adds `flair_sen_train` Sentinel-2
  super-patches and `flair-2_centroids_sp_to_patch.json`);
- flat folders holding `IMG_<id>.tif` and `MSK_<id>.tif` side by side.
Both use the 19 FLAIR-1 codes. Pairs are made by id across the whole root; unpaired files are
reported, never silently dropped. The aerial metadata JSON (keyed `IMG_<id>`:
`flair-1_metadata_aerial.json`, or FLAIR-2's `flair_aerial_metadata.json`) is read when present.
FLAIR-HUB (`D004-2021_AERIAL_RGBI/AA-S1-32/...`, 0-based COSIA codes) lives in
`seg2sat.data.flairhub`. Each layout is a small class whose class attributes say what it reads
(torchgeo's habit); `seg2sat.data.tiles` detects which one a root holds.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from seg2sat.errors import DatasetError, RasterError
from seg2sat.geo.raster import FLAIR_IMG_BANDS, check_same_grid, read_raster
from seg2sat.labels import check_codes

METADATA_NAME = "flair-1_metadata_aerial.json"
METADATA_NAMES = (METADATA_NAME, "flair_aerial_metadata.json")  # FLAIR-1, FLAIR-2
# Top-level entries that only FLAIR-2 has (IGNF/FLAIR-2 flair-2-config.yml, torchgeo flair2.py).
FLAIR2_MARKERS = ("flair_sen_train", "flair_2_sen_test", "flair_2_aerial_test", "flair_2_labels_test",
                  "flair-2_centroids_sp_to_patch.json", "flair_2_centroids_sp_to_patch.json",
                  "flair_aerial_metadata.json")
_IMG = re.compile(r"^IMG_(\d+)\.tiff?$", re.IGNORECASE)
_MSK = re.compile(r"^MSK_(\d+)\.tiff?$", re.IGNORECASE)
_DOMAIN = re.compile(r"^D\d{2,3}_\d{4}$")
_ZONE = re.compile(r"^Z\d+_[A-Z]+$")


@dataclass
class FlairTile:
    """One IMG/MSK pair and what we know of it."""

    id: str
    img: Path
    msk: Path
    domain: str | None = None
    zone: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    layout: str = "flair1"  # a layout's name (`seg2sat.data.tiles.LAYOUTS`): how to read the pair
    split: str | None = None  # "train" | "val" | "test" when the dataset's own split file says so
    modalities: dict[str, str] = field(default_factory=dict)  # other files of the same patch


@dataclass
class Discovery:
    """Tiles found under a root, plus the files that could not be paired."""

    root: Path
    tiles: list[FlairTile]
    orphan_images: list[Path]
    orphan_masks: list[Path]
    metadata_file: Path | None = None
    layout: str = "flair1"
    split_file: Path | None = None
    dates_file: Path | None = None
    not_in_split: list[str] = field(default_factory=list)  # tile ids the split file does not list

    def summary(self) -> str:
        """One line for logs."""
        return (f"{self.root} ({self.layout}): {len(self.tiles)} tiles, {len(self.orphan_images)} images "
                f"without mask, {len(self.orphan_masks)} masks without image")


def _domain_zone(path: Path) -> tuple[str | None, str | None]:
    domain = next((p for p in path.parts if _DOMAIN.match(p)), None)
    zone = next((p for p in path.parts if _ZONE.match(p)), None)
    return domain, zone


def _find_metadata(root: Path) -> Path | None:
    for name in METADATA_NAMES:
        if (root / name).exists():
            return root / name
    for name in METADATA_NAMES:
        found = next(iter(sorted(root.rglob(name))), None)
        if found is not None:
            return found
    return None


def load_metadata(root: Path) -> tuple[dict[str, dict[str, Any]], Path | None]:
    """The aerial metadata JSON (FLAIR-1's or FLAIR-2's name) at or under `root`, if any."""
    path = _find_metadata(root)
    if path is None:
        return {}, None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise DatasetError(f"{path}: unreadable metadata JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise DatasetError(f"{path}: expected an object keyed IMG_<id>, found {type(data).__name__}")
    return data, path


def _index(root: Path) -> tuple[dict[str, Path], dict[str, Path]]:
    """IMG and MSK files by id, in one walk of the tree (sorted, so errors are reproducible)."""
    found: dict[str, dict[str, Path]] = {"image": {}, "mask": {}}
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files):
            for kind, pattern in (("image", _IMG), ("mask", _MSK)):
                m = pattern.match(name)
                if not m:
                    continue
                tile_id, path = m.group(1), Path(folder) / name
                if tile_id in found[kind]:
                    raise DatasetError(f"{root}: {kind} id {tile_id} appears twice: {found[kind][tile_id]} and {path}")
                found[kind][tile_id] = path
    return found["image"], found["mask"]


class TileLayout:
    """A way FLAIR tiles lie on disk: how to recognise a root, find its tiles and read one pair."""

    name: ClassVar[str]

    @classmethod
    def matches(cls, root: Path) -> bool:
        """True when `root`'s top-level names say it holds this layout (no deep walk)."""
        raise NotImplementedError

    @classmethod
    def discover(cls, root: Path, **options: Any) -> Discovery:
        """Every tile under `root`, paired, with the files that could not be paired."""
        raise NotImplementedError

    @staticmethod
    def read_pair(tile: FlairTile) -> tuple[Any, Any, Any]:
        """(image raster, FLAIR-1 codes, valid mask or None) of a tile."""
        raise NotImplementedError


class Flair1(TileLayout):
    """FLAIR-1: `IMG_<id>.tif` (R, G, B, NIR, elevation) and `MSK_<id>.tif` (codes 1..19), paired by id."""

    name = "flair1"

    @classmethod
    def matches(cls, root: Path) -> bool:
        """Any tree of IMG/MSK files: the layout read when no other one matches."""
        return True

    @classmethod
    def discover(cls, root: Path, **options: Any) -> Discovery:
        """Pair every IMG_<id>.tif with its MSK_<id>.tif across the whole root (hub options unused)."""
        images, masks = _index(root)
        if not images and not masks:
            raise DatasetError(f"{root}: no FLAIR tiles found (expected IMG_<id>.tif and MSK_<id>.tif files)")
        metadata, meta_path = load_metadata(root)
        tiles = []
        for tile_id in sorted(set(images) & set(masks)):
            img = images[tile_id]
            meta = dict(metadata.get(f"IMG_{tile_id}", {}))
            domain, zone = _domain_zone(img.relative_to(root))
            tiles.append(FlairTile(id=tile_id, img=img, msk=masks[tile_id], domain=meta.get("domain") or domain,
                                   zone=meta.get("zone") or zone, meta=meta, layout=cls.name))
        return Discovery(root=root, tiles=tiles, orphan_images=[images[i] for i in sorted(set(images) - set(masks))],
                         orphan_masks=[masks[i] for i in sorted(set(masks) - set(images))],
                         metadata_file=meta_path, layout=cls.name)

    @staticmethod
    def read_pair(tile: FlairTile) -> tuple[Any, Any, Any]:
        """The IMG raster and MSK codes, each file opened once (240k tiles: opens are the cost)."""
        img = read_raster(tile.img)
        bands = len(tile.meta.get("bands") or ()) or FLAIR_IMG_BANDS  # a synthetic tile declares its 3 bands
        if img.count != bands:
            raise RasterError(f"{tile.img}: expected {bands} bands "
                              f"({'R, G, B, NIR, elevation' if bands == FLAIR_IMG_BANDS else 'as its metadata declares'}"
                              f"), found {img.count}")
        if img.array.dtype != "uint8":
            raise RasterError(f"{tile.img}: expected uint8 bands, found {img.array.dtype}")
        msk = read_raster(tile.msk)
        if msk.count != 1:
            raise RasterError(f"{tile.msk}: expected 1 band of class codes, found {msk.count}")
        if msk.array.dtype != "uint8":
            raise RasterError(f"{tile.msk}: expected uint8 class codes, found {msk.array.dtype}")
        codes, valid = msk.array[0], None
        if tile.meta.get("ignore_code") is not None:  # declared in the metadata (labels.IGNORE_CODE)
            valid = codes != int(tile.meta["ignore_code"])
        check_codes(codes if valid is None else codes[valid], tile.msk)
        check_same_grid(img, msk)
        return img, codes, valid


class Flair2(Flair1):
    """FLAIR-2: FLAIR-1's aerial layout plus Sentinel-2 super-patches (IGNF/FLAIR-2, torchgeo flair2.py)."""

    name = "flair2"
    markers: ClassVar[tuple[str, ...]] = FLAIR2_MARKERS  # top-level names only FLAIR-2 has

    @classmethod
    def matches(cls, root: Path) -> bool:
        """A top-level entry that only FLAIR-2 has."""
        return any((root / name).exists() for name in cls.markers)
