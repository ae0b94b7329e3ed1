"""Damaged state: a truncated or byte-flipped checkpoint, cache shard, block COG, manifest, sidecar.

Each file is damaged after a finished run, the way bit rot, a bad copy or a full disk in another
program would leave it. The next run must find it (checksums, or the file's own structure) and
redo exactly that part: what it then holds equals the uninterrupted run's.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3

import pytest
import torch
from faultkit import differences, products, tally
from test_full_disk import FAST, MOSAIC, RNG_FILES, _map

from seg2sat.config import compose


def truncate(path):
    """Keep the first half of a file (a copy or a write cut short)."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def flip(path, at=0.6):
    """Flip one bit at `at` of the file's length (bit rot; the size stays the same)."""
    data = bytearray(path.read_bytes())
    data[int(len(data) * at)] ^= 0x10
    path.write_bytes(bytes(data))


def _survived(stage, problems):
    tally("corrupt state", stage, not problems)
    assert problems == []


# ---------------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoints(prepared_tiny, tmp_path_factory):
    """An uninterrupted run of 4 steps, checkpoints at 2 and 4."""
    from seg2sat.stages import train

    root = tmp_path_factory.mktemp("train")
    args = [f"paths.root_dir={root}", f"prepared_dir={prepared_tiny}", "batch_size=4", "validation_steps=0",
            "max_steps=4", "checkpointing_steps=2", "resume=latest", "model.random_weights=true"]
    run = train.run(compose("train", args))
    return run.run_dir, args


@pytest.mark.parametrize(("name", "damage"), [
    ("model.safetensors", truncate),
    ("optimizer.bin", flip),
    ("controlnet/diffusion_pytorch_model.safetensors", flip),
    ("trainer_state.json", truncate),
    ("checksums.json", flip),
])
def test_damaged_checkpoint_is_passed_over_and_its_steps_redone(checkpoints, name, damage, tmp_path):
    from seg2sat.stages import train
    from seg2sat.training.checkpoint import resolve_resume

    run_dir, args = checkpoints
    copy = shutil.copytree(run_dir, tmp_path / "tiny")
    damage(copy / "checkpoints" / "checkpoint-4" / name)
    assert resolve_resume(copy, "latest") == copy / "checkpoints" / "checkpoint-2"
    again = train.run(compose("train", [*args, f"run_dir={copy}"]))
    assert again.global_step == 4 and len(again.seen) == 2 * 4  # steps 3 and 4 redone, batches of 4
    ignore = (*RNG_FILES, "config.yaml")
    _survived("train", differences(products(copy, ignore), products(run_dir, ignore)))


# ---------------------------------------------------------------------------------------------
# Caches: latent shards and the judge
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_parts():
    from seg2sat.generation.models import load_components

    return load_components(compose("train", ["model.random_weights=true"]).model)


@pytest.mark.parametrize(("name", "damage"), [
    ("shard-00001.safetensors", flip),
    ("shard-00002.safetensors", truncate),
    ("empty.safetensors", flip),
    ("index.json", truncate),
])
def test_damaged_cache_shard_is_encoded_again(prepared_tiny, tiny_parts, name, damage, tmp_path):
    from seg2sat.data.latent_cache import LatentCache

    prepared = shutil.copytree(prepared_tiny, tmp_path / "prepared", ignore=shutil.ignore_patterns("cache"))
    cache, built = LatentCache.build_or_load(prepared, "train", tiny_parts, 64, shard_size=4)
    reference = products(cache.folder)
    damage(cache.folder / name)
    again, built = LatentCache.build_or_load(prepared, "train", tiny_parts, 64, shard_size=4)
    assert built and again.folder == cache.folder
    _survived("cache", differences(products(again.folder), reference))


def test_damaged_judge_is_trained_again(prepared_tiny, tmp_path):
    from seg2sat.evaluation.judge import JudgeConfig, load_or_train_judge

    prepared = shutil.copytree(prepared_tiny, tmp_path / "prepared", ignore=shutil.ignore_patterns("cache"))
    config = JudgeConfig(widths=(8, 16, 16), steps=10, batch_size=4)
    judge, trained = load_or_train_judge(prepared, config)
    folder = next((prepared / "cache").glob("judge-*"))
    reference = products(folder)
    flip(folder / "judge.safetensors")
    again, trained = load_or_train_judge(prepared, config)
    assert trained
    _survived("cache", differences(products(folder), reference))


# ---------------------------------------------------------------------------------------------
# Mosaic: block COGs, raw blocks, manifest rows, the manifest file, sidecars
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mosaic_ref(tmp_path_factory):
    from seg2sat.stages import mosaic

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        root = tmp_path_factory.mktemp("mosaic")
        lc = _map(root / "lc.tif", shape=(64, 128))
        args = [f"paths.root_dir={root}", f"input={lc}", *MOSAIC]
        mosaic.run(compose("mosaic", [*args, f"output_dir={root / 'ref'}"]))
    finally:
        torch.set_num_threads(n)
    return root / "ref", args


