"""`seg2sat prepare`: FLAIR tiles -> colour hints, RGB targets, captions, manifest, footprints.

Layout written (see docs/architecture.md):
    hints/<id>.png  images/<id>.png  records/<id>.json   per tile; the record is written last,
                                                         so its presence means "tile done"
    manifest.jsonl  footprints.gpkg  summary.json  class_histogram.png   rebuilt every run

Re-runs skip tiles that have a record; leftovers of a killed run (`.tmp-*`) are swept.
The train/validation split is by FLAIR domain, so no area appears in both.
"""

from __future__ import annotations

import json
import logging
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf
from PIL import Image
from tqdm.auto import tqdm

from seg2sat.atomic import atomic_path, sweep_tmp, write_json, write_text
from seg2sat.data.flair import Discovery, FlairTile, discover
from seg2sat.errors import DatasetError, Seg2SatError
from seg2sat.hints import codes_to_hint
from seg2sat.labels import CODES, MAX_CODE, NAMES, PALETTE, class_shares, merge13
from seg2sat.prompts import caption_for
from seg2sat.raster import read_flair_pair

log = logging.getLogger(__name__)
SUBDIRS = ("hints", "images", "records")


@dataclass
class PrepareResult:
    """What a prepare run did."""

    prepared_dir: Path
    manifest_path: Path
    n_tiles: int
    n_done: int
    n_skipped: int
    n_failed: int
    splits: dict[str, list[str]] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)


def split_domains(domains: list[str], val_domains: list[str] | None, val_fraction: float, seed: int) -> dict[str, str]:
    """Domain -> "train"/"val". Explicit `val_domains` win; else a seeded share of domains.

    With two or more domains each split gets at least one.
    """
    domains = sorted(set(domains))
    if val_domains:
        unknown = set(val_domains) - set(domains)
        if unknown:
            raise DatasetError(f"val_domains not in the data: {', '.join(sorted(unknown))}")
        val = set(val_domains)
    elif len(domains) < 2 or val_fraction <= 0:
        val = set()
    else:
        n_val = min(len(domains) - 1, max(1, round(val_fraction * len(domains))))
        order = np.random.default_rng(seed).permutation(len(domains))
        val = {domains[i] for i in order[:n_val]}
    return {d: ("val" if d in val else "train") for d in domains}


