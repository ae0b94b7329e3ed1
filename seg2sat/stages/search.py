"""`seg2sat search`: tiles of a prepared dataset by a sentence or by example (see seg2sat/search/).

1. find the prepared dataset;
2. load its search index from the cache, or build it (descriptions and text vectors; image
   features only for `example=` or `by_example=true`: a sentence query never trains the judge);
3. answer the query (`query=` a sentence, or `example=` a tile id) and print the hits.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from omegaconf import DictConfig

from seg2sat.errors import ConfigError
from seg2sat.evaluation.judge import JudgeConfig, find_prepared
from seg2sat.search.index import Hit, TileIndex, index_prepared

log = logging.getLogger(__name__)


@dataclass
class SearchResult:
    """The hits and the index they came from."""

    hits: list[Hit]
    index: TileIndex
    built_now: bool


def run(cfg: DictConfig) -> SearchResult:
    """Search; prints one line per hit: rank, score, tile id, description."""
    # 1. Check the inputs before anything loads.
    query, example = cfg.get("query"), cfg.get("example")
    if bool(query) == bool(example):
        raise ConfigError("search: give either query=\"a sentence\" or example=<tile id>, not "
                          + ("both" if query else "neither"))
    prepared = find_prepared(cfg.data_dir)
    by_example = bool(cfg.by_example) or bool(example)
    # 2. The index, cached per dataset, encoder and judge settings.
    index, built = index_prepared(prepared, str(cfg.encoder), by_example,
                                  JudgeConfig.from_config(cfg.judge) if by_example else None, bool(cfg.rebuild))
    log.info("search: %s index of %d tiles (%s)", "built" if built else "cached", len(index), index.key)
    # 3. Answer.
    hits = index.search_text(str(query), int(cfg.k)) if query else index.search_example(str(example), int(cfg.k))
    for h in hits:
        print(f"{h.rank:2d}  {h.score:.3f}  {h.id}  {h.description}")
    return SearchResult(hits, index, built)
