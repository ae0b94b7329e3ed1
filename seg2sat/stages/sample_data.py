"""`seg2sat sample-data`: write the synthetic FLAIR-layout dataset."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from seg2sat.atomic import write_json
from seg2sat.data.flair import METADATA_NAME
from seg2sat.data.synthetic import Look, generate

log = logging.getLogger(__name__)


@dataclass
class SampleDataResult:
    """Where the sample data is and how much was (re)written."""

    root: Path
    n_tiles: int
    n_written: int


def looks_of(cfg: DictConfig) -> dict[str, Look]:
    """The per-domain looks of `cfg.looks` (`{D013_2020: {cast: [1.1, 1.0, 0.9], season: autumn}}`)."""
    if not cfg.get("looks"):  # null (the default) or {}: every domain in the demo's look
        return {}
    looks = OmegaConf.to_container(cfg.looks, resolve=True)
    return {str(domain): Look.from_config(str(domain), settings) for domain, settings in looks.items()}  # type: ignore[union-attr]


def run(cfg: DictConfig) -> SampleDataResult:
    """Generate (or complete) the sample dataset; existing complete tiles are kept."""
    root = Path(cfg.output_dir)
    looks = looks_of(cfg)  # checked before anything is written
    bar = tqdm(total=len(cfg.domains) * cfg.tiles_per_domain, desc="sample-data", unit="tile")

    def progress(done: int, total: int) -> None:
        bar.update(done - bar.n)

    tiles, written = generate(root, list(cfg.domains), int(cfg.tiles_per_domain), int(cfg.size),
                              int(cfg.seed), progress, looks=looks)
    bar.close()
    # Metadata last: it is small and rewritten whole, atomically.
    write_json(root / METADATA_NAME, {f"IMG_{t.id}": t.meta for t in tiles})
    log.info("sample-data: %d tiles in %s (%d written)", len(tiles), root, written)
    return SampleDataResult(root=root, n_tiles=len(tiles), n_written=written)
