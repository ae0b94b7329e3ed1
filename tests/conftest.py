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


# `python -m pytest` runs on 2 workers (pyproject's addopts: pytest-xdist, `--dist loadgroup`): the
# suite is mostly one-threaded Python (user time ~= wall time on 2 cores), so 2 workers of one torch
# thread each use both cores without oversubscribing them. Ray tests share one worker: two local Ray
# clusters at once would contend for the same cores and ports.
SERIAL_GROUPS = {"test_scale.py": "ray", "test_synthesize.py": "ray"}
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # and for the subprocesses a test starts


def pytest_collection_modifyitems(config, items) -> None:
    for item in items:
        if group := SERIAL_GROUPS.get(item.path.name):
            item.add_marker(pytest.mark.xdist_group(group))


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread_per_worker():
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        torch.set_num_threads(1)


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


@pytest.fixture(scope="session")
def prepared_tiny(tmp_path_factory) -> Path:
    """A small prepared dataset (synthetic FLAIR layout, 64 px): 2 train domains, 1 val domain."""
    from seg2sat.config import compose
    from seg2sat.stages import prepare, sample_data

    root = tmp_path_factory.mktemp("tiny_data")
    common = [f"paths.root_dir={root}"]
    sample_data.run(compose("sample_data", [*common, "domains=[D064_2021,D033_2020,D075_2019]",
                                            "tiles_per_domain=8"]))
    result = prepare.run(compose("prepare", [*common, "split.val_domains=[D075_2019]"]))
    return Path(result.prepared_dir)


TRAIN_FAST = ["model.random_weights=true", "batch_size=4", "log_every=1", "validation_steps=0"]


@pytest.fixture(scope="session")
def trained_run(prepared_tiny, tmp_path_factory):
    """One 2-step run of the tiny random preset on `prepared_tiny` (a checkpoint at step 2),
    trained once per session: read it, never write into it (export, evaluate and the fault
    suite only read a run)."""
    from seg2sat.config import compose
    from seg2sat.stages import train

    root = tmp_path_factory.mktemp("trained_run")
    return train.run(compose("train", [f"paths.root_dir={root}", f"prepared_dir={prepared_tiny}", *TRAIN_FAST,
                                       "max_steps=2", "checkpointing_steps=2"]))


@pytest.fixture(scope="session")
def exported_model(trained_run, tmp_path_factory) -> Path:
    """`trained_run` exported once per session; tests that change a model take `exported`."""
    from seg2sat.config import compose
    from seg2sat.stages import export

    root = tmp_path_factory.mktemp("exported")
    return export.run(compose("export", [f"paths.root_dir={root}", f"run_dir={trained_run.run_dir}",
                                         f"output_dir={root / 'models' / 'm'}"])).model_dir


@pytest.fixture
def exported(exported_model, tmp_path) -> Path:
    """A private copy of `exported_model` (evaluate writes its scores into the model's card)."""
    import shutil

    return Path(shutil.copytree(exported_model, tmp_path / "models" / "m"))


@pytest.fixture
def train_cfg(prepared_tiny, tmp_path):
    """compose("train") on the tiny random preset and `prepared_tiny`, run folder in tmp_path."""
    from seg2sat.config import compose

    def make(*overrides: str):
        return compose("train", [f"paths.root_dir={tmp_path}", f"prepared_dir={prepared_tiny}", *TRAIN_FAST, *overrides])

    return make


@pytest.fixture
def stage_cfg(tmp_path):
    """compose(stage, overrides) with every path under tmp_path."""
    from seg2sat.config import compose

    def make(stage, *overrides):
        return compose(stage, [f"paths.root_dir={tmp_path}", *overrides])

    return make


# A Lambert-93 grid at FLAIR's 0.2 m, for small GeoTIFF fixtures.
L93_GRID = (0.2, 0, 407473.0, 0, -0.2, 6260587.6)


@pytest.fixture
def geotiff():
    """write(path, (bands, H, W) array, crs=EPSG:2154, transform=L93_GRID, nodata=None, **profile) -> path."""
    import rasterio
    from affine import Affine

    def write(path, array, crs="EPSG:2154", transform=None, nodata=None, **kw):
        count, h, w = array.shape
        with rasterio.open(path, "w", driver="GTiff", width=w, height=h, count=count, dtype=array.dtype, crs=crs,
                           transform=transform if transform is not None else Affine(*L93_GRID), nodata=nodata,
                           **kw) as dst:
            dst.write(array)
        return path

    return write


@pytest.fixture
def img_msk(tmp_path, geotiff):
    """A FLAIR IMG (5 uint8 bands) and MSK (codes 1..19), 48x32 px, on L93_GRID."""
    import numpy as np

    rng = np.random.default_rng(0)
    img = geotiff(tmp_path / "IMG_000001.tif", rng.integers(0, 255, (5, 32, 48), dtype=np.uint8))
    msk = geotiff(tmp_path / "MSK_000001.tif", rng.integers(1, 20, (1, 32, 48), dtype=np.uint8))
    return img, msk


STAC_SCHEMAS = Path(__file__).resolve().parent / "geo" / "stac_schemas"


@pytest.fixture(scope="session")
def stac_errors():
    """errors(dict) -> list of problems of a STAC Item/Collection, checked offline (empty: valid).

    Three checks: the STAC core JSON schema that ships with pystac, stac-pydantic's models of the
    spec, and the JSON schema of every extension the object declares (copies kept in
    tests/geo/stac_schemas/; an extension without a copy is itself reported).
    """
    import json

    import jsonschema
    import pystac.validation
    import stac_pydantic
    from referencing import Registry, Resource

    resources = []
    for path in sorted(STAC_SCHEMAS.glob("*.json")):
        name, version = path.stem.rsplit("-", 1)
        url = f"https://stac-extensions.github.io/{name}/{version}/schema.json"
        resources.append((url, Resource.from_contents(json.loads(path.read_text()))))
    registry = Registry().with_resources(resources)

    def errors(obj: dict) -> list[str]:
        found: list[str] = []
        try:
            pystac.validation.validate_dict(obj, extensions=[])
        except pystac.errors.STACValidationError as exc:
            found.append(f"core schema: {str(exc)[:300]}")
        model = stac_pydantic.Item if obj.get("type") == "Feature" else stac_pydantic.Collection
        try:
            model.model_validate(obj)
        except Exception as exc:  # pydantic's ValidationError lists every field
            found.append(f"stac-pydantic: {str(exc)[:300]}")
        for url in obj.get("stac_extensions", []):
            try:
                schema = registry.contents(url)
            except Exception:
                found.append(f"{url}: no offline copy of this extension's schema")
                continue
            validator = jsonschema.Draft7Validator(schema, registry=registry)
            found += [f"{url}: {e.message[:200]} at {list(e.absolute_path)}" for e in validator.iter_errors(obj)]
        return found

    return errors


@pytest.fixture
def one_thread():
    """Torch on one thread for the test, restored after: as subprocesses and Ray workers run (so
    results compare bit for bit), and no spinning of 2 threads on 2 shared cores."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
