import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.windows import Window

from seg2sat.errors import GeoreferenceError, RasterError
from seg2sat.geo import geotiff, raster

T = Affine(0.2, 0, 407473.0, 0, -0.2, 6260587.6)
CRS_L93 = CRS.from_epsg(2154)


def test_window_read_has_the_window_transform(img_msk):
    full = raster.read_raster(img_msk[0])
    win = raster.read_raster(img_msk[0], window=Window(8, 4, 16, 10))
    assert win.array.shape == (5, 10, 16)
    np.testing.assert_array_equal(win.array, full.array[:, 4:14, 8:24])
    assert win.transform == T @ Affine.translation(8, 4)
    with pytest.raises(RasterError, match="outside the 48x32 raster"):
        raster.read_raster(img_msk[0], window=Window(40, 0, 16, 10))


def test_missing_crs_and_transform(tmp_path, geotiff):
    p = geotiff(tmp_path / "nocrs.tif", np.ones((1, 8, 8), np.uint8), crs=None)
    with pytest.raises(GeoreferenceError, match=r"nocrs.tif: no CRS"):
        raster.read_raster(p)
    assert raster.read_raster(p, crs="EPSG:2154").crs == CRS_L93
    p = geotiff(tmp_path / "notransform.tif", np.ones((1, 8, 8), np.uint8), transform=Affine.identity())
    with pytest.raises(GeoreferenceError, match=r"notransform.tif: no geotransform"):
        raster.read_raster(p)


def test_rotated_transform_refused(tmp_path, geotiff):
    p = geotiff(tmp_path / "rot.tif", np.ones((1, 8, 8), np.uint8),
               transform=T @ Affine.rotation(10))
    with pytest.raises(GeoreferenceError, match=r"rot.tif: rotated or sheared geotransform"):
        raster.read_raster(p)


def test_corrupt_truncated_empty_missing(tmp_path, img_msk):
    (tmp_path / "junk.tif").write_bytes(b"this is not a tiff at all")
    with pytest.raises(RasterError, match=r"junk.tif: not a readable raster"):
        raster.read_raster(tmp_path / "junk.tif")
    (tmp_path / "empty.tif").write_bytes(b"")
    with pytest.raises(RasterError, match=r"empty.tif: empty file \(0 bytes\)"):
        raster.read_raster(tmp_path / "empty.tif")
    with pytest.raises(RasterError, match=r"nope.tif: file not found"):
        raster.read_raster(tmp_path / "nope.tif")
    data = img_msk[0].read_bytes()
    (tmp_path / "trunc.tif").write_bytes(data[: len(data) // 2])
    with pytest.raises(RasterError, match=r"trunc.tif: .*(corrupt or truncated)"):
        raster.read_raster(tmp_path / "trunc.tif")


def test_write_geotiff_round_trip_keeps_crs_transform_nodata(tmp_path):
    arr = np.arange(3 * 40 * 50, dtype=np.uint8).reshape(3, 40, 50)
    out = geotiff.write_geotiff(tmp_path / "o.tif", arr, CRS_L93, T, nodata=0, cog=True)
    back = raster.read_raster(out)
    assert back.crs == CRS_L93 and back.transform == T and back.nodata == 0
    np.testing.assert_array_equal(back.array, arr)
    assert not list(tmp_path.glob(".tmp-*"))


def test_cog_has_tiles_and_overviews(tmp_path):
    arr = np.zeros((3, 600, 600), np.uint8)
    out = geotiff.write_geotiff(tmp_path / "big.tif", arr, CRS_L93, T, cog=True)
    with rasterio.open(out) as src:
        assert src.profile["tiled"] and src.block_shapes[0] == (512, 512)
        assert src.overviews(1) == [2]
        assert src.compression.name.lower() == "deflate"


def test_windowed_writer_is_atomic(tmp_path):
    path = tmp_path / "w.tif"
    with pytest.raises(RuntimeError):
        with geotiff.open_geotiff_writer(path, 64, 64, 3, "uint8", CRS_L93, T) as w:
            w.write(np.ones((3, 32, 32), np.uint8), Window(0, 0, 32, 32))
            raise RuntimeError("killed")
    assert not path.exists() and not list(tmp_path.glob(".tmp-*"))
    with geotiff.open_geotiff_writer(path, 64, 64, 3, "uint8", CRS_L93, T, nodata=0) as w:
        for r in (0, 32):
            for c in (0, 32):
                w.write(np.full((3, 32, 32), r + c + 1, np.uint8), Window(c, r, 32, 32))
    back = raster.read_raster(path)
    assert back.transform == T and back.array[0, 40, 40] == 65 and back.array[0, 0, 40] == 33


def test_real_float_landcover_raster_keeps_georeferencing(geo_samples, tmp_path):
    src = raster.read_raster(geo_samples / "strata.tif")
    assert src.array.shape == (1, 443, 489) and src.array.dtype == np.float32
    assert src.crs == CRS.from_epsg(3358)
    assert src.transform == Affine(28.5, 0, 630534.0, 0, -28.5, 228114.0)
    assert src.nodata == -99999
    assert (~src.valid_mask()).sum() == 1
    assert set(np.unique(src.array[0][src.valid_mask()])) == {1, 2, 3, 4, 5, 6, 7}
    out = geotiff.write_geotiff(tmp_path / "s.tif", src.array, src.crs, src.transform, src.nodata)
    back = raster.read_raster(out)
    assert back.crs == src.crs and back.transform == src.transform and back.nodata == src.nodata
    np.testing.assert_array_equal(back.array, src.array)


def test_a_written_geotiff_is_checked_whole(tmp_path):
    from seg2sat.geo.geotiff import check_geotiff, write_geotiff
    from seg2sat.geo.tiff import check_tiff_blocks

    rng = np.random.default_rng(0)
    path = write_geotiff(tmp_path / "a.tif", rng.integers(0, 255, (3, 300, 280), dtype=np.uint8), "EPSG:2154",
                         Affine(0.2, 0, 0, 0, -0.2, 100), cog=True)
    check_geotiff(path, 280, 300, 3)
    with pytest.raises(RasterError, match=r"reads as 280x300x3, 281x300x3 was written"):
        check_geotiff(path, 281, 300, 3)
    data = path.read_bytes()
    for cut in (len(data) - 100, len(data) // 2, 12):  # cut short where a flush on a full disk stops
        path.write_bytes(data[:cut])
        with pytest.raises(RasterError, match="truncated or corrupt TIFF"):
            check_tiff_blocks(path)


def test_broken_plain_images_and_impossible_sizes_are_one_line(tmp_path):
    from PIL import Image

    from seg2sat.geo.raster import check_memory, read_plain_image

    Image.fromarray(np.full((40, 50, 3), 7, np.uint8)).save(tmp_path / "a.png")
    assert read_plain_image(tmp_path / "a.png").shape == (40, 50, 3)
    data = (tmp_path / "a.png").read_bytes()
    (tmp_path / "b.png").write_bytes(data[:60])
    with pytest.raises(RasterError, match=r"b\.png: not a readable image \(corrupt or truncated\?\)"):
        read_plain_image(tmp_path / "b.png")
    with pytest.raises(RasterError, match=r"x\.tif: 4000000x4000000 px would take about 160000\.0 GB of memory"):
        check_memory(tmp_path / "x.tif", 4_000_000, 4_000_000, 10)