def _row_state(path, bid):
    with sqlite3.connect(path) as db:
        return db.execute("SELECT state FROM blocks WHERE id = ?", (bid,)).fetchone()[0]


def _garble_row(path):
    with sqlite3.connect(path) as db:
        db.execute("UPDATE blocks SET state = 'dXne', sha256 = 'ffff' WHERE id = 'r00000_c00001'")


def _garble_header(path):
    data = bytearray(path.read_bytes())
    data[:16] = b"not a database!!"
    path.write_bytes(bytes(data))


def _garble_pages(path):
    data = bytearray(path.read_bytes())
    for i in range(100, len(data), 97):  # every page damaged, the header left whole
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(("target", "damage", "redone"), [
    ("blocks/r00000_c00000.tif", truncate, {"composed": 1}),
    ("raw/r00000_c00001.tif", flip, {"generated": 1}),
    ("manifest.sqlite", _garble_row, {"composed": 1}),
    ("manifest.sqlite", _garble_header, {"adopted": 2}),
    ("manifest.sqlite", _garble_pages, {"adopted": 2}),
    ("blocks/r00000_c00000.tif.json", truncate, {"composed": 1}),
], ids=["block-cog", "raw-block", "manifest-row", "manifest-header", "manifest-pages", "block-sidecar"])
def test_damaged_mosaic_state_is_found_and_redone(mosaic_ref, target, damage, redone, tmp_path):
    """A damaged file is redone; a damaged manifest is set aside and the blocks its sidecars prove are taken back."""
    from seg2sat.stages import mosaic

    ref, args = mosaic_ref
    out = shutil.copytree(ref, tmp_path / "out")
    if target.endswith(".json"):  # a sidecar only matters once the manifest is gone too
        _garble_header(out / "manifest.sqlite")
    for wal in out.glob("manifest.sqlite-*"):
        wal.unlink()
    damage(out / target)
    result = mosaic.run(compose("mosaic", [*args, f"output_dir={out}"]))
    adopted = 2 - len(result.generated) if "adopted" in redone else None
    got = {"composed": len(result.composed), "generated": len(result.generated), "adopted": adopted}
    problems = [f"{k}: {got[k]} != {v}" for k, v in redone.items() if got[k] != v]
    problems += differences(products(out, ("manifest.sqlite.corrupt-.*", "run.json")),
                            products(ref, ("run.json",)))
    _survived("mosaic", problems)


# ---------------------------------------------------------------------------------------------
# Infer: sidecars (the completion mark) and outputs changed since
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("target", "damage"), [
    ("a.tif.json", truncate),
    ("a.tif.json", flip),
    ("a.tif.json", lambda p: p.write_text(p.read_text().replace("Aerial view", "Aerial viex"))),
    ("a.tif", flip),
    ("a_preview.png", truncate),
])
def test_damaged_infer_output_or_sidecar_is_generated_again(target, damage, tmp_path):
    from seg2sat.stages import infer

    maps = tmp_path / "maps"
    _map(maps / "a.tif")
    _map(maps / "b.tif", seed=1)
    cfg = compose("infer", [f"paths.root_dir={tmp_path}", f"input={maps}", f"output_dir={tmp_path / 'out'}", *FAST])
    infer.run(cfg)
    reference = products(tmp_path / "out", ("report.json",))
    damage(tmp_path / "out" / target)
    again = infer.run(cfg)
    problems = [] if [p.name for p in again.outputs] == ["a.tif"] else [f"redone: {again.outputs}"]
    _survived("infer", problems + differences(products(tmp_path / "out", ("report.json",)), reference))


def test_a_sidecar_that_is_not_json_counts_as_unfinished(tmp_path):
    from seg2sat.generation.files import is_finished, write_sidecar

    paths = {"tif": tmp_path / "a.tif", "json": tmp_path / "a.tif.json", "preview": tmp_path / "a_preview.png"}
    paths["tif"].write_bytes(b"II*\0")
    for text in ("", "{", "[1, 2]", '{"sha256": "abc"}', '{"sha256": {"tif": "00"}}', '{"sha256": {"nope": "00"}}'):
        paths["json"].write_text(text)
        assert not is_finished(paths), text
    paths["json"].write_text(json.dumps({"sha256": {"tif": hashlib.sha256(b"II*\0").hexdigest()}}))
    assert not is_finished(paths)  # checksums without the sidecar's own: not one we wrote
    write_sidecar(paths, {"prompt": "Aerial view"})
    assert is_finished(paths)
    paths["json"].write_text(paths["json"].read_text().replace("Aerial view", "Aerial viex"))
    assert not is_finished(paths)  # still JSON, changed all the same
