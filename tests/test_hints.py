import io

import numpy as np
import pytest
from PIL import Image

from seg2sat import hints
from seg2sat.errors import LegendError
from seg2sat.labels import PALETTE

IDS = ["066278", "067998", "073879"]


def _png(path):
    return np.asarray(Image.open(path))


@pytest.mark.parametrize("tile_id", IDS)
def test_real_masks_round_trip_bit_exactly(flair_samples, tile_id):
    hint = _png(flair_samples / "tiles" / f"MSK_{tile_id}.png")[..., :3]
    codes = hints.hint_to_codes(hint)
    assert codes.dtype == np.uint8 and codes.shape == (512, 512)
    assert codes.min() >= 1 and codes.max() <= 19
    np.testing.assert_array_equal(hints.codes_to_hint(codes), hint)


def test_codes_to_hint_is_the_palette_lookup():
    codes = np.array([[1, 19], [5, 13]], dtype=np.uint8)
    out = hints.codes_to_hint(codes)
    assert out.shape == (2, 2, 3) and out.dtype == np.uint8
    assert out[1, 1].tolist() == [0x3D, 0xE6, 0xEB]


@pytest.mark.parametrize("bad", [0, 20, 255])
def test_codes_outside_legend_are_refused(bad):
    codes = np.full((4, 4), 3, np.uint8)
    codes[0, :2] = bad
    with pytest.raises(LegendError, match=rf"mask.tif: codes outside the FLAIR legend 1..19 \({bad}: 2 px\)"):
        hints.codes_to_hint(codes, source="mask.tif")


def test_hint_to_codes_reports_off_legend_colours():
    hint = PALETTE[np.full((4, 4), 5)].copy()
    hint[0, 0] = (1, 2, 3)
    hint[1, :3] = (10, 20, 30)
    with pytest.raises(LegendError, match=r"x.png: 4 pixels in 2 colours .*#0a141e: 3 px.*pass snap=true for a hand-drawn map"):
        hints.hint_to_codes(hint, source="x.png")


def test_hint_with_transparency_must_be_snapped():
    hint = np.dstack([PALETTE[np.ones((3, 3), int)], np.full((3, 3), 255, np.uint8)])
    assert hints.hint_to_codes(hint).tolist() == [[1] * 3] * 3
    hint[0, 0, 3] = 0
    with pytest.raises(LegendError, match="1 pixels are transparent"):
        hints.hint_to_codes(hint)


def test_snap_handdrawn_map_gives_legend_colours_and_keeps_shapes(flair_samples):
    drawn = _png(flair_samples / "drawn" / "handdrawn_01.png")[..., :3]
    n_colours = len(np.unique(drawn.reshape(-1, 3), axis=0))
    assert n_colours > 100  # the file really is anti-aliased
    res = hints.snap_hint(drawn)
    assert hints.is_legend_hint(res.hint)
    np.testing.assert_array_equal(hints.codes_to_hint(res.codes), res.hint)
    # Shapes intact: pixels that were exact legend colours keep their class...
    near, dist = hints.nearest_codes(drawn)
    exact = dist == 0
    assert exact.mean() > 0.9
    np.testing.assert_array_equal(res.codes[exact], near[exact])
    # ...no class appears that the drawing did not use (no "bare soil" from red/green blends)
    assert set(np.unique(res.codes)) == set(np.unique(near[exact]))
    # ...and only edge pixels changed, reported exactly.
    assert res.changed == int((res.hint != drawn).any(-1).sum())
    assert 0 < res.changed < 0.05 * drawn.shape[0] * drawn.shape[1]


def test_snap_absorbs_jpeg_noise_and_alpha(flair_samples):
    drawn = _png(flair_samples / "drawn" / "handdrawn_01.png")[..., :3]
    clean = hints.snap_hint(drawn).codes
    buf = io.BytesIO()
    Image.fromarray(drawn).save(buf, "JPEG", quality=75)
    noisy = np.asarray(Image.open(buf))
    assert (hints.snap_hint(noisy).codes == clean).mean() > 0.99
    # A transparent hole is filled from its surroundings, not painted black.
    rgba = np.dstack([drawn, np.full(drawn.shape[:2], 255, np.uint8)])
    rgba[200:210, 200:210, 3] = 0
    res = hints.snap_hint(rgba)
    assert hints.is_legend_hint(res.hint)
    assert (res.codes[200:210, 200:210] == clean[200:210, 200:210]).mean() > 0.9


def test_snap_off_legend_colour_goes_to_nearest_neighbour_region():
    img = PALETTE[np.full((16, 16), 10)].copy()  # herbaceous
    img[:, 8:] = PALETTE[5]  # water
    img[:, 7:9] = (60, 140, 90)  # a blended 2-px edge, nearer to "deciduous" green than both
    res = hints.snap_hint(img)
    assert set(np.unique(res.codes)) == {5, 10}
    assert res.changed == 32


def test_snap_fully_transparent_gives_background():
    img = np.zeros((4, 4, 4), np.uint8)
    res = hints.snap_hint(img, background_code=19)
    assert (res.codes == 19).all() and res.changed == 0