def _save_png(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        Image.fromarray(array).save(tmp, format="PNG")


def _resize(array: np.ndarray, size: int, nearest: bool) -> np.ndarray:
    import cv2

    interp = cv2.INTER_NEAREST if nearest else cv2.INTER_AREA
    return cv2.resize(array, (size, size), interpolation=interp)


def prepare_tile(tile: FlairTile, out: Path, opts: dict[str, Any]) -> dict[str, Any]:
    """Convert one tile; returns its record (also written to records/<id>.json, last)."""
    img, msk = read_flair_pair(tile.img, tile.msk)
    codes = msk.band(1)
    if opts["merge13"]:
        codes = merge13(codes)
    rgb = img.rgb()
    if opts["size"] and opts["size"] != codes.shape[0]:
        rgb = _resize(rgb, opts["size"], nearest=False)
        codes = _resize(codes, opts["size"], nearest=True)
    shares = class_shares(codes)
    meta = {**tile.meta, "domain": tile.domain, "zone": tile.zone}
    record = {
        "id": tile.id,
        "image": f"images/{tile.id}.png",
        "hint": f"hints/{tile.id}.png",
        "caption": caption_for(shares, meta, template=opts["template"], min_share=opts["min_share"],
                               season=opts["season"]),
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
        "pixels": np.bincount(codes.ravel(), minlength=MAX_CODE + 1)[list(CODES)].tolist(),  # in CODES order
    }
    _save_png(out / record["hint"], codes_to_hint(codes, source=tile.msk))
    _save_png(out / record["image"], rgb)
    write_json(out / "records" / f"{tile.id}.json", record)
    return record


def _options(cfg: DictConfig) -> dict[str, Any]:
    return {"merge13": bool(cfg.merge13), "size": cfg.size, "template": cfg.caption.template,
            "min_share": float(cfg.caption.min_share), "season": bool(cfg.caption.season)}


def _run_tiles(todo: list[FlairTile], out: Path, opts: dict[str, Any], workers: int,
               on_error: str) -> tuple[int, dict[str, str]]:
    """Convert tiles, in parallel processes when workers > 0."""
    failures: dict[str, str] = {}
    done = 0
    bar = tqdm(total=len(todo), desc="prepare", unit="tile")

    def fail(tile: FlairTile, exc: Exception) -> None:
        if on_error != "skip" or not isinstance(exc, Seg2SatError):
            raise exc
        failures[tile.id] = str(exc)
        log.warning("prepare: skipped %s: %s", tile.id, exc)

    if workers > 0 and len(todo) > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            futures = {pool.submit(prepare_tile, t, out, opts): t for t in todo}
            for fut in as_completed(futures):
                try:
                    fut.result()
                    done += 1
                except Exception as exc:  # noqa: BLE001 - re-raised unless skippable
                    for f in futures:
                        f.cancel()
                    fail(futures[fut], exc)
                bar.update()
    else:
        for tile in todo:
            try:
                prepare_tile(tile, out, opts)
                done += 1
            except Exception as exc:  # noqa: BLE001
                fail(tile, exc)
            bar.update()
    bar.close()
    return done, failures


def _write_footprints(path: Path, records: list[dict[str, Any]]) -> None:
    import geopandas as gpd
    from shapely.geometry import box

    frame = gpd.GeoDataFrame(
        {"id": [r["id"] for r in records], "domain": [r["domain"] for r in records],
         "zone": [r["zone"] for r in records], "split": [r["split"] for r in records]},
        geometry=[box(*r["bounds"]) for r in records],
        crs=records[0]["crs"] if records else "EPSG:2154",
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


def _write_outputs(out: Path, tiles: list[FlairTile], splits: dict[str, str], failures: dict[str, str],
                   discovery: Discovery) -> list[dict[str, Any]]:
    """Manifest, footprints, summary and histogram from the records of the current tiles."""
    records = []
    for tile in tiles:
        path = out / "records" / f"{tile.id}.json"
        if path.exists():
            rec = json.loads(path.read_text(encoding="utf-8"))
            rec["split"] = splits[tile.domain]
            records.append(rec)
    write_text(out / "manifest.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    _write_footprints(out / "footprints.gpkg", records)
    pixels = np.sum([r["pixels"] for r in records], axis=0) if records else np.zeros(len(CODES), int)
    _write_histogram(out / "class_histogram.png", np.asarray(pixels))
    by_split = {s: sorted({r["domain"] for r in records if r["split"] == s}) for s in ("train", "val")}
    write_json(out / "summary.json", {
        "n_tiles": len(records),
        "per_split": {s: sum(r["split"] == s for r in records) for s in ("train", "val")},
        "domains": by_split,
        "class_pixels": {NAMES[i]: int(p) for i, p in enumerate(pixels)},
        "failed": failures,
        "orphan_images": [str(p) for p in discovery.orphan_images],
        "orphan_masks": [str(p) for p in discovery.orphan_masks],
    })
    return records


def run(cfg: DictConfig) -> PrepareResult:
    """Prepare the dataset under `cfg.output_dir` from the FLAIR tree at `cfg.data_root`."""
    # 1. Find tiles and decide the split.
    out = Path(cfg.output_dir)
    discovery = discover(cfg.data_root)
    log.info("prepare: %s", discovery.summary())
    if discovery.orphan_images or discovery.orphan_masks:
        log.warning("prepare: unpaired files: %s", [str(p) for p in discovery.orphan_images + discovery.orphan_masks][:10])
    tiles = discovery.tiles[: cfg.limit] if cfg.limit else discovery.tiles
    missing = [t.img for t in tiles if not t.domain]
    if missing:
        raise DatasetError(f"{missing[0]}: no FLAIR domain in its path or metadata (needed for the split)")
    val_domains = list(cfg.split.val_domains) if cfg.split.val_domains else None
    splits = split_domains([t.domain for t in tiles], val_domains, float(cfg.split.val_fraction), int(cfg.seed))

    # 2. Sweep leftovers of killed runs, skip finished tiles.
    for sub in SUBDIRS:
        (out / sub).mkdir(parents=True, exist_ok=True)
        sweep_tmp(out / sub)
    sweep_tmp(out)
    todo = [t for t in tiles if cfg.overwrite or not (out / "records" / f"{t.id}.json").exists()]

    # 3. Convert, then rebuild manifest, footprints and summary.
    workers = int(cfg.workers) if cfg.workers is not None else min(4, os.cpu_count() or 1)
    done, failures = _run_tiles(todo, out, _options(cfg), workers, cfg.on_error)
    write_text(out / "prepare_config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    _write_outputs(out, tiles, splits, failures, discovery)
    by_split = {s: sorted(d for d, v in splits.items() if v == s) for s in ("train", "val")}
    log.info("prepare: %d converted, %d skipped, %d failed -> %s", done, len(tiles) - len(todo), len(failures), out)
    return PrepareResult(prepared_dir=out, manifest_path=out / "manifest.jsonl", n_tiles=len(tiles),
                         n_done=done, n_skipped=len(tiles) - len(todo), n_failed=len(failures),
                         splits=by_split, failures=failures)
