"""FLAIR tiles on disk, whatever the layout: detect it, find every tile, read a pair.

One small class per layout (`flair.Flair1`, `flair.Flair2`, `flairhub.FlairHub`) says how to
recognise a root, pair its files and read a tile in its coding; this module only chooses among
them. Detection looks at a root's top-level names alone (no deep walk of 240k files).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from seg2sat.data.flair import Discovery, Flair1, Flair2, FlairTile, TileLayout
from seg2sat.data.flairhub import FlairHub
from seg2sat.errors import DatasetError

# Detection order: the most specific first; FLAIR-1 reads any tree of IMG/MSK files.
LAYOUTS: tuple[type[TileLayout], ...] = (FlairHub, Flair2, Flair1)
BY_NAME: dict[str, type[TileLayout]] = {layout.name: layout for layout in LAYOUTS}


def detect_layout(root: str | Path) -> str:
    """"flairhub", "flair2" or "flair1", from the root's top-level names alone (no deep walk)."""
    root = Path(root)
    return next(layout.name for layout in LAYOUTS if layout.matches(root))


def discover(root: str | Path, dataset: str = "auto", **hub_options: Any) -> Discovery:
    """Every tile under `root`, in the layout `dataset` names (`auto`: detected).

    FLAIR-HUB options (`split_file`, `split_column`, `dates_file`, `date_column`) go to its layout.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: FLAIR root is not a folder (data_root=)")
    if dataset != "auto" and dataset not in BY_NAME:
        raise DatasetError(f"{root}: unknown dataset={dataset!r}; expected auto, {', '.join(BY_NAME)}")
    layout = BY_NAME[detect_layout(root) if dataset == "auto" else dataset]
    return layout.discover(root, **(hub_options if layout is FlairHub else {}))


def read_pair(tile: FlairTile) -> tuple[Any, Any, Any]:
    """(image raster, FLAIR-1 codes, valid mask or None) of a tile, in its layout's coding."""
    return BY_NAME[tile.layout].read_pair(tile)
