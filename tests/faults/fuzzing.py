"""Fuzzing the readers: a bounded, seeded mutator over valid files, and a worker that runs the cases.

`python tests/faults/fuzzing.py <workdir> <seed> <count> <reader>:<first> ...` writes valid
seed files into `workdir`, then for each case mutates its reader's seed (bit flips, interesting
integers in the header, truncation, cut and repeated chunks; JSON values replaced by wrong types
and extremes) and reads the result as the product does. One JSON line per case on stdout:
`ok` (a result that keeps the reader's promises), `error` (a one-line project error), or
`traceback` / `invalid` (what the suite is here to find). The worker runs under a memory limit;
the test (test_fuzz.py) kills a case that takes too long and counts it as a hang.
"""

from __future__ import annotations

import json
import resource
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

import numpy as np

MEMORY_LIMIT = 6 << 30  # the worker's address space: a reader that tries to take more fails inside it
INTERESTING = [0, 1, 2, 0x7F, 0x80, 0xFF, 0x7FFF, 0xFFFF, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 2**40, 2**63 - 1]
ODD_VALUES = [None, -1, 0, 1e308, -1e308, float("nan"), "", "x" * 300, [], {}, True, "NaN", 2**70, [1, "a"]]


# ---------------------------------------------------------------------------------------------
# Mutations
# ---------------------------------------------------------------------------------------------


def _bytes_mutation(data: bytearray, rng: np.random.Generator) -> bytearray:
    n = len(data)
    op = int(rng.integers(0, 6))
    if n == 0 or op == 0:  # a few bit flips
        for _ in range(int(rng.integers(1, 9))):
            if data:
                data[int(rng.integers(0, len(data)))] ^= 1 << int(rng.integers(0, 8))
    elif op == 1:  # an interesting integer, mostly in the header
        width = int(rng.choice([1, 2, 4, 8]))
        at = int(rng.integers(0, max(1, min(n, 512) - width)))
        value = int(rng.choice(INTERESTING)) % (1 << (8 * width))
        data[at:at + width] = value.to_bytes(width, str(rng.choice(["little", "big"])))
    elif op == 2:  # cut short
        del data[int(rng.integers(0, n)):]
    elif op == 3:  # a chunk removed
        a = int(rng.integers(0, n))
        del data[a:a + int(rng.integers(1, 256))]
    elif op == 4:  # a chunk repeated
        a = int(rng.integers(0, n))
        chunk = data[a:a + int(rng.integers(1, 256))]
        b = int(rng.integers(0, n))
        data[b:b] = chunk
    else:  # random bytes over a stretch
        a = int(rng.integers(0, n))
        k = int(rng.integers(1, 32))
        data[a:a + k] = rng.integers(0, 256, k, dtype=np.uint8).tobytes()
    return data


def _paths(value, prefix=()):
    yield prefix
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value[:50]):
            yield from _paths(v, (*prefix, i))


def _json_mutation(text: str, rng: np.random.Generator) -> str:
    """A value somewhere in the document replaced by a wrong type or an extreme (valid JSON, wrong content)."""
    doc = json.loads(text)
    paths = list(_paths(doc))
    where = paths[int(rng.integers(0, len(paths)))]
    odd = ODD_VALUES[int(rng.integers(0, len(ODD_VALUES)))]
    if not where:
        return json.dumps(odd)
    node = doc
    for key in where[:-1]:
        node = node[key]
    node[where[-1]] = odd
    return json.dumps(doc)


def mutate(data: bytes, rng: np.random.Generator, is_json: bool) -> bytes:
    """One to three mutations of a valid file; JSON files get structural ones half the time."""
    if is_json and rng.random() < 0.5:
        try:
            lines = data.decode().splitlines()
            i = int(rng.integers(0, len(lines)))
            lines[i] = _json_mutation(lines[i], rng)
            return ("\n".join(lines) + "\n").encode()
        except (ValueError, IndexError):
            pass
    out = bytearray(data)
    for _ in range(int(rng.integers(1, 4))):
        out = _bytes_mutation(out, rng)
    return bytes(out)


# ---------------------------------------------------------------------------------------------
# Seeds: one valid file per reader
# ---------------------------------------------------------------------------------------------


