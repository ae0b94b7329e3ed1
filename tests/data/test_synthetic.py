import hashlib
import json

import numpy as np
import pytest
from omegaconf import OmegaConf

from seg2sat.data.synthetic import LOOK, LOOKS_NAME, Look, generate, render, scene_codes
from seg2sat.data.tiles import discover, read_pair
from seg2sat.errors import ConfigError
from seg2sat.geo.raster import FLAIR_CRS
from seg2sat.labels import NAMES, PALETTE
from seg2sat.stages.sample_data import looks_of


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


DEMO_DOMAINS = ["D064_2021", "D033_2020", "D075_2019", "D013_2020"]  # conf/sample_data.yaml's
# SHA-256 of the pixels (images, then masks) of the first 3 tiles of each demo domain at 64 px,
# seed 0, computed before looks existed: the demo's data must never change.
DEMO_PIXELS_SHA256 = "3dd07b385ee7316dbe1e11a3220ba1d482d93735017000111ae8220ae03f77cd"


def _pixels_sha(tiles):
    from seg2sat.geo.raster import read_raster

    h = hashlib.sha256()
    for t in tiles:
        for path in (t.img, t.msk):
            h.update(read_raster(path).array.tobytes())
    return h.hexdigest()


def test_default_sample_data_is_bit_identical_to_before_looks(tmp_path):
    tiles, _ = generate(tmp_path, DEMO_DOMAINS, 3, 64, seed=0)
    assert _pixels_sha(tiles) == DEMO_PIXELS_SHA256
    assert not (tmp_path / LOOKS_NAME).exists()  # no new file in the demo's tree
    # A look on one domain leaves the other domains' tiles as they were.
    looked, _ = generate(tmp_path / "b", DEMO_DOMAINS, 3, 64, seed=0,
                         looks={"D013_2020": Look(cast=(1.2, 1.0, 0.8), season="autumn")})
    same = [(a.img.read_bytes(), b.img.read_bytes()) for a, b in zip(tiles, looked, strict=True)]
    assert [x == y for x, y in same] == [d != "D013_2020" for d in DEMO_DOMAINS for _ in range(3)]


def test_a_look_changes_the_image_not_the_map():
    codes = scene_codes(64, np.random.default_rng(4))
    plain = render(codes, np.random.default_rng(7)).astype(float)
    cast = render(codes, np.random.default_rng(7), Look(cast=(1.2, 1.0, 0.8), brightness=0.9)).astype(float)
    # Cast and brightness are a gain per band on the RGB (up to rounding and clipping), NIR untouched.
    ratio = cast[:3].reshape(3, -1).sum(1) / plain[:3].reshape(3, -1).sum(1)
    np.testing.assert_allclose(ratio, [1.08, 0.9, 0.72], atol=0.01)
    np.testing.assert_array_equal(cast[3:], plain[3:])
    # Autumn turns deciduous trees orange-brown: more red than green there.
    trees = np.zeros((64, 64), np.uint8) + 7  # deciduous
    autumn = render(trees, np.random.default_rng(0), Look(season="autumn"))[:3].reshape(3, -1).mean(1)
    summer = render(trees, np.random.default_rng(0))[:3].reshape(3, -1).mean(1)
    assert autumn[0] - autumn[1] > 30 and summer[0] - summer[1] < -30


def test_texture_scale_coarsens_the_texture():
    rows = np.zeros((64, 64), np.uint8) + 11  # agricultural land: vine-like rows
    def mean_abs_step(look):
        img = render(rows, np.random.default_rng(0), look)[0].astype(float)
        return np.abs(np.diff(img, axis=1)).mean()
    assert mean_abs_step(Look(texture_scale=3.0)) < 0.6 * mean_abs_step(Look())


def test_looks_are_recorded_and_a_changed_look_is_rendered_again(tmp_path):
    _, written = generate(tmp_path, ["D064_2021", "D013_2020"], 2, 32, seed=0)
    first = (tmp_path / "flair_aerial_train").rglob("*.tif")
    before = {p: p.read_bytes() for p in first}
    _, written = generate(tmp_path, ["D064_2021", "D013_2020"], 2, 32, seed=0, looks={"D013_2020": Look(brightness=0.7)})
    assert written == 2  # only D013's tiles, rendered in their new look
    assert json.loads((tmp_path / LOOKS_NAME).read_text())["D013_2020"]["brightness"] == 0.7
    changed = {p for p, b in before.items() if p.read_bytes() != b}
    assert {p.parts[-4] for p in changed} == {"D013_2020"} and len(changed) == 2
    _, written = generate(tmp_path, ["D064_2021", "D013_2020"], 2, 32, seed=0)  # back to the demo's look
    assert written == 2 and not (tmp_path / LOOKS_NAME).exists()
    assert all(p.read_bytes() == b for p, b in before.items())


def test_season_sets_the_date_and_looks_come_from_config(tmp_path):
    cfg = OmegaConf.create({"looks": {"D013_2020": {"cast": [1.1, 1.0, 0.9], "brightness": 0.9, "season": "winter",
                                                    "texture_scale": 1.5}}})
    looks = looks_of(cfg)
    assert looks == {"D013_2020": Look(cast=(1.1, 1.0, 0.9), brightness=0.9, season="winter", texture_scale=1.5)}
    tiles, _ = generate(tmp_path, ["D013_2020"], 2, 32, seed=0, looks=looks)
    assert {t.meta["date"][5:7] for t in tiles} == {"01"}


@pytest.mark.parametrize(("settings", "match"), [
    ({"colour": 1}, r"looks.D013_2020: unknown key\(s\) colour"),
    ({"cast": [1.0, 1.0]}, r"looks.D013_2020: cast \[1.0, 1.0\]: expected 3 positive gains"),
    ({"season": "monsoon"}, r"season 'monsoon': choose one of spring, summer, autumn, winter"),
    ({"brightness": 0}, r"brightness 0: expected a positive gain"),
])
def test_bad_looks_are_one_line_errors(settings, match):
    with pytest.raises(ConfigError, match=match):
        looks_of(OmegaConf.create({"looks": {"D013_2020": settings}}))


def test_a_look_for_a_domain_not_written_is_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"looks: D013_2020 not among domains \(D064_2021\)"):
        generate(tmp_path, ["D064_2021"], 1, 32, seed=0, looks={"D013_2020": Look(brightness=0.8)})
    assert not tmp_path.joinpath("flair_aerial_train").exists()
