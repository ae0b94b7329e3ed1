"""`prepare` on the real FLAIR samples (as GeoTIFFs built from ../shared/flair_samples)."""

import json

import geopandas as gpd
import numpy as np
import pytest
from PIL import Image

from seg2sat.stages import prepare

REAL_IDS = ("066278", "067998", "073879")


def test_real_tiles_shares_and_captions(stage_cfg, real_flair_root, flair_samples):
    res = prepare.run(stage_cfg("prepare", f"data_root={real_flair_root}"))
    assert res.n_done == 3
    rows = {r["id"]: r for r in map(json.loads, res.manifest_path.read_text().splitlines())}
    assert sorted(rows) == list(REAL_IDS)
    for tid in REAL_IDS:
        expected = json.loads((flair_samples / "tiles" / f"CLASSES_{tid}.json").read_text())["class_repartition"]
        meta = json.loads((flair_samples / "tiles" / f"META_{tid}.json").read_text())
        r = rows[tid]
        assert set(r["shares"]) == set(expected)
        for name, share in expected.items():
            assert abs(r["shares"][name] - share) < 1e-6
        order = sorted(expected, key=lambda n: -expected[n])
        assert r["caption"] == f"Aerial view of {meta['display_name']}. {', '.join(order)}"
        # the hint is the original mask PNG, bit for bit; the image its RGB
        np.testing.assert_array_equal(
            np.asarray(Image.open(res.prepared_dir / r["hint"])),
            np.asarray(Image.open(flair_samples / "tiles" / f"MSK_{tid}.png").convert("RGB")),
        )
        x0, y0 = meta["origin"]
        assert r["bounds"] == pytest.approx([x0, y0 - 102.4, x0 + 102.4, y0])
        assert r["domain"] == meta["domain"] and r["crs"] == "EPSG:2154"
    fp = gpd.read_file(res.prepared_dir / "footprints.gpkg", layer="tiles").set_index("id")
    assert fp.crs.to_epsg() == 2154
    for tid in REAL_IDS:
        assert fp.loc[tid].geometry.bounds == pytest.approx(tuple(rows[tid]["bounds"]))
    # three domains: split by domain, at least one on each side
    assert {r["split"] for r in rows.values()} == {"train", "val"}
