import numpy as np
import pytest
from PIL import Image

from seg2sat.data.augment import build_augment, cache_safe, check_augment
from seg2sat.errors import ConfigError
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


# ---------------------------------------------------------------------------------------------
# Each accepted key changes the output; any other key is refused
# ---------------------------------------------------------------------------------------------

# 8x8 with every pixel distinct, so any flip, rotation or crop shows in the values.
IMAGE = np.arange(8 * 8 * 3, dtype=np.uint8).reshape(8, 8, 3)


def test_vflip_with_probability_1_flips_rows():
    out_img, out_hint = build_augment({"vflip": 1.0, "seed": 0})(IMAGE, IMAGE.copy())
    np.testing.assert_array_equal(out_img, IMAGE[::-1])
    np.testing.assert_array_equal(out_hint, IMAGE[::-1])


def test_rot90_with_probability_1_is_a_quarter_turn_applied_to_both():
    aug = build_augment({"rot90": 1.0, "seed": 0})
    turns = []
    for _ in range(12):
        out_img, out_hint = aug(IMAGE, IMAGE.copy())
        k = next(k for k in range(4) if np.array_equal(out_img, np.rot90(IMAGE, k)))
        np.testing.assert_array_equal(out_hint, np.rot90(IMAGE, k))
        turns.append(k)
    assert len({k for k in turns if k}) >= 2  # real turns are drawn, not only the identity


def test_crop_scale_crops_and_resizes_the_hint_with_nearest():
    aug = build_augment({"crop_scale": [0.25, 0.25], "seed": 0}, size=8)
    out_img, out_hint = aug(IMAGE, IMAGE.copy())
    assert out_img.shape == out_hint.shape == (8, 8, 3)
    assert not np.array_equal(out_img, IMAGE) and not np.array_equal(out_hint, IMAGE)
    # a quarter of the area: the hint's pixels come from a 4x4 window, each repeated 4 times
    pixels, counts = np.unique(out_hint.reshape(-1, 3), axis=0, return_counts=True)
    assert len(pixels) == 16 and set(counts.tolist()) == {4}
    assert {tuple(p) for p in pixels} <= {tuple(p) for p in IMAGE.reshape(-1, 3)}


def _flip_pattern(seed):
    aug = build_augment({"hflip": 0.5, "seed": seed})
    return [not np.array_equal(aug(IMAGE, IMAGE)[0], IMAGE) for _ in range(16)]


def test_seed_changes_the_draws():
    first, rebuilt = _flip_pattern(1), _flip_pattern(1)  # two transforms built from the same seed
    assert rebuilt == first  # reproducible
    assert _flip_pattern(2) != first
    assert 0 < sum(first) < 16


UNKNOWN = r"^augment: unknown key 'color_jitter'; accepted keys: hflip, vflip, rot90, crop_scale, seed$"


def test_unknown_key_is_refused_by_build_augment_and_cache_safe():
    with pytest.raises(ConfigError, match=UNKNOWN):
        build_augment({"hflip": 0.5, "color_jitter": 0.2})
    with pytest.raises(ConfigError, match=UNKNOWN):
        cache_safe({"hflip": 0.5, "color_jitter": 0.2})
    with pytest.raises(ConfigError, match=r"^augment: unknown keys 'blur', 'hfilp'; accepted keys: "):
        build_augment({"blur": 1, "hfilp": 0.5})
    assert check_augment({"hflip": 0.5, "seed": None}) == {"hflip": 0.5, "seed": None}