def _codes(shape=(48, 64), seed=0):
    rng = np.random.default_rng(seed)
    codes = np.repeat(np.repeat(rng.choice([1, 2, 5, 6, 10, 11], (shape[0] // 8, shape[1] // 8)), 8, 0), 8, 1)
    return codes.astype(np.uint8)


def write_seeds(folder: Path) -> dict[str, Path]:
    """A valid file for every reader, as the product writes or reads them."""
    import geopandas as gpd
    from affine import Affine
    from PIL import Image
    from shapely.geometry import box

    from seg2sat.geo.geotiff import write_geotiff
    from seg2sat.geo.raster import FLAIR_CRS
    from seg2sat.hints import codes_to_hint

    folder.mkdir(parents=True, exist_ok=True)
    grid = Affine(0.2, 0, 1000, 0, -0.2, 2000)
    codes = _codes()
    codes[:4, :4] = 0
    seeds = {"geotiff-codes": write_geotiff(folder / "codes.tif", codes, FLAIR_CRS, grid, nodata=0),
             "geotiff-hint": write_geotiff(folder / "hint.tif", np.moveaxis(codes_to_hint(_codes()), -1, 0),
                                           FLAIR_CRS, grid),
             "geotiff-nlcd": write_geotiff(folder / "nlcd.tif", np.choose(_codes() % 3, [11, 41, 82]).astype(np.float32),
                                           "EPSG:5070", Affine(30, 0, -1e6, 0, -30, 2e6), nodata=-1.0),
             "edit-image": write_geotiff(folder / "aerial.tif", np.random.default_rng(0).integers(
                 0, 255, (3, 48, 64), dtype=np.uint8), FLAIR_CRS, grid)}
    import rasterio

    with rasterio.open(folder / "raw.tif", "w", driver="GTiff", width=64, height=48, count=1, dtype="uint8",
                       crs=FLAIR_CRS, transform=grid, nodata=0) as dst:  # uncompressed: damage reaches the values
        dst.write(codes[None])
    seeds["geotiff-raw"] = folder / "raw.tif"
    Image.fromarray(codes_to_hint(_codes())).save(folder / "map.png")
    seeds["png-map"] = folder / "map.png"
    layer = gpd.GeoDataFrame({"class": ["building", "deciduous", "water"]},
                             geometry=[box(0, 0, 10, 10), box(10, 0, 20, 10), box(0, 10, 20, 20)], crs="EPSG:2154")
    layer.to_file(folder / "layer.geojson", driver="GeoJSON")
    layer.to_file(folder / "layer.gpkg", driver="GPKG")
    seeds.update({"geojson": folder / "layer.geojson", "gpkg": folder / "layer.gpkg"})
    seeds.update(_state_seeds(folder))
    return seeds


def _state_seeds(folder: Path) -> dict[str, Path]:
    """Files the product writes and reads back: sidecars, indexes, manifests, checkpoint records."""
    import hashlib

    from seg2sat.scale.grid import plan_grid
    from seg2sat.scale.manifest import opened

    tif = folder / "codes.tif"
    sha = hashlib.sha256(tif.read_bytes()).hexdigest()
    texts = {
        "sidecar": ("codes.tif.json", {"input": "x.tif", "output": str(tif), "steps": 2, "windows": 4,
                                       "seconds": 1.5, "sha256": {"tif": sha}}),
        "model-info": ("seg2sat.json", {"format": "seg2sat-model", "version": 1, "base_model": "base",
                                        "controlnet": "controlnet", "resolution": 64, "caption_template": "A {classes}",
                                        "sampling": {"steps": 4, "guidance_scale": 1.0, "controlnet_scale": 1.0}}),
        "cache-index": ("index.json", {"version": 2, "n": 3, "shard_size": 2, "shards": 2, "ids": ["a", "b", "c"],
                                       "sha256": {"empty.safetensors": sha, "shard-00000.safetensors": sha}}),
        "trainer-state": ("trainer_state.json", {"global_step": 4, "epoch": 1, "batch_in_epoch": 0, "samples_seen": 16}),
    }
    seeds = {}
    for reader, (name, doc) in texts.items():
        (folder / name).write_text(json.dumps(doc, indent=2))
        seeds[reader] = folder / name
    record = {"id": "t1", "image": "images/t1.png", "hint": "hints/t1.png", "caption": "x", "split": "train"}
    (folder / "manifest.jsonl").write_text("\n".join(json.dumps({**record, "id": f"t{i}"}) for i in range(3)) + "\n")
    seeds["manifest-jsonl"] = seeds["records-shard"] = folder / "manifest.jsonl"
    with opened(folder / "manifest.sqlite") as m:
        m.add_blocks(plan_grid((0, 0, 51.2, 25.6), "EPSG:2154", 0.2, 128, 64, 64))
        m.update("r00000_c00000", state="done", output="blocks/a.tif", sha256=sha, raw="raw/a.tif", raw_sha256=sha)
    m._db = None
    for wal in folder.glob("manifest.sqlite-*"):
        wal.unlink()
    seeds["mosaic-manifest"] = folder / "manifest.sqlite"
    return seeds


# ---------------------------------------------------------------------------------------------
# Readers: each reads a mutated file the way the product does, and checks what it got
# ---------------------------------------------------------------------------------------------


def _check_landcover(lc) -> None:
    from seg2sat.labels import CODES

    assert lc.codes.dtype == np.uint8 and lc.codes.ndim == 2 and lc.codes.size > 0
    assert lc.valid.dtype == bool and lc.valid.shape == lc.codes.shape and lc.valid.any()
    assert set(np.unique(lc.codes)) <= set(CODES)
    assert lc.transform.a > 0 and lc.transform.e < 0


def _landcover(path: Path, legend=None, crs=None) -> None:
    """What `infer` does with an input before any model loads (`files.check_input`)."""
    from seg2sat.geo.landcover import InputOptions
    from seg2sat.geo.recognise import resolve_legend

    options = InputOptions(crs=crs, work_resolution=None)
    lc, work = options.read(path, resolve_legend(path, legend))
    _check_landcover(lc)
    _check_landcover(work)


def _upload(path: Path, kind: str = "map") -> None:
    from seg2sat.labels import CODES
    from seg2sat.serving.app_support import read_upload, upload_to_codes

    upload = read_upload(path.name, path.read_bytes(), max_bytes=20 << 20, max_pixels=4_000_000, kind=kind)
    if kind == "map":
        codes = upload_to_codes(upload)
        assert codes.ndim == 2 and codes.size and set(np.unique(codes)) <= set(CODES)
    else:
        assert upload.rgb.ndim == 3 and upload.rgb.shape[-1] >= 3 and upload.rgb.dtype == np.uint8


def _edit_image(path: Path) -> None:
    from seg2sat.generation.files import read_edit_image

    image = read_edit_image(path, None)
    assert image.array.dtype == np.uint8 and image.count >= 3 and image.width > 0


def _sidecar(path: Path) -> None:
    from seg2sat.generation.files import is_finished

    paths = {"tif": path.with_name("codes.tif"), "json": path, "preview": path.with_name("none.png")}
    assert isinstance(is_finished(paths), bool)


def _model_info(path: Path) -> None:
    from seg2sat.generation.models import peek_model

    model = peek_model(path.parent)
    assert isinstance(model.tile, int) and model.tile > 0


def _manifest_jsonl(path: Path) -> None:
    from seg2sat.data.dataset import read_manifest

    rows = read_manifest(path.parent, "train")
    assert all(isinstance(r, dict) and isinstance(r["id"], str) for r in rows)


def _records_shard(path: Path) -> None:
    from seg2sat.data.prepare import load_records

    (path.parent / "records").mkdir(exist_ok=True)
    path.replace(path.parent / "records" / "part-x.jsonl")
    records, _ = load_records(path.parent)
    assert all(isinstance(k, str) and isinstance(v, dict) for k, v in records.items())


def _cache_index(path: Path) -> None:
    from seg2sat.data.latent_cache import cache_damage

    damaged = cache_damage(path.parent)
    assert isinstance(damaged, list) and all(isinstance(name, str) for name in damaged)


def _trainer_state(path: Path) -> None:
    from seg2sat.training.checkpoint import TrainState, checkpoint_problem, resolve_resume

    ckpt = path.parent / "run" / "checkpoints" / "checkpoint-4"
    ckpt.mkdir(parents=True)
    path.replace(ckpt / "trainer_state.json")
    found = resolve_resume(path.parent / "run", "latest")
    assert found in (None, ckpt) and (found is None) == (checkpoint_problem(ckpt) is not None)
    if found is not None:
        TrainState.from_file(found / "trainer_state.json")


def _mosaic_manifest(path: Path) -> None:
    from seg2sat.scale.manifest import STATES, opened, verify

    with opened(path) as m:
        verify(m, path.parent)
        assert all(r["state"] in STATES for r in m.blocks())


READERS: dict[str, tuple[str, Callable[[Path], None]]] = {  # reader -> (its seed, what reads it)
    "geotiff-codes": ("geotiff-codes", _landcover),
    "geotiff-raw": ("geotiff-raw", _landcover),
    "geotiff-hint": ("geotiff-hint", _landcover),
    "geotiff-nlcd": ("geotiff-nlcd", lambda p: _landcover(p, legend="auto")),
    "png-map": ("png-map", lambda p: _landcover(p, crs="EPSG:2154")),
    "geojson": ("geojson", _landcover),
    "gpkg": ("gpkg", _landcover),
    "upload-png": ("png-map", _upload),
    "upload-geotiff": ("geotiff-hint", _upload),
    "upload-image": ("edit-image", lambda p: _upload(p, kind="image")),
    "edit-image": ("edit-image", _edit_image),
    "sidecar": ("sidecar", _sidecar),
    "model-info": ("model-info", _model_info),
    "manifest-jsonl": ("manifest-jsonl", _manifest_jsonl),
    "records-shard": ("records-shard", _records_shard),
    "cache-index": ("cache-index", _cache_index),
    "trainer-state": ("trainer-state", _trainer_state),
    "mosaic-manifest": ("mosaic-manifest", _mosaic_manifest),
}


def run_case(workdir: Path, reader: str, seeds: dict[str, Path], case: int, seed: int) -> dict[str, object]:
    """Mutate the reader's seed (case `case` of run `seed`), read it; what happened, as a JSON-able dict."""
    import shutil

    from seg2sat.errors import Seg2SatError

    seed_name, read = READERS[reader]
    source = seeds[seed_name]
    rng = np.random.default_rng([seed, case, sum(map(ord, reader))])
    data = mutate(source.read_bytes(), rng, source.suffix in (".json", ".jsonl", ".geojson"))
    folder = workdir / "case"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    for sibling in source.parent.glob("codes.tif"):  # a sidecar checks the GeoTIFF beside it
        shutil.copy(sibling, folder / sibling.name)
    path = folder / source.name
    path.write_bytes(data)
    try:
        read(path)
        return {"case": case, "outcome": "ok"}
    except Seg2SatError as exc:
        return {"case": case, "outcome": "error", "detail": " ".join(str(exc).split())[:300]}
    except AssertionError:
        return {"case": case, "outcome": "invalid", "detail": traceback.format_exc(limit=-3)[-1500:]}
    except BaseException as exc:  # the point of fuzzing: anything else reaches the user as a traceback
        return {"case": case, "outcome": "traceback", "detail": f"{type(exc).__name__}: "
                f"{str(exc)[:300]} | {traceback.format_exc(limit=-4)[-1500:]}"}


def main(argv: list[str]) -> None:
    """Worker: `<workdir> <seed> <count> <reader>:<first> ...`: cases first..count-1 of each reader, a JSON line each."""
    import logging
    import warnings

    workdir, seed, count = Path(argv[0]), int(argv[1]), int(argv[2])
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
    logging.disable(logging.CRITICAL)
    warnings.simplefilter("ignore")
    seeds = write_seeds(workdir / "seeds")
    print(json.dumps({"ready": True}), flush=True)
    for item in argv[3:]:
        reader, first = item.rsplit(":", 1)
        for case in range(int(first), count):
            print(json.dumps({"reader": reader, "start": case}), flush=True)
            print(json.dumps({"reader": reader, **run_case(workdir, reader, seeds, case, seed)}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
