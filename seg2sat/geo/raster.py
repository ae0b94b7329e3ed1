"""All raster I/O: FLAIR tiles, other land-cover rasters, GeoTIFF/COG output.

Every read returns a `RasterData` that carries CRS, transform (of the window read) and
nodata; every write takes them back, atomically. Errors name the file and the problem.
No torch here.
"""

from __future__ import annotations

import contextlib
import math
import struct
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.windows import Window

from seg2sat.atomic import atomic_path
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

    def band(self, index: int = 1) -> np.ndarray:
        """One band (1-based, like rasterio) as (H, W)."""
        return self.array[index - 1]

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


def _open(path: str | Path) -> Any:
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
    except Exception as exc:  # as in `_open`: whatever a damaged block raises
        raise RasterError(f"{path}: failed to read pixels (corrupt or truncated?): {exc}") from exc


def raster_info(path: str | Path) -> dict[str, Any]:
    """Size, bands, dtypes, CRS, transform and nodata of a raster, without reading pixels."""
    with _open(path) as src:
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
    with _open(path) as src:
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


# ---------------------------------------------------------------------------------------------
# Checking a written GeoTIFF (libtiff may run out of space on close without GDAL raising)
# ---------------------------------------------------------------------------------------------

_TIFF_TYPES = {3: "H", 4: "I", 16: "Q"}  # SHORT, LONG, LONG8: the types of offsets and byte counts
_TIFF_BLOCK_TAGS = ((273, 279), (324, 325))  # (StripOffsets, StripByteCounts), (TileOffsets, TileByteCounts)


def _tiff_values(fh: Any, end: str, big: bool, entry: bytes) -> list[int]:
    """The integers of one IFD entry (inline, or at the offset it points to)."""
    kind, count = struct.unpack(end + ("HQ" if big else "HI"), entry[2:12 if big else 8])[0:2]
    if kind not in _TIFF_TYPES or count > 1 << 24:
        raise ValueError(f"unexpected type {kind} or count {count} for block offsets")
    fmt = end + _TIFF_TYPES[kind] * count
    size, inline = struct.calcsize(fmt), entry[12:20] if big else entry[8:12]
    if size <= len(inline):
        return list(struct.unpack(fmt, inline[:size]))
    fh.seek(struct.unpack(end + ("Q" if big else "I"), inline)[0])
    data = fh.read(size)
    if len(data) != size:
        raise ValueError("block offsets past the end of the file")
    return list(struct.unpack(fmt, data))


def _tiff_ifd_blocks(fh: Any, end: str, big: bool, offset: int) -> tuple[list[tuple[int, int]], int]:
    """The (offset, byte count) of every block of the IFD at `offset`, and the next IFD's offset."""
    fh.seek(offset)
    head = fh.read(8 if big else 2)
    n = struct.unpack(end + ("Q" if big else "H"), head)[0]
    width = 20 if big else 12
    raw = fh.read(n * width + (8 if big else 4))
    if len(head) < (8 if big else 2) or len(raw) != n * width + (8 if big else 4) or n > 4096:
        raise ValueError(f"directory at byte {offset} is cut short")
    entries = {struct.unpack(end + "H", raw[i:i + 2])[0]: raw[i:i + width] for i in range(0, n * width, width)}
    blocks: list[tuple[int, int]] = []
    for offsets_tag, counts_tag in _TIFF_BLOCK_TAGS:
        if offsets_tag in entries and counts_tag in entries:
            blocks += zip(_tiff_values(fh, end, big, entries[offsets_tag]),
                          _tiff_values(fh, end, big, entries[counts_tag]), strict=True)
    return blocks, struct.unpack(end + ("Q" if big else "I"), raw[-(8 if big else 4):])[0]


def check_tiff_blocks(path: str | Path) -> None:
    """Refuse a TIFF whose directories or blocks (every level, masks included) lie past its end.

    Raises:
        RasterError: not a TIFF, a directory cut short, or a block beyond the end of the file.
    """
    path = Path(path)
    size = path.stat().st_size
    try:
        with open(path, "rb") as fh:
            head = fh.read(16)
            end = {b"II": "<", b"MM": ">"}.get(head[:2])
            if end is None or len(head) < 8:
                raise ValueError("not a TIFF header")
            big = struct.unpack(end + "H", head[2:4])[0] == 43
            offset = struct.unpack(end + "Q", head[8:16])[0] if big else struct.unpack(end + "I", head[4:8])[0]
            seen: set[int] = set()
            while offset:
                if offset in seen or offset >= size or len(seen) > 4096:
                    raise ValueError(f"directory at byte {offset} of a {size}-byte file")
                seen.add(offset)
                blocks, offset = _tiff_ifd_blocks(fh, end, big, offset)
                cut = [o + n for o, n in blocks if n and o + n > size]
                if cut:
                    raise ValueError(f"a block ends at byte {max(cut)} of a {size}-byte file")
    except (ValueError, struct.error) as exc:
        raise RasterError(f"{path}: truncated or corrupt TIFF: {exc}") from exc


def check_geotiff(path: str | Path, width: int, height: int, count: int) -> None:
    """A written GeoTIFF is whole: every block within the file, and it opens with the size and bands written.

    Raises:
        RasterError: naming the file and what is wrong.
    """
    check_tiff_blocks(path)
    with _open(path) as src:
        if (src.width, src.height, src.count) != (width, height, count):
            raise RasterError(f"{path}: reads as {src.width}x{src.height}x{src.count}, "
                              f"{width}x{height}x{count} was written")


# ---------------------------------------------------------------------------------------------
# Writing (one checked path: whole arrays and windows alike)
# ---------------------------------------------------------------------------------------------


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
