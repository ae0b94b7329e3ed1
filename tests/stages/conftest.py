"""Fixtures for stage tests: synthetic FLAIR trees and real samples turned into GeoTIFFs."""

import json

import numpy as np
import pytest
from affine import Affine
from PIL import Image

from seg2sat.data.flair import METADATA_NAME
from seg2sat.geo.geotiff import write_geotiff
from seg2sat.geo.raster import FLAIR_CRS, FLAIR_RESOLUTION
from seg2sat.hints import hint_to_codes

REAL_IDS = ("066278", "067998", "073879")


@pytest.fixture
def real_flair_root(flair_samples, tmp_path):
    """The real sample tiles as FLAIR GeoTIFFs (official layout) at their metadata origin."""
    root = tmp_path / "real_flair"
    metadata = {}
    for tid in REAL_IDS:
        meta = json.loads((flair_samples / "tiles" / f"META_{tid}.json").read_text())
        rgb = np.asarray(Image.open(flair_samples / "tiles" / f"IMG_{tid}.png").convert("RGB"))
        codes = hint_to_codes(np.asarray(Image.open(flair_samples / "tiles" / f"MSK_{tid}.png").convert("RGB")))
        x0, y0 = meta["origin"]
        transform = Affine(FLAIR_RESOLUTION, 0, x0, 0, -FLAIR_RESOLUTION, y0)
        # FLAIR IMG has 5 bands; the PNG keeps R, G, B: add NIR and elevation stand-ins.
        extra = np.zeros((2, *codes.shape), np.uint8)
        bands = np.concatenate([rgb.transpose(2, 0, 1), extra])
        d, z = meta["domain"], meta["zone"]
        write_geotiff(root / "flair_aerial_train" / d / z / "img" / f"IMG_{tid}.tif", bands, FLAIR_CRS, transform)
        write_geotiff(root / "flair_labels_train" / d / z / "msk" / f"MSK_{tid}.tif", codes[None], FLAIR_CRS, transform)
        metadata[f"IMG_{tid}"] = meta
    (root / METADATA_NAME).write_text(json.dumps(metadata))
    return root
