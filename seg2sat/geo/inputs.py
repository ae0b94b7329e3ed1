"""What counts as a land-cover input: the file kinds by suffix, and finding them (a file, a folder, a glob)."""

from __future__ import annotations

import glob
from pathlib import Path

from seg2sat.errors import Seg2SatError

# Land-cover layers (`read_landcover` reads these by suffix): vectors are rasterized, rasters read.
VECTOR_SUFFIXES = frozenset({".gpkg", ".geojson", ".json", ".shp", ".fgb"})
RASTER_SUFFIXES = frozenset({".tif", ".tiff", ".png", ".jpg", ".jpeg", ".vrt"})
LANDCOVER_SUFFIXES = RASTER_SUFFIXES | VECTOR_SUFFIXES


def find_inputs(spec: str) -> list[Path]:
    """A file, a folder (its land-cover files, sorted) or a glob; an error when nothing matches."""
    path = Path(spec).expanduser()
    if path.is_dir():
        found = sorted(p for p in path.iterdir() if p.suffix.lower() in LANDCOVER_SUFFIXES
                       and not p.name.startswith("."))
    elif any(ch in spec for ch in "*?["):
        found = sorted(Path(p) for p in glob.glob(spec, recursive=True) if Path(p).suffix.lower() in LANDCOVER_SUFFIXES)
    elif path.exists():
        found = [path]
    else:
        raise Seg2SatError(f"{spec}: input not found (input=)")
    if not found:
        raise Seg2SatError(f"{spec}: no land-cover files ({', '.join(sorted(LANDCOVER_SUFFIXES))}) (input=)")
    return found
