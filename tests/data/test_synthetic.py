import numpy as np

from seg2sat.data.synthetic import LOOK, generate, render, scene_codes
from seg2sat.data.tiles import discover, read_pair
from seg2sat.geo.raster import FLAIR_CRS
from seg2sat.labels import NAMES, PALETTE


def test_generated_tiles_are_flair_geotiffs(tmp_path):
    tiles, written = generate(tmp_path, ["D064_2021", "D033_2020"], 3, 32, seed=0)
    assert written == 6 and len(tiles) == 6
    found = discover(tmp_path)
    img, codes, _ = read_pair(found.tiles[0])
    assert img.array.shape == (5, 32, 32) and img.array.dtype == np.uint8
    assert img.crs == FLAIR_CRS and img.transform.a == 0.2 and img.transform.e == -0.2
    assert codes.min() >= 1 and codes.max() <= 19
    assert [t.id for t in found.tiles] == [t.id for t in tiles]
    assert {t.domain for t in found.tiles} == {"D064_2021", "D033_2020"}


def test_deterministic_and_idempotent(tmp_path):
    a, _ = generate(tmp_path / "a", ["D064_2021"], 2, 32, seed=3)
    b, _ = generate(tmp_path / "b", ["D064_2021"], 2, 32, seed=3)
    assert a[1].img.read_bytes() == b[1].img.read_bytes()
    mtime = a[0].img.stat().st_mtime_ns
    _, written = generate(tmp_path / "a", ["D064_2021"], 3, 32, seed=3)
    assert written == 1 and a[0].img.stat().st_mtime_ns == mtime


def test_each_class_has_its_own_look_not_its_hint_colour():
    rng = np.random.default_rng(0)
    codes = np.repeat(np.arange(1, 20, dtype=np.uint8), 64).reshape(19, 64).repeat(8, 0)
    img = render(codes, rng)[:3].transpose(1, 2, 0).astype(float)
    means = np.array([img[codes == c].mean(0) for c in range(1, 20)])
    for i, c in enumerate(range(1, 20)):
        assert np.abs(means[i] - PALETTE[c]).sum() > 40  # far from the hint colour
    d = np.linalg.norm(means[:, None] - means[None], axis=-1) + np.eye(19) * 1e9
    assert d.min() > 8  # classes are told apart by colour alone
    assert set(LOOK) == set(NAMES)


def test_scenes_are_varied():
    rng = np.random.default_rng(1)
    present = set()
    for _ in range(20):
        present |= set(np.unique(scene_codes(64, rng)).tolist())
    assert {1, 3, 5, 11}.issubset(present) and len(present) >= 10
