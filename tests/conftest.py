"""Shared fixtures: the real sample folders beside the checkout, offline tracking, temp data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED = REPO_ROOT.parent / "shared"

# No test may reach a tracker's server or a model hub.
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def _shared(sub: str) -> Path:
    path = SHARED / sub
    if not path.is_dir():
        pytest.skip(f"{path} is absent: real sample data lives beside the checkout, not in it")
    return path


@pytest.fixture(scope="session")
def flair_samples() -> Path:
    """`../shared/flair_samples` (real FLAIR tiles as PNG + JSON, and a hand-drawn map)."""
    return _shared("flair_samples")


@pytest.fixture(scope="session")
def geo_samples() -> Path:
    """`../shared/geo_samples` (a real float32 land-cover raster in EPSG:3358, and polygons)."""
    return _shared("geo_samples")
