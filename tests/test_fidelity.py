import numpy as np
import pytest

from seg2sat.fidelity import fit_colour_model, iou_per_class, mask_fidelity
from seg2sat.labels import PALETTE

# A "rendering" of each class that is NOT its hint colour, as the sample data does.
LOOK = {5: (30, 60, 120), 7: (40, 110, 50), 3: (128, 128, 128)}


def _render(codes, rng, noise=12):
    img = np.zeros(codes.shape + (3,), np.float32)
    for code, rgb in LOOK.items():
        img[codes == code] = rgb
    return np.clip(img + rng.normal(0, noise, img.shape), 0, 255).astype(np.uint8)


def _maps(rng, n=4, size=32):
    out = []
    for _ in range(n):
        codes = np.full((size, size), 7, np.uint8)
        r, c = rng.integers(4, size - 12, 2)
        codes[r : r + 10, :] = 3
        codes[:, c : c + 8] = 5
        out.append(codes)
    return out


def test_colour_model_recovers_rendered_classes():
    rng = np.random.default_rng(0)
    train = _maps(rng)
    model = fit_colour_model((_render(m, rng), m) for m in train)
    assert sorted(model.codes.tolist()) == [3, 5, 7]
    test = _maps(rng, n=3)
    faithful = mask_fidelity(model, [_render(m, rng) for m in test], test)
    assert faithful["miou"] > 0.85 and faithful["pixel_accuracy"] > 0.9
    assert set(faithful["per_class_iou"]) == {"impervious surface", "water", "deciduous"}
    # An image that ignores its map (a constant forest) scores far lower.
    ignoring = [_render(np.full_like(m, 7), rng) for m in test]
    unfaithful = mask_fidelity(model, ignoring, test)
    assert unfaithful["miou"] < 0.5 * faithful["miou"]


def test_hint_colours_themselves_are_not_what_is_learned():
    rng = np.random.default_rng(1)
    train = _maps(rng)
    model = fit_colour_model((_render(m, rng), m) for m in train)
    # Pasting the hint as the "generated image" must not score perfectly: the model learned
    # the rendered look of each class, not the legend colours.
    test = _maps(rng, n=2)
    score = mask_fidelity(model, [PALETTE[m] for m in test], test)
    assert score["miou"] < 0.9


def test_iou_per_class_values():
    pred = np.array([[1, 1], [5, 5]])
    target = np.array([[1, 5], [5, 5]])
    assert iou_per_class(pred, target) == {1: pytest.approx(0.5), 5: pytest.approx(2 / 3)}


def test_empty_inputs_raise():
    with pytest.raises(ValueError, match="no class has enough pixels"):
        fit_colour_model([])
