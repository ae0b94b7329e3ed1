"""GeoTIFF/COG output: one checked write path (whole arrays and windows alike), atomic.

Every write takes the CRS, transform and nodata a read returned (`seg2sat.geo.raster`), and a
written file is checked whole (`check_geotiff`) before it is renamed into place.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.windows import Window

from seg2sat.atomic import atomic_path
from seg2sat.errors import GeoreferenceError, RasterError
from seg2sat.geo.raster import open_raster
from seg2sat.geo.tiff import check_tiff_blocks


def geotiff_profile(
    width: int,
    height: int,
    count: int,
    dtype: str | np.dtype,
    crs: CRS | str | None,
    transform: Affine,
    nodata: float | int | None = None,
    blocksize: int = 512,
    compress: str = "deflate",
) -> dict[str, Any]:
    """A tiled, compressed GeoTIFF profile (COG-friendly once overviews are added)."""
    dtype = np.dtype(dtype).name
    profile: dict[str, Any] = {
        "driver": "GTiff", "width": width, "height": height, "count": count, "dtype": dtype,
        "crs": crs, "transform": transform, "nodata": nodata, "compress": compress,
        "BIGTIFF": "IF_SAFER",
    }
    # GeoTIFF tiles must be multiples of 16; small rasters are written striped.
    block = min(blocksize, 1 << (min(width, height).bit_length() - 1))
    if block >= 16 and block % 16 == 0:
        profile.update(tiled=True, blockxsize=block, blockysize=block)
    if compress in ("deflate", "zstd", "lzw"):
        profile["predictor"] = 2 if np.dtype(dtype).kind in "ui" else 3
    if count >= 3 and dtype == "uint8":
        profile["photometric"] = "RGB"
    return profile


def _add_overviews(dst: Any, resampling: str = "average", min_size: int = 256) -> None:
    # classes are never averaged (a mean of codes 5 and 7 is code 6): masks use "nearest"
    factors, f = [], 2
    while max(dst.width, dst.height) // f >= min_size:
        factors.append(f)
        f *= 2
    if factors:
        dst.build_overviews(factors, rasterio.enums.Resampling[resampling])
        dst.update_tags(ns="rio_overview", resampling=resampling)


def geotiff_bytes(width: int, height: int, count: int, dtype: str | np.dtype, cog: bool = False,
                  mask: bool = True) -> int:
    """About how many bytes a GeoTIFF takes before compression: bands, mask, overviews (an upper bound)."""
    pixels = width * height
    size = pixels * (count * np.dtype(dtype).itemsize + (1 if mask else 0))
    return size * 4 // 3 if cog else size


def check_geotiff(path: str | Path, width: int, height: int, count: int) -> None:
    """A written GeoTIFF is whole: every block within the file, and it opens with the size and bands written.

    Raises:
        RasterError: naming the file and what is wrong.
    """
    check_tiff_blocks(path)
    with open_raster(path) as src:
        if (src.width, src.height, src.count) != (width, height, count):
            raise RasterError(f"{path}: reads as {src.width}x{src.height}x{src.count}, "
                              f"{width}x{height}x{count} was written")


def _check_colormap(path: Path, colormap: Mapping[int, tuple[int, ...]] | None, count: int, dtype: Any) -> None:
    """A colour table belongs to one band of uint8/uint16 classes (GDAL refuses it elsewhere)."""
    if colormap and (count != 1 or np.dtype(dtype).name not in ("uint8", "uint16")):
        raise RasterError(f"{path}: a colour table needs one uint8/uint16 band, not {count} of {np.dtype(dtype).name}")


class GeoTiffWriter:
    """Windowed GeoTIFF writing for outputs larger than memory; complete only on close."""

    def __init__(self, dst: Any, tmp: Path, path: Path, cog: bool, resampling: str = "average") -> None:
        self._dst, self.tmp, self.path, self._cog, self._resampling = dst, tmp, path, cog, resampling

    def write(self, array: np.ndarray, window: Window) -> None:
        """Write (bands, h, w) (or (h, w)) pixels at `window`."""
        if array.ndim == 2:
            array = array[None]
        self._dst.write(array, window=window)

    def write_mask(self, mask: np.ndarray, window: Window) -> None:
        """Write the dataset mask (255 valid, 0 nodata) at `window`."""
        self._dst.write_mask(mask, window=window)

    def tag(self, tags: dict[str, str] | None) -> None:
        """Set dataset tags."""
        if tags:
            self._dst.update_tags(**tags)

    def finish(self) -> None:
        """Add overviews if asked."""
        if self._cog:
            _add_overviews(self._dst, self._resampling)


@contextlib.contextmanager
def _geotiff_writer(path: Path, profile: dict[str, Any], cog: bool,
                    colormap: Mapping[int, tuple[int, int, int, int]] | None = None) -> Iterator[GeoTiffWriter]:
    """The one write path: temp file, checked whole before the rename, a failed write one `WriteError`.

    `colormap` (value -> RGBA, e.g. `seg2sat.geo.styles.colormap()`) gives a one-band uint8 or
    uint16 class raster its colour table (and nearest-neighbour overviews), so GIS software
    shows the classes in their colours.
    """
    width, height, count = profile["width"], profile["height"], profile["count"]
    _check_colormap(path, colormap, count, profile["dtype"])
    needed = geotiff_bytes(width, height, count, profile["dtype"], cog)
    with atomic_path(path, needed=needed, check=lambda tmp: check_geotiff(tmp, width, height, count)) as tmp:
        with rasterio.open(tmp, "w", **profile) as dst:
            writer = GeoTiffWriter(dst, tmp, path, cog, "nearest" if colormap else "average")
            if colormap:
                dst.write_colormap(1, dict(colormap))
            yield writer
            writer.finish()


def write_geotiff(
    path: str | Path,
    array: np.ndarray,
    crs: CRS | str | None,
    transform: Affine,
    nodata: float | int | None = None,
    cog: bool = False,
    compress: str = "deflate",
    tags: dict[str, str] | None = None,
    colormap: Mapping[int, tuple[int, int, int, int]] | None = None,
) -> Path:
    """Write (bands, H, W) or (H, W) as a GeoTIFF, atomically and checked; `cog` adds overviews.

    `colormap`: a class raster's colour table (see `_geotiff_writer`).
    """
    path = Path(path)
    if array.ndim == 2:
        array = array[None]
    if array.ndim != 3 or array.shape[1] == 0 or array.shape[2] == 0:
        raise RasterError(f"{path}: cannot write an array of shape {array.shape}")
    if transform is None:
        raise GeoreferenceError(f"{path}: refusing to write a GeoTIFF without a transform")
    profile = geotiff_profile(array.shape[2], array.shape[1], array.shape[0], array.dtype,
                              crs, transform, nodata, compress=compress)
    with _geotiff_writer(path, profile, cog, colormap) as writer:
        writer.write(array, Window(0, 0, array.shape[2], array.shape[1]))
        writer.tag(tags)
    return path


@contextlib.contextmanager
def open_geotiff_writer(
    path: str | Path,
    width: int,
    height: int,
    count: int,
    dtype: str | np.dtype,
    crs: CRS | str | None,
    transform: Affine,
    nodata: float | int | None = None,
    cog: bool = False,
    compress: str = "deflate",
    tags: dict[str, str] | None = None,
    colormap: Mapping[int, tuple[int, int, int, int]] | None = None,
) -> Iterator[GeoTiffWriter]:
    """Yield a windowed writer to a temp file; renamed to `path` only if the block succeeds and the file is whole."""
    profile = geotiff_profile(width, height, count, dtype, crs, transform, nodata, compress=compress)
    with _geotiff_writer(Path(path), profile, cog, colormap) as writer:
        writer.tag(tags)
        yield writer
