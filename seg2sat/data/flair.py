"""Find FLAIR tiles on disk and pair images with masks.

Two layouts are understood:
- the official one, where images and masks live in sibling trees:
  `flair_aerial_train/D064_2021/Z7_UA/img/IMG_066278.tif` and
  `flair_labels_train/D064_2021/Z7_UA/msk/MSK_066278.tif` (and the `_test` trees);
- flat folders holding `IMG_<id>.tif` and `MSK_<id>.tif` side by side.
Pairs are made by id across the whole root; unpaired files are reported, never silently
dropped. `flair-1_metadata_aerial.json` (keyed `IMG_<id>`) is read when present.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from seg2sat.errors import DatasetError

METADATA_NAME = "flair-1_metadata_aerial.json"
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


@dataclass
class Discovery:
    """Tiles found under a root, plus the files that could not be paired."""

    root: Path
    tiles: list[FlairTile]
    orphan_images: list[Path]
    orphan_masks: list[Path]
    metadata_file: Path | None = None

    def summary(self) -> str:
        """One line for logs."""
        return (f"{self.root}: {len(self.tiles)} tiles, {len(self.orphan_images)} images without mask, "
                f"{len(self.orphan_masks)} masks without image")


def _domain_zone(path: Path) -> tuple[str | None, str | None]:
    domain = next((p for p in path.parts if _DOMAIN.match(p)), None)
    zone = next((p for p in path.parts if _ZONE.match(p)), None)
    return domain, zone


def load_metadata(root: Path) -> tuple[dict[str, dict[str, Any]], Path | None]:
    """The `flair-1_metadata_aerial.json` found at or under `root` (first match), if any."""
    direct = root / METADATA_NAME
    path = direct if direct.exists() else next(iter(sorted(root.rglob(METADATA_NAME))), None)
    if path is None:
        return {}, None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise DatasetError(f"{path}: unreadable metadata JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise DatasetError(f"{path}: expected an object keyed IMG_<id>, found {type(data).__name__}")
    return data, path


def _index(root: Path, pattern: re.Pattern[str], kind: str) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for path in sorted(root.rglob("*")):
        m = pattern.match(path.name)
        if not m or not path.is_file():
            continue
        tile_id = m.group(1)
        if tile_id in found:
            raise DatasetError(f"{root}: {kind} id {tile_id} appears twice: {found[tile_id]} and {path}")
        found[tile_id] = path
    return found


def discover(root: str | Path) -> Discovery:
    """Pair every IMG_<id>.tif with its MSK_<id>.tif under `root`."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: FLAIR root is not a folder")
    images = _index(root, _IMG, "image")
    masks = _index(root, _MSK, "mask")
    if not images and not masks:
        raise DatasetError(f"{root}: no FLAIR tiles found (expected IMG_<id>.tif and MSK_<id>.tif files)")
    metadata, meta_path = load_metadata(root)
    tiles = []
    for tile_id in sorted(set(images) & set(masks)):
        img = images[tile_id]
        meta = dict(metadata.get(f"IMG_{tile_id}", {}))
        domain, zone = _domain_zone(img.relative_to(root))
        tiles.append(FlairTile(
            id=tile_id, img=img, msk=masks[tile_id],
            domain=meta.get("domain") or domain, zone=meta.get("zone") or zone, meta=meta,
        ))
    return Discovery(
        root=root,
        tiles=tiles,
        orphan_images=[images[i] for i in sorted(set(images) - set(masks))],
        orphan_masks=[masks[i] for i in sorted(set(masks) - set(images))],
        metadata_file=meta_path,
    )
