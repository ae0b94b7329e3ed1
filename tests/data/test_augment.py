import numpy as np
import pytest
from PIL import Image

from seg2sat.data.augment import build_augment, cache_safe
from seg2sat.hints import is_legend_hint


def _real_hints(flair_samples):
    return [np.asarray(Image.open(p).convert("RGB")) for p in sorted((flair_samples / "tiles").glob("MSK_*.png"))]


def test_no_augmented_hint_leaves_the_legend(flair_samples):
    aug = build_augment({"hflip": 0.5, "vflip": 0.5, "rot90": 0.5, "crop_scale": [0.1, 1.0], "seed": 0}, size=128)
    rng = np.random.default_rng(0)
    for hint in _real_hints(flair_samples):
        image = rng.integers(0, 255, hint.shape, dtype=np.uint8)
        for _ in range(15):
            out_img, out_hint = aug(image, hint)
            assert out_img.shape == (128, 128, 3) and out_hint.shape == (128, 128, 3)
            assert is_legend_hint(out_hint)


def test_flips_apply_identically_to_image_and_hint():
    aug = build_augment({"hflip": 1.0, "seed": 0})
    image = np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3)
    hint = image.copy()
    out_img, out_hint = aug(image, hint)
    np.testing.assert_array_equal(out_img, image[:, ::-1])
    np.testing.assert_array_equal(out_hint, out_img)


def test_seeded_draws_reproduce():
    cfg = {"hflip": 0.5, "rot90": 0.5, "seed": 7}
    image = np.random.default_rng(0).integers(0, 255, (8, 8, 3), dtype=np.uint8)
    a, b = build_augment(cfg), build_augment(cfg)
    for _ in range(5):
        np.testing.assert_array_equal(a(image, image)[0], b(image, image)[0])


def test_cache_safety_and_disabled():
    assert cache_safe({"hflip": 0.5, "rot90": 0.5, "seed": 1})
    assert not cache_safe({"hflip": 0.5, "crop_scale": [0.5, 1.0]})
    assert cache_safe(None) and build_augment({}) is None
    with pytest.raises(ValueError, match="crop_scale needs the output size"):
        build_augment({"crop_scale": [0.5, 1.0]})
