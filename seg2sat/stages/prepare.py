"""`seg2sat prepare`: FLAIR tiles -> colour hints, RGB targets, captions, manifest, footprints.

Reads FLAIR-1, FLAIR-2 and FLAIR-HUB trees (`seg2sat.data.tiles.discover`; FLAIR-HUB's COSIA
codes remapped to our legend, its "undefined" pixels nodata) into a prepared dataset
(`seg2sat.data.prepare` has the layout and how it scales). A rerun skips finished tiles and
sweeps what a killed run left.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from seg2sat.atomic import check_space, sweep_tmp, write_json, write_text
from seg2sat.data.flair import Discovery, FlairTile
from seg2sat.data.prepare import (
    SPLITS,
    STATE,
    SUBDIRS,
    PrepareOptions,
    compact,
    fingerprint,
    load_records,
    run_tiles,
    split_domains,
    write_outputs,
)
from seg2sat.data.tiles import discover
from seg2sat.errors import DatasetError
from seg2sat.prompts import DEFAULT_TEMPLATE

log = logging.getLogger(__name__)


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


def options(cfg: DictConfig) -> PrepareOptions:
    """The conversion settings of a `prepare` config."""
    return PrepareOptions(merge13=bool(cfg.merge13), size=cfg.size, template=str(cfg.caption.template or DEFAULT_TEMPLATE),
                          min_share=float(cfg.caption.min_share), season=bool(cfg.caption.season),
                          on_error=str(cfg.on_error))


def _split_cfg(cfg: DictConfig) -> dict[str, Any]:
    """The `split` settings; `split=split_2` is short for `split.column=split_2`."""
    s = cfg.split
    if isinstance(s, str):
        return {"column": s, "file": None, "val_domains": [], "val_fraction": 0.25}
    return {"column": str(s.get("column") or "split_1"), "file": s.get("file"),
            "val_domains": list(s.get("val_domains") or []), "val_fraction": float(s.get("val_fraction", 0.25))}


def _discover(cfg: DictConfig) -> Discovery:
    split = _split_cfg(cfg)
    hub = {"split_file": split["file"], "split_column": split["column"],
           "dates_file": cfg.dates.get("file"), "date_column": cfg.dates.get("column")}
    return discover(cfg.data_root, dataset=str(cfg.get("dataset") or "auto"), **hub)


def _splits(cfg: DictConfig, tiles: list[FlairTile]) -> dict[str, str]:
    """Tile id -> split: the dataset's own split file where it has one, else by domain."""
    split = _split_cfg(cfg)
    if tiles and all(t.split for t in tiles):
        if split["val_domains"]:
            log.warning("prepare: split.val_domains ignored: the dataset's split file decides")
        return {t.id: str(t.split) for t in tiles}
    missing = [t.img for t in tiles if not t.domain]
    if missing:
        raise DatasetError(f"{missing[0]}: no FLAIR domain in its path or metadata (needed for the split)")
    by_domain = split_domains([t.domain for t in tiles], split["val_domains"] or None, split["val_fraction"],
                              int(cfg.seed))
    return {t.id: by_domain[t.domain] for t in tiles}


def _write_all(cfg: DictConfig, out: Path, tiles: list[FlairTile], splits: dict[str, str], discovery: Discovery,
               failures: dict[str, str], converted: bool) -> None:
    """Merge the shards and rebuild manifest, footprints and summary, unless nothing changed."""
    key = fingerprint(tiles, splits, options(cfg), discovery)
    state_path = out / STATE
    try:  # a missing or damaged state means: rebuild the outputs
        state = json.loads(state_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        state = {}
    if converted or not isinstance(state, dict) or state.get("fingerprint") != key \
            or not (out / "manifest.jsonl").exists():
        done, files = load_records(out)
        compact(out, done, files)
        write_text(out / "prepare_config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
        write_outputs(out, tiles, splits, failures, discovery, done)
        write_json(state_path, {"fingerprint": key, "n_tiles": len(tiles), "n_records": len(done)}, durable=True)


def run(cfg: DictConfig) -> PrepareResult:
    """Prepare the dataset under `cfg.output_dir` from the FLAIR tree at `cfg.data_root`."""
    # 1. Find tiles and decide the split.
    out = Path(cfg.output_dir)
    discovery = _discover(cfg)
    log.info("prepare: %s", discovery.summary())
    if discovery.orphan_images or discovery.orphan_masks:
        log.warning("prepare: unpaired files: %s", [str(p) for p in discovery.orphan_images + discovery.orphan_masks][:10])
    tiles = discovery.tiles[: cfg.limit] if cfg.limit else discovery.tiles
    splits = _splits(cfg, tiles)
    # 2. A folder we can write; sweep leftovers of killed runs, skip finished tiles.
    check_space(out, 0)
    for sub in SUBDIRS:
        (out / sub).mkdir(parents=True, exist_ok=True)
        sweep_tmp(out / sub)
    sweep_tmp(out)
    done, _ = load_records(out)
    todo = [t for t in tiles if cfg.overwrite or t.id not in done]
    # 3. Convert, then merge the shards and rebuild the outputs.
    workers = int(cfg.workers) if cfg.workers is not None else (os.cpu_count() or 1)
    n_done, failures = run_tiles(todo, out, options(cfg), workers, int(cfg.get("chunk_size") or 64))
    _write_all(cfg, out, tiles, splits, discovery, failures, bool(todo))
    n_skipped = len(tiles) - len(todo)
    by_split = {s: sorted({t.domain for t in tiles if splits[t.id] == s}) for s in SPLITS}
    by_split = {s: v for s, v in by_split.items() if v or s in ("train", "val")}
    log.info("prepare: %d converted, %d skipped, %d failed -> %s", n_done, n_skipped, len(failures), out)
    return PrepareResult(prepared_dir=out, manifest_path=out / "manifest.jsonl", n_tiles=len(tiles),
                         n_done=n_done, n_skipped=n_skipped, n_failed=len(failures),
                         splits=by_split, failures=failures)
