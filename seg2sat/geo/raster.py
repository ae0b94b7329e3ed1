"""Raster reading: FLAIR tiles, other land-cover rasters, plain images; the grid checks they share.

Every read returns a `RasterData` that carries CRS, transform (of the window read) and
nodata; every write (`seg2sat.geo.geotiff`) takes them back, atomically. Errors name the file
and the problem. No torch here.
"""

from __future__ import annotations

import math
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.windows import Window

from seg2sat.errors import GeoreferenceError, RasterError

FLAIR_IMG_BANDS = 5  # R, G, B, NIR, elevation
FLAIR_RESOLUTION = 0.2  # metres
FLAIR_CRS = CRS.from_epsg(2154)  # Lambert-93
MAX_BANDS = 64  # more is no input of ours (a FLAIR-HUB patch has 5 aerial bands; land cover 1, 3 or 4)


@dataclass
class RasterData:
    """Pixels of a raster (or a window of it) with their georeferencing."""

    array: np.ndarray  # (bands, H, W)
    crs: CRS | None
    transform: Affine
    nodata: float | int | None = None
    path: Path | None = None

    @property
    def height(self) -> int:
        """Rows."""
        return int(self.array.shape[1])

    @property
    def width(self) -> int:
        """Columns."""
        return int(self.array.shape[2])

    @property
    def count(self) -> int:
        """Bands."""
        return int(self.array.shape[0])

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(xmin, ymin, xmax, ymax) in CRS units."""
        return bounds_of(self.transform, self.width, self.height)

    def rgb(self) -> np.ndarray:
        """The first three bands as an (H, W, 3) image."""
        if self.count < 3:
            raise RasterError(f"{self.path}: {self.count} band(s), an RGB view needs 3")
        return np.ascontiguousarray(np.moveaxis(self.array[:3], 0, -1))

    def valid_mask(self) -> np.ndarray:
        """(H, W) True where no band holds nodata."""
        if self.nodata is None:
            return np.ones(self.array.shape[1:], bool)
        if isinstance(self.nodata, float) and math.isnan(self.nodata):
            return ~np.isnan(self.array).any(0)
        return ~(self.array == self.nodata).any(0)


def bounds_of(transform: Affine, width: int, height: int) -> tuple[float, float, float, float]:
    """Bounds of a north-up grid."""
    x0, y0 = transform * (0, 0)
    x1, y1 = transform * (width, height)
    return (min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))


def check_transform(transform: Affine | None, path: str | Path | None = None) -> Affine:
    """Refuse missing, identity (no georeferencing), rotated or sheared transforms."""
    if transform is None or transform == Affine.identity():
        raise GeoreferenceError(f"{path}: no geotransform (pixel grid not georeferenced)")
    if not all(math.isfinite(v) for v in tuple(transform)[:6]):
        raise GeoreferenceError(f"{path}: geotransform with NaN or infinite values {tuple(transform)[:6]} (damaged?)")
    if transform.b != 0 or transform.d != 0:
        raise GeoreferenceError(
            f"{path}: rotated or sheared geotransform (b={transform.b}, d={transform.d}) is not "
            "supported; warp it north-up first (e.g. gdalwarp)"
        )
    if transform.a <= 0 or transform.e >= 0:
        raise GeoreferenceError(
            f"{path}: geotransform is not north-up (pixel size {transform.a}, {transform.e})"
        )
    return transform


def memory_budget() -> int:
    """Bytes this process can still take: the free memory, under its address-space limit if it has one."""
    import resource

    import psutil

    budget = psutil.virtual_memory().available
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft != resource.RLIM_INFINITY:
        budget = min(budget, soft - psutil.Process().memory_info().vms)
    return max(0, budget)


def check_memory(path: str | Path, width: int, height: int, bytes_per_pixel: int) -> None:
    """Refuse, from the header alone, a read that cannot fit in memory (a corrupt header, a bomb, a huge file).

    Raises:
        RasterError: naming the file, the size and the memory it would take.
    """
    need = int(width) * int(height) * bytes_per_pixel
    budget = memory_budget()
    if need > budget:
        raise RasterError(f"{path}: {width}x{height} px would take about {need / 1e9:.1f} GB of memory to read, "
                          f"{budget / 1e9:.1f} GB are free; cut it into tiles or run `seg2sat mosaic` on it")


# What a broken PNG/JPEG raises inside PIL, depending on where it breaks.
IMAGE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, zlib.error, struct.error)


def read_plain_image(path: str | Path, alpha: bool = False) -> np.ndarray:
    """A PNG/JPEG's pixels as (H, W, 3) RGB, or RGBA when `alpha` and the image has transparency or a palette.

    The size is checked from the header before decoding; a broken file is a `RasterError`.
    """
    from PIL import Image

    path = Path(path)
    try:
        with Image.open(path) as im:
            check_memory(path, im.width, im.height, 8)
            return np.asarray(im.convert("RGBA" if alpha and im.mode in ("RGBA", "LA", "P") else "RGB"))
    except (*IMAGE_ERRORS, Image.DecompressionBombError) as exc:
        raise RasterError(f"{path}: not a readable image (corrupt or truncated?): {type(exc).__name__}: {exc}") from exc


def open_raster(path: str | Path) -> Any:
    """`rasterio.open`, with a one-line error naming the file when it is missing, empty or damaged."""
    path = Path(path)
    if not path.exists():
        raise RasterError(f"{path}: file not found")
    if path.stat().st_size == 0:
        raise RasterError(f"{path}: empty file (0 bytes)")
    try:
        return rasterio.open(path)
    except Exception as exc:  # GDAL reports a damaged file in many ways (I/O, decoding, values out of range)
        raise RasterError(f"{path}: not a readable raster (corrupt or truncated?): {exc}") from exc


def _read(src: Any, path: Path, window: Window | None, bands: list[int] | None) -> np.ndarray:
    try:
        return src.read(bands, window=window, boundless=False)
    except Exception as exc:  # as in `open_raster`: whatever a damaged block raises
        raise RasterError(f"{path}: failed to read pixels (corrupt or truncated?): {exc}") from exc


def raster_info(path: str | Path) -> dict[str, Any]:
    """Size, bands, dtypes, CRS, transform and nodata of a raster, without reading pixels."""
    with open_raster(path) as src:
        return {
            "path": Path(path),
            "width": src.width,
            "height": src.height,
            "count": src.count,
            "dtypes": tuple(src.dtypes),
            "crs": src.crs,
            "transform": src.transform,
            "nodata": src.nodata,
            "res": src.res,
        }


def read_raster(
    path: str | Path,
    window: Window | None = None,
    bands: list[int] | None = None,
    require_crs: bool = True,
    crs: CRS | str | None = None,
) -> RasterData:
    """Read any raster (or a window) with its georeferencing.

    Args:
        path: the file.
        window: a rasterio Window; the returned transform is the window's.
        bands: 1-based band indexes (default all).
        require_crs: refuse a raster without CRS unless `crs` is given.
        crs: a CRS to assume for a raster that has none.
    """
    path = Path(path)
    with open_raster(path) as src:
        if src.width == 0 or src.height == 0 or src.count == 0:
            raise RasterError(f"{path}: empty raster ({src.width}x{src.height}, {src.count} bands)")
        if src.count > MAX_BANDS:  # a damaged header: reading thousands of bands takes minutes
            raise RasterError(f"{path}: {src.count} bands; a land-cover raster or an aerial image has at most {MAX_BANDS}")
        src_crs = src.crs or (CRS.from_user_input(crs) if crs is not None else None)
        if src_crs is None and require_crs:
            raise GeoreferenceError(f"{path}: no CRS; pass one explicitly (e.g. crs=EPSG:2154)")
        check_transform(src.transform, path)
        if window is not None:
            full = Window(0, 0, src.width, src.height)
            if window.col_off < 0 or window.row_off < 0 or \
               window.col_off + window.width > full.width or window.row_off + window.height > full.height:
                raise RasterError(f"{path}: window {window} outside the {src.width}x{src.height} raster")
        height, width = (src.height, src.width) if window is None else (int(window.height), int(window.width))
        itemsize = max(np.dtype(d).itemsize for d in src.dtypes)
        check_memory(path, width, height, len(bands or src.indexes) * itemsize + 2)  # + codes and valid mask
        array = _read(src, path, window, bands)
        transform = src.window_transform(window) if window is not None else src.transform
        return RasterData(array=array, crs=src_crs, transform=transform, nodata=src.nodata, path=path)


PLAIN_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")  # images that may carry no georeferencing
GEOTIFF_SUFFIXES = (".tif", ".tiff")


def local_transform(height: int, resolution: float = FLAIR_RESOLUTION) -> Affine:
    """The grid given to a plain image (PNG/JPEG, no georeferencing).

    `resolution` per pixel, bottom-left corner at (0, 0): a plain map and a plain photo of the
    same size share it, so one can edit the other.
    """
    return Affine(resolution, 0, 0, 0, -resolution, height * resolution)


def is_plain_image(path: str | Path) -> bool:
    """A PNG/JPEG with neither CRS nor geotransform (a photo, a hand-drawn map)."""
    if Path(path).suffix.lower() not in PLAIN_IMAGE_SUFFIXES:
        return False
    info = raster_info(path)
    return info["crs"] is None and info["transform"] == Affine.identity()


def read_image(path: str | Path, crs: CRS | str | None = None, resolution: float = FLAIR_RESOLUTION) -> RasterData:
    """A georeferenced raster as `read_raster` reads it, or a plain PNG/JPEG on `local_transform`.

    A plain image needs `crs` (the CRS its outputs are written in), so a run never writes an
    output that looks georeferenced by accident.
    """
    path = Path(path)
    if not is_plain_image(path):
        return read_raster(path, crs=crs)
    if crs is None:
        raise GeoreferenceError(f"{path}: a plain image has no georeferencing; pass crs= (e.g. crs=EPSG:2154) "
                                "to place it on a local grid, or use a GeoTIFF")
    rgb = read_plain_image(path)
    return RasterData(array=np.moveaxis(rgb, -1, 0).copy(), crs=CRS.from_user_input(crs),
                      transform=local_transform(rgb.shape[0], resolution), nodata=None, path=path)


def check_same_grid(a: RasterData, b: RasterData, tol: float = 1e-6) -> None:
    """Refuse two rasters that differ in size, CRS or transform (to `tol` CRS units).

    Raises:
        GeoreferenceError: naming both files, the size or the georeferencing of each.
    """
    if a.array.shape[1:] != b.array.shape[1:]:
        raise GeoreferenceError(
            f"{a.path} and {b.path}: size mismatch, {a.width}x{a.height} vs {b.width}x{b.height}"
        )
    if a.crs != b.crs or not a.transform.almost_equals(b.transform, precision=tol):
        raise GeoreferenceError(
            f"{a.path} and {b.path}: georeferencing mismatch "
            f"({a.crs}, {tuple(a.transform)[:6]}) vs ({b.crs}, {tuple(b.transform)[:6]})"
        )
