"""A prepared dataset from FLAIR tiles: colour hints, RGB targets, captions, manifest, footprints.

Layout written (docs/data.md):
    hints/<id>.png  images/<id>.png  [valid/<id>.png]    per tile, written before its record
    records/*.jsonl      one line per finished tile, appended by the worker that made it; a
                         tile is done once its line is there (a half-written last line is not)
    manifest.jsonl  footprints.gpkg  summary.json  class_histogram.png  prepare_state.json

Built for 240k tiles: tiles go to all cores in chunks (a bounded number in flight, never 240k
futures), records are appended to a few shard files instead of one JSON per tile, the shards
are compacted into `records/records.jsonl` once per run, and a rerun with nothing to do only
lists the tree, reads that one file and finds the state unchanged (`prepare_state.json`).
The split is FLAIR-HUB's own (its split GeoPackage) or by FLAIR domain, so no area appears in both.
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from seg2sat import faults
from seg2sat.atomic import append_line, atomic_path, guard_writes, write_json, write_text
from seg2sat.data.flair import Discovery, FlairTile
from seg2sat.data.tiles import read_pair
from seg2sat.errors import DatasetError, Seg2SatError
from seg2sat.geo.places import place_for
from seg2sat.geo.raster import FLAIR_CRS
from seg2sat.hints import codes_to_hint
from seg2sat.labels import (
    CODES,
    IGNORE_CODE,
    MAX_CODE,
    NAMES,
    OTHER_CODE,
    PALETTE,
    class_shares,
    merge13,
)
from seg2sat.prompts import DEFAULT_TEMPLATE, caption_for

log = logging.getLogger(__name__)
SUBDIRS = ("hints", "images", "records", "valid")
SPLITS = ("train", "val", "test")
RECORDS = "records.jsonl"  # the compacted shard
STATE = "prepare_state.json"


@dataclass(frozen=True)
class PrepareOptions:
    """How each tile is converted (the `prepare` keys of the same names); part of the state key."""

    merge13: bool = False
    size: int | None = None
    template: str = DEFAULT_TEMPLATE
    min_share: float = 0.0
    season: bool = False
    on_error: str = "raise"


def split_domains(domains: list[str], val_domains: list[str] | None, val_fraction: float, seed: int) -> dict[str, str]:
    """Domain -> "train"/"val". Explicit `val_domains` win; else a seeded share of domains.

    With two or more domains each split gets at least one.
    """
    domains = sorted(set(domains))
    if val_domains:
        unknown = set(val_domains) - set(domains)
        if unknown:
            raise DatasetError(f"split.val_domains: {', '.join(sorted(unknown))} not in the data")
        val = set(val_domains)
    elif len(domains) < 2 or val_fraction <= 0:
        val = set()
    else:
        n_val = min(len(domains) - 1, max(1, round(val_fraction * len(domains))))
        order = np.random.default_rng(seed).permutation(len(domains))
        val = {domains[i] for i in order[:n_val]}
    return {d: ("val" if d in val else "train") for d in domains}


def _save_png(path: Path, array: np.ndarray) -> None:
    with atomic_path(path, needed=array.nbytes) as tmp:
        Image.fromarray(array).save(tmp, format="PNG")


def _resize(array: np.ndarray, size: int, nearest: bool) -> np.ndarray:
    import cv2

    interp = cv2.INTER_NEAREST if nearest else cv2.INTER_AREA
    return cv2.resize(array, (size, size), interpolation=interp)


def fill_ignored(codes: np.ndarray) -> np.ndarray:
    """`codes` with each ignored pixel (labels.IGNORE_CODE) given the code of its nearest kept pixel.

    An ignored pixel is one whose label the synthesis did not trust (seg2sat.synthesis.trust). It
    cannot stay IGNORE_CODE in a hint (a hint holds legend colours only: the ControlNet and the
    judge read it back to codes), and it must not become a made-up region of one fixed class (a
    black "other" blob where the map had none): it takes the class around it, the least
    surprising colour, and `valid/<id>.png` marks it 0 (nodata: out of the shares and counts). A
    tile with no kept pixel at all becomes OTHER_CODE, as nodata does.
    """
    ignored = codes == IGNORE_CODE
    if not ignored.any():
        return codes
    if ignored.all():
        return np.full_like(codes, OTHER_CODE)
    from scipy import ndimage

    nearest = ndimage.distance_transform_edt(ignored, return_distances=False, return_indices=True)
    return codes[tuple(nearest)]


def prepare_tile(tile: FlairTile, out: Path, opts: PrepareOptions) -> dict[str, Any]:
    """Convert one tile: write its hint, image (and valid mask) and return its record.

    Pixels that are nodata (FLAIR-HUB's "undefined") hold OTHER_CODE in the hint, as nodata
    does everywhere in the project, are left out of the shares and pixel counts, and are 0 in
    `valid/<id>.png` (written only for tiles that have some). Ignored pixels (a synthetic set's
    untrusted ones, see `fill_ignored`) are nodata too.
    """
    img, codes, valid = read_pair(tile)
    codes = fill_ignored(codes)
    if opts.merge13:
        codes = merge13(codes)
    rgb = img.rgb()
    if opts.size and opts.size != codes.shape[0]:
        rgb = _resize(rgb, opts.size, nearest=False)
        codes = _resize(codes, opts.size, nearest=True)
        if valid is not None:
            valid = _resize(valid.astype(np.uint8), opts.size, nearest=True).astype(bool)
    if valid is not None and valid.all():
        valid = None
    shares = class_shares(codes, valid)
    meta = {**tile.meta, "domain": tile.domain, "zone": tile.zone}
    place = place_for(meta, img.crs, img.transform, img.width, img.height)
    counted = codes[valid] if valid is not None else codes.ravel()
    record = {
        "id": tile.id,
        "image": f"images/{tile.id}.png",
        "hint": f"hints/{tile.id}.png",
        "caption": caption_for(shares, meta, template=opts.template, min_share=opts.min_share,
                               place=place, season=opts.season),
        "shares": shares,
        "domain": tile.domain,
        "zone": tile.zone,
        "date": tile.meta.get("date"),
        "crs": str(img.crs),
        "bounds": list(img.bounds),
        "width": int(codes.shape[1]),
        "height": int(codes.shape[0]),
        "source_img": str(tile.img),
        "source_msk": str(tile.msk),
        "pixels": np.bincount(counted, minlength=MAX_CODE + 1)[list(CODES)].tolist(),  # in CODES order
        "layout": tile.layout,
        "nodata_pixels": int(codes.size - counted.size),
        "valid": f"valid/{tile.id}.png" if valid is not None else None,
    }
    if tile.modalities:
        record["modalities"] = dict(tile.modalities)
    _save_png(out / record["hint"], codes_to_hint(codes, source=tile.msk))
    _save_png(out / record["image"], rgb)
    if valid is not None:
        _save_png(out / record["valid"], valid.astype(np.uint8) * 255)
    return record


def prepare_chunk(tiles: list[FlairTile], out: Path, opts: PrepareOptions) -> tuple[int, dict[str, str]]:
    """Convert tiles and append each finished tile's record to this chunk's own shard.

    One line per tile, written as soon as the tile's files are (whole, or cut off again on a
    failed write): a killed run loses at most the tile in progress. Returns (tiles done,
    {id: error} of tiles skipped by on_error).
    """
    import rasterio

    done, failures = 0, {}
    shard = out / "records" / f"part-{uuid.uuid4().hex}.jsonl"
    # GDAL lists a file's folder on open, looking for sidecars; FLAIR folders hold thousands of
    # tiles and have none, so skip that (and build the GDAL environment once per chunk).
    with rasterio.Env(GDAL_DISABLE_READDIR_ON_OPEN="EMPTY_DIR"), guard_writes(shard.parent), \
            shard.open("ab", buffering=0) as fh:
        for tile in tiles:
            try:
                record = prepare_tile(tile, out, opts)
            except Seg2SatError as exc:
                if opts.on_error != "skip":
                    raise
                failures[tile.id] = str(exc)
                continue
            append_line(fh, shard, (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8"))
            done += 1
            faults.progress("prepare.tile", done)
    if shard.stat().st_size == 0:
        shard.unlink()
    return done, failures


def chunks_of(todo: list[FlairTile], workers: int, chunk_size: int) -> list[list[FlairTile]]:
    """Chunks of at most `chunk_size` tiles, small enough that every worker gets several."""
    size = max(1, min(chunk_size, -(-len(todo) // max(1, 4 * workers))))
    return [todo[i:i + size] for i in range(0, len(todo), size)]


def run_tiles(todo: list[FlairTile], out: Path, opts: PrepareOptions, workers: int,
               chunk_size: int = 64) -> tuple[int, dict[str, str]]:
    """Convert tiles in chunks, in `workers` processes (in this one when workers is 0).

    At most 2 chunks per worker are in flight, so 240k tiles never make 240k futures. On an
    error the chunks already running finish (their tiles are kept), the rest are cancelled.
    """
    failures: dict[str, str] = {}
    done = 0
    chunks = chunks_of(todo, workers, chunk_size)
    bar = tqdm(total=len(todo), desc="prepare", unit="tile")

    def collect(result: tuple[int, dict[str, str]], n: int) -> None:
        nonlocal done
        done += result[0]
        failures.update(result[1])
        for tid, err in result[1].items():
            log.warning("prepare: skipped %s: %s", tid, err)
        bar.update(n)

    if workers > 0 and len(chunks) > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            pending = iter(chunks)
            running: dict[Future, int] = {}
            try:
                while True:
                    while len(running) < 2 * workers and (chunk := next(pending, None)) is not None:
                        running[pool.submit(prepare_chunk, chunk, out, opts)] = len(chunk)
                    if not running:
                        break
                    finished, _ = wait(running, return_when=FIRST_COMPLETED)
                    for fut in finished:
                        collect(fut.result(), running.pop(fut))
            except BaseException:
                pool.shutdown(wait=True, cancel_futures=True)
                raise
    else:
        for chunk in chunks:
            collect(prepare_chunk(chunk, out, opts), len(chunk))
    bar.close()
    return done, failures


def _read_shard(path: Path) -> Iterator[dict[str, Any]]:
    """Records of one shard; a half-written last line (a killed worker) or a damaged one is not a record."""
    with path.open("rb") as fh:
        for line in fh:
            if not line.endswith(b"\n"):
                break
            try:
                rec = json.loads(line.decode("utf-8"))
            except ValueError:  # not UTF-8, or not JSON
                continue
            if isinstance(rec, dict) and isinstance(rec.get("id"), str):
                yield rec


def load_records(out: Path) -> tuple[dict[str, dict[str, Any]], list[Path]]:
    """Every finished tile's record (id -> record) and the shard files that hold them.

    Per-tile `records/<id>.json` files of earlier versions are read too (and compacted away).
    """
    records: dict[str, dict[str, Any]] = {}
    folder = out / "records"
    shards = sorted(folder.glob("*.jsonl"), key=lambda p: (p.name != RECORDS, p.name))
    for shard in shards:
        for rec in _read_shard(shard):
            records[rec["id"]] = rec
    legacy = sorted(p for p in folder.glob("*.json") if not p.name.startswith("."))
    for path in legacy:
        try:
            rec = json.loads(path.read_text(encoding="utf-8"))
            records.setdefault(rec["id"], rec)
        except (OSError, ValueError, KeyError, TypeError):  # damaged: the tile is converted again
            continue
    return records, shards + legacy


def compact(out: Path, records: dict[str, dict[str, Any]], files: list[Path]) -> None:
    """All records into `records/records.jsonl` (atomically), then drop the merged shards."""
    target = out / "records" / RECORDS
    if files == [target]:
        return
    write_text(target, "".join(json.dumps(records[k], ensure_ascii=False) + "\n" for k in sorted(records)))
    for path in files:
        if path != target:
            path.unlink(missing_ok=True)


def fingerprint(tiles: list[FlairTile], splits: dict[str, str], opts: PrepareOptions, discovery: Discovery) -> str:
    """What the outputs depend on: tiles, their splits, the options and what discovery reported."""
    h = hashlib.sha256()
    for t in tiles:
        h.update(f"{t.id}\t{splits[t.id]}\t{t.img}\t{t.msk}\n".encode())
    h.update(json.dumps([asdict(opts), [str(p) for p in discovery.orphan_images + discovery.orphan_masks],
                         discovery.not_in_split], default=str).encode())
    return h.hexdigest()


def _write_footprints(path: Path, records: list[dict[str, Any]]) -> None:
    import geopandas as gpd
    from shapely.geometry import box

    frame = gpd.GeoDataFrame(
        {"id": [r["id"] for r in records], "domain": [r["domain"] for r in records],
         "zone": [r["zone"] for r in records], "split": [r["split"] for r in records]},
        geometry=[box(*r["bounds"]) for r in records],
        crs=records[0]["crs"] if records else FLAIR_CRS.to_string(),
    )
    with atomic_path(path) as tmp:
        frame.to_file(tmp, layer="tiles", driver="GPKG")


def _write_histogram(path: Path, pixels: np.ndarray) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = PALETTE[list(CODES)] / 255.0
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.bar(range(len(CODES)), pixels / max(1, pixels.sum()), color=colours, edgecolor="#333333", lw=0.4)
    ax.set_xticks(range(len(CODES)), NAMES, rotation=70, ha="right", fontsize=7)
    ax.set_ylabel("share of pixels")
    ax.set_title("Class histogram")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def write_outputs(out: Path, tiles: list[FlairTile], splits: dict[str, str], failures: dict[str, str],
                   discovery: Discovery, done: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Manifest, footprints, summary and histogram from the records of the current tiles."""
    records = []
    for tile in tiles:
        if tile.id in done:
            rec = dict(done[tile.id])
            rec["split"] = splits[tile.id]
            records.append(rec)
    write_text(out / "manifest.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    _write_footprints(out / "footprints.gpkg", records)
    pixels = np.sum([r["pixels"] for r in records], axis=0) if records else np.zeros(len(CODES), int)
    _write_histogram(out / "class_histogram.png", np.asarray(pixels))
    present = [s for s in SPLITS if s in ("train", "val") or any(r["split"] == s for r in records)]
    by_split = {s: sorted({r["domain"] for r in records if r["split"] == s}) for s in present}
    write_json(out / "summary.json", {
        "layout": discovery.layout,
        "n_tiles": len(records),
        "per_split": {s: sum(r["split"] == s for r in records) for s in present},
        "domains": by_split,
        "class_pixels": {NAMES[i]: int(p) for i, p in enumerate(pixels)},
        "nodata_pixels": int(sum(r.get("nodata_pixels", 0) for r in records)),
        "failed": failures,
        "orphan_images": [str(p) for p in discovery.orphan_images],
        "orphan_masks": [str(p) for p in discovery.orphan_masks],
        "not_in_split": discovery.not_in_split,
        "split_file": str(discovery.split_file) if discovery.split_file else None,
        "dates_file": str(discovery.dates_file) if discovery.dates_file else None,
    })
    return records
