"""Tile search: recall@5 of two text encoders on the labelled query set, and query time at 10k tiles.

1. Recall@5 (seg2sat.recall_at_k) on the labelled scenes (12 kinds x 4 tiles + 24
   distractors) and the 24 French/English queries of seg2sat/search/queries.json,
   with the multilingual Universal Sentence Encoder (the default) and all-MiniLM-L6-v2 (English
   only) as the baseline; the ratio is multilingual / MiniLM.
2. Query time at 10,000 tiles: the index is the labelled scenes' real description vectors
   repeated with small noise to 10k rows (so scores have the real spread); a query is the
   sentence's encoding plus the scan (matrix-vector product + partial sort). The baseline scan is
   a full argsort of the 10k scores, in the same run.
3. Indexing cost: `describe` per tile at 64 px and 512 px (the embedding batch cost is reported
   by the build).
Writes benchmarks/results/search.json.
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import numpy as np

from seg2sat.atomic import write_json
from seg2sat.search.describe import describe
from seg2sat.search.encoders import text_encoder
from seg2sat.search.index import TileIndex, build_index
from seg2sat.search.scenes import benchmark_scenes, load_queries, recall_at_k

RESULTS = Path(__file__).parent / "results" / "search.json"


def timed(fn, repeat: int) -> float:
    """Median seconds of `repeat` calls."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiles", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    # 1. Recall@5 of both encoders.
    ids, maps, kinds = benchmark_scenes()
    queries = load_queries()
    recall, build_s, indexes = {}, {}, {}
    for name in ("use-multilingual", "minilm"):
        enc = text_encoder(name)
        enc.encode(["warm up"])
        t0 = time.perf_counter()
        indexes[name] = build_index(ids, maps, enc)
        build_s[name] = time.perf_counter() - t0
        r = recall_at_k(indexes[name], kinds, queries, k=5)
        recall[name] = {"recall_at_5": round(r["recall"], 3), **{f"recall_at_5_{k}": round(v, 3)
                                                                 for k, v in r["by_lang"].items()}}
    print(f"{'encoder':<18}{'recall@5':>10}{'fr':>8}{'en':>8}{'index 72 tiles s':>18}")
    for name, r in recall.items():
        print(f"{name:<18}{r['recall_at_5']:>10.3f}{r['recall_at_5_fr']:>8.3f}{r['recall_at_5_en']:>8.3f}"
              f"{build_s[name]:>18.2f}")
    ratio = recall["use-multilingual"]["recall_at_5"] / max(recall["minilm"]["recall_at_5"], 1e-9)
    print(f"multilingual / MiniLM recall@5: {ratio:.2f}x")

    # 2. Query time at 10k tiles.
    base = indexes["use-multilingual"]
    rng = np.random.default_rng(0)
    rows = base.text_vectors[rng.integers(len(base), size=args.tiles)]
    rows = rows + rng.normal(0, 0.02, rows.shape).astype(np.float32)
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    big = TileIndex([f"t{i}" for i in range(args.tiles)], ["-"] * args.tiles, rows, base.encoder)
    enc = text_encoder("use-multilingual")
    q = enc.encode(["clairière entourée de forêt"])[0]
    encode_s = timed(lambda: enc.encode(["clairière entourée de forêt"]), args.repeat)
    scan_s = timed(lambda: big._hits(big.text_vectors @ q, 5), args.repeat)
    full_sort_s = timed(lambda: np.argsort(-(big.text_vectors @ q))[:5], args.repeat)
    total_s = timed(lambda: big.search_text("clairière entourée de forêt", 5, enc), args.repeat)
    print(f"query at {args.tiles} tiles: {1000 * total_s:.1f} ms (encode {1000 * encode_s:.1f} ms, "
          f"scan {1000 * scan_s:.2f} ms; full argsort scan {1000 * full_sort_s:.2f} ms, "
          f"{full_sort_s / scan_s:.1f}x slower)")

    # 3. Describing a tile.
    big_map = np.kron(maps[0], np.ones((8, 8), np.uint8))
    d64, d512 = timed(lambda: describe(maps[0]), 10), timed(lambda: describe(big_map), 5)
    print(f"describe: {1000 * d64:.1f} ms per 64 px tile, {1000 * d512:.1f} ms per 512 px tile")

    import torch

    write_json(args.out, {
        "benchmark": "search", "device": "cpu", "cpu_count": __import__("os").cpu_count(),
        "versions": {"python": platform.python_version(), "numpy": np.__version__, "torch": torch.__version__},
        "settings": {"tiles": args.tiles, "repeat": args.repeat, "k": 5, "queries": len(queries),
                     "labelled_tiles": len(ids)},
        "recall": recall, "recall_ratio_multilingual_vs_minilm": round(ratio, 2),
        "index_build_seconds_72_tiles": {k: round(v, 2) for k, v in build_s.items()},
        "query_ms_at_10k": {"total": round(1000 * total_s, 2), "encode": round(1000 * encode_s, 2),
                            "scan": round(1000 * scan_s, 3), "scan_full_argsort": round(1000 * full_sort_s, 3)},
        "describe_ms": {"64px": round(1000 * d64, 2), "512px": round(1000 * d512, 2)},
    })
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
