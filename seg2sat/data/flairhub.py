"""FLAIR-HUB trees: a folder per domain-year and modality, patches paired by id, IGN's splits.

The layout (IGNF/FLAIR-HUB; torchgeo `datasets/flair.py` reads it the same way):

    D004-2021_AERIAL_RGBI/AA-S1-32/D004-2021_AERIAL_RGBI_AA-S1-32_3-7.tif        4 bands RGB+NIR
    D004-2021_AERIAL_LABEL-COSIA/AA-S1-32/D004-2021_AERIAL_LABEL-COSIA_AA-S1-32_3-7.tif
    D004-2021_DEM_ELEV/...  D004-2021_SPOT_RGBI/...  D004-2021_SENTINEL2_TS/...  (other modalities)
    D004-195X_AERIAL-RLT_PAN/...                     historical photos: the year is `195X`
    GLOBAL_ALL_MTD/GLOBAL_ALL_MTD_SPLIT.gpkg         `patch_id`, `split_1`..`split_5`,
                                                     `split_flairchallenge`: train | valid | test

A patch id is the file name without its modality: `D004-2021_AA-S1-32_3-7`. Masks hold the
0-based COSIA codes; `seg2sat.labels.remap_flairhub` turns them into our legend.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from seg2sat.data.flair import Discovery, FlairTile, TileLayout
from seg2sat.errors import DatasetError, RasterError
from seg2sat.geo.raster import RasterData, check_same_grid, read_raster
from seg2sat.labels import remap_flairhub

log = logging.getLogger(__name__)

IMAGE_MODALITY = "AERIAL_RGBI"
LABEL_MODALITY = "AERIAL_LABEL-COSIA"
SPLIT_NAME = "GLOBAL_ALL_MTD_SPLIT.gpkg"
MTD_FOLDER = "GLOBAL_ALL_MTD"
SPLIT_VALUES = {"train": "train", "valid": "val", "val": "val", "test": "test"}
DATE_COLUMNS = ("date", "acquisition_date", "acquisition_dates")
# `D004-2021_AERIAL_RGBI`, `D024047-2021_AERIAL_LABEL-COSIA`, `D004-195X_AERIAL-RLT_PAN`
_FOLDER = re.compile(r"^(?P<domain>D\d{3,6})-(?P<year>\d{4}|195X)_(?P<modality>[A-Z0-9]+(?:[-_][A-Z0-9]+)*)$")


def is_flairhub_root(root: Path) -> bool:
    """True when `root` holds at least one FLAIR-HUB label folder."""
    try:
        names = os.listdir(root)
    except OSError:
        return False
    return any((m := _FOLDER.match(n)) and m["modality"] == LABEL_MODALITY for n in names)


def _modality_folders(root: Path) -> list[tuple[str, str, str, Path]]:
    """(domain, year, modality, folder) of every modality folder at the top of `root`."""
    out = []
    for name in sorted(os.listdir(root)):
        m = _FOLDER.match(name)
        if m and (root / name).is_dir():
            out.append((m["domain"], m["year"], m["modality"], root / name))
    return out


def _patches(folder: Path, prefix: str) -> dict[str, Path]:
    """Patch-id suffix (`AA-S1-32_3-7`) -> file, for `<folder>/<roi>/<prefix>_<roi>_<r-c>.tif`."""
    found: dict[str, Path] = {}
    for roi in sorted(os.scandir(folder), key=lambda e: e.name):
        if not roi.is_dir():
            continue
        for entry in os.scandir(roi.path):
            name = entry.name
            if not name.lower().endswith((".tif", ".tiff")) or not name.startswith(prefix + "_"):
                continue
            found[name[len(prefix) + 1:].rsplit(".", 1)[0]] = Path(entry.path)
    return found


def find_mtd_file(root: Path, name: str) -> Path | None:
    """`name` at the root or in its GLOBAL_ALL_MTD folder (where IGN's archive unpacks)."""
    for candidate in (root / name, root / MTD_FOLDER / name):
        if candidate.is_file():
            return candidate
    return None


def _read_table(path: Path, columns: list[str]) -> Any:
    """The attribute table of a GeoPackage (no geometry: 241k rows read in well under a second)."""
    import pyogrio

    try:
        info = pyogrio.read_info(path)
    except Exception as exc:  # noqa: BLE001 - pyogrio raises several error types for bad files
        raise DatasetError(f"{path}: not a readable GeoPackage: {exc}") from exc
    have = list(info["fields"])
    missing = [c for c in columns if c not in have]
    if missing:
        raise DatasetError(f"{path}: no column {', '.join(missing)} (columns: {', '.join(have)})")
    return pyogrio.read_dataframe(path, columns=columns, read_geometry=False)


def read_splits(path: Path, column: str) -> dict[str, str]:
    """patch_id -> "train" | "val" | "test" from the split GeoPackage's `column` (e.g. split_1)."""
    frame = _read_table(path, ["patch_id", column])
    values = frame[column].astype(str).str.strip().str.lower()
    unknown = sorted(set(values) - set(SPLIT_VALUES))
    if unknown:
        raise DatasetError(f"{path}: column {column} holds {', '.join(unknown)}; expected train, valid, test")
    return dict(zip(frame["patch_id"].astype(str), values.map(SPLIT_VALUES), strict=True))


def parse_date(value: Any) -> str | None:
    """One ISO date from `2021-07-15`, `20210715`, or IGN's JSON dict/list holding exactly one date.

    A time series (several dates) has no single season, so it gives None.
    """
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    text = str(value).strip()
    if text[:1] in "[{":
        try:
            parsed = json.loads(text)
        except json.JSONDecodeError:
            return None
        items = list(parsed.values()) if isinstance(parsed, dict) else list(parsed)
        return parse_date(items[0]) if len(items) == 1 else None
    for fmt, n in (("%Y-%m-%d", 10), ("%Y%m%d", 8)):
        try:
            return dt.datetime.strptime(text[:n], fmt).date().isoformat()
        except ValueError:
            continue
    return None


def read_dates(path: Path, column: str | None = None) -> dict[str, str]:
    """patch_id -> ISO date from a dates GeoPackage (`column`, or the first of DATE_COLUMNS)."""
    import pyogrio

    if column is None:
        fields = list(pyogrio.read_info(path)["fields"]) if path.is_file() else []
        column = next((c for c in DATE_COLUMNS if c in fields), None)
        if column is None:
            raise DatasetError(f"{path}: no date column (looked for {', '.join(DATE_COLUMNS)}; have {', '.join(fields)})")
    frame = _read_table(path, ["patch_id", column])
    dates = {pid: parse_date(v) for pid, v in zip(frame["patch_id"].astype(str), frame[column], strict=True)}
    return {pid: d for pid, d in dates.items() if d}


def discover_hub(root: str | Path, split_file: str | Path | None = None, split_column: str = "split_1",
                 dates_file: str | Path | None = None, date_column: str | None = None) -> Discovery:
    """Pair AERIAL_RGBI with AERIAL_LABEL-COSIA patches by id; attach splits, dates, other modalities.

    Args:
        root: the FLAIR-HUB root (holding the `D*-*_<MODALITY>` folders).
        split_file: the split GeoPackage (default: GLOBAL_ALL_MTD_SPLIT.gpkg found under root).
        split_column: which of its split columns to use (split_1..split_5, split_flairchallenge).
        dates_file: a GeoPackage with `patch_id` and one acquisition date per patch (optional).
        date_column: its date column (default: the first of DATE_COLUMNS).
    """
    # 1. Index every modality folder by patch id.
    root = Path(root)
    by_modality: dict[str, dict[str, Path]] = {}
    for domain, year, modality, folder in _modality_folders(root):
        for suffix, path in _patches(folder, f"{domain}-{year}_{modality}").items():
            # Historical photos (`195X`) belong to every year of their domain: key them without it.
            key = f"{domain}-*_{suffix}" if year == "195X" else f"{domain}-{year}_{suffix}"
            by_modality.setdefault(modality, {})[key] = path
    images, masks = by_modality.get(IMAGE_MODALITY, {}), by_modality.get(LABEL_MODALITY, {})
    if not images and not masks:
        raise DatasetError(f"{root}: no FLAIR-HUB patches found (expected D<dept>-<year>_{IMAGE_MODALITY}/<roi>/*.tif "
                           f"and D<dept>-<year>_{LABEL_MODALITY}/<roi>/*.tif)")

    # 2. Splits and dates from IGN's GeoPackages.
    split_path = Path(split_file) if split_file else find_mtd_file(root, SPLIT_NAME)
    if split_file and not split_path.is_file():
        raise DatasetError(f"{split_path}: split file not found")
    splits = read_splits(split_path, split_column) if split_path else {}
    dates_path = Path(dates_file) if dates_file else None
    if dates_path is not None and not dates_path.is_file():
        raise DatasetError(f"{dates_path}: dates file not found")
    dates = read_dates(dates_path, date_column) if dates_path else {}

    # 3. Tiles: patches with both an image and a label; the rest are orphans.
    tiles, not_in_split = [], []
    for pid in sorted(set(images) & set(masks)):
        domain, roi = pid.split("_", 2)[:2]
        others = {m: str(files[k]) for m, files in by_modality.items() if m not in (IMAGE_MODALITY, LABEL_MODALITY)
                  for k in (pid, f"{domain.split('-')[0]}-*_{pid.split('_', 1)[1]}") if k in files}
        split = splits.get(pid) if splits else None
        if splits and split is None:
            not_in_split.append(pid)
            continue
        meta = {"date": dates[pid]} if pid in dates else {}
        tiles.append(FlairTile(id=pid, img=images[pid], msk=masks[pid], domain=domain, zone=roi, meta=meta,
                               layout="flairhub", split=split, modalities=others))
    if not_in_split:
        log.warning("flairhub: %d patches are not in %s (left out), e.g. %s", len(not_in_split), split_path,
                    not_in_split[:3])
    return Discovery(
        root=root, tiles=tiles,
        orphan_images=[images[i] for i in sorted(set(images) - set(masks))],
        orphan_masks=[masks[i] for i in sorted(set(masks) - set(images))],
        layout="flairhub", split_file=split_path, dates_file=dates_path, not_in_split=not_in_split,
    )


def read_hub_pair(img_path: Path, msk_path: Path) -> tuple[RasterData, np.ndarray, np.ndarray]:
    """An AERIAL_RGBI patch, its FLAIR-1 codes and valid mask (COSIA "undefined" is not valid)."""
    img = read_raster(img_path)
    if img.count < 3 or img.array.dtype != np.uint8:
        raise RasterError(f"{img_path}: expected RGB(+NIR) uint8 bands, found {img.count} {img.array.dtype} band(s)")
    msk = read_raster(msk_path, bands=[1])
    check_same_grid(img, msk)
    codes, valid = remap_flairhub(msk.array[0], msk_path)
    return img, codes, valid


class FlairHub(TileLayout):
    """FLAIR-HUB: a folder per domain-year and modality, 0-based COSIA masks, IGN's split GeoPackage."""

    name = "flairhub"

    @classmethod
    def matches(cls, root: Path) -> bool:
        """At least one `D<dept>-<year>_AERIAL_LABEL-COSIA` folder at the top of `root`."""
        return is_flairhub_root(root)

    @classmethod
    def discover(cls, root: Path, **options: Any) -> Discovery:
        """`discover_hub` with the split and dates options."""
        return discover_hub(root, **options)

    @staticmethod
    def read_pair(tile: FlairTile) -> tuple[Any, Any, Any]:
        """The AERIAL_RGBI patch, its remapped codes and valid mask."""
        return read_hub_pair(tile.img, tile.msk)
