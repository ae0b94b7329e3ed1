"""`prepare` at scale: tiles/s on N cores and the cost of a rerun with nothing to do.

Writes a synthetic FLAIR-1 tree of small tiles (default 20,000 x 64 px, 4 domains), then runs
in the same process, on the same tree and the same cores:
- the previous implementation (`git show <rev>:seg2sat/stages/prepare.py`, one JSON per tile,
  one future per tile, every record re-read by every run), and
- the current one (chunked submission, records appended to shards, compacted once, a rerun
  that finds nothing changed rewrites nothing),
each a full run then a rerun with nothing to do; discovery (listing the tree) is timed alone
too, since both pay it. Prints the ratios and writes benchmarks/results/prepare.json.

    python benchmarks/bench_prepare.py                      # 20k tiles, 2 workers (~5 min here)
    python benchmarks/bench_prepare.py --tiles 2000 --old-rev none
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine

from seg2sat.config import compose
from seg2sat.data.flair import METADATA_NAME
from seg2sat.data.tiles import discover
from seg2sat.stages import prepare

REPO = Path(__file__).resolve().parent.parent
DOMAINS = {"D064_2021": (407000.0, 6260000.0), "D033_2020": (420000.0, 6420000.0),
           "D075_2019": (651000.0, 6862000.0), "D013_2020": (893000.0, 6247000.0)}


def _write_tile(args: tuple[Path, str, str, float, float, int, int]) -> None:
    root, domain, tid, x0, y0, size, seed = args
    rng = np.random.default_rng(seed)
    # blocky codes (a few classes per tile, like a real mask) and a noisy 5-band image
    codes = np.repeat(np.repeat(rng.integers(1, 20, (4, 4), dtype=np.uint8), size // 4, 0), size // 4, 1)
    img = rng.integers(0, 255, (5, size, size), dtype=np.uint8)
    t = Affine(0.2, 0, x0, 0, -0.2, y0)
    for kind, folder, array in (("IMG", "img", img), ("MSK", "msk", codes[None])):
        tree = "flair_aerial_train" if kind == "IMG" else "flair_labels_train"
        path = root / tree / domain / "Z1_UA" / folder / f"{kind}_{tid}.tif"
        path.parent.mkdir(parents=True, exist_ok=True)
        with rasterio.open(path, "w", driver="GTiff", width=size, height=size, count=array.shape[0],
                           dtype="uint8", crs="EPSG:2154", transform=t) as dst:
            dst.write(array)


def make_tree(root: Path, n: int, size: int, workers: int) -> float:
    """A FLAIR-1 tree of `n` tiles; returns the seconds it took."""
    t0 = time.perf_counter()
    jobs, meta = [], {}
    names = list(DOMAINS)
    for i in range(n):
        domain = names[i % len(names)]
        x0, y0 = DOMAINS[domain]
        k = i // len(names)
        tid = f"{i:06d}"
        jobs.append((root, domain, tid, x0 + (k % 100) * size * 0.2, y0 - (k // 100) * size * 0.2, size, i))
        meta[f"IMG_{tid}"] = {"domain": domain, "zone": "Z1_UA", "date": "2021-06-01"}
    with ProcessPoolExecutor(max_workers=workers) as pool:
        list(pool.map(_write_tile, jobs, chunksize=256))
    (root / METADATA_NAME).write_text(json.dumps(meta))
    return time.perf_counter() - t0


def load_old(rev: str, where: Path) -> object | None:
    """The prepare module of git revision `rev`, importable in worker processes; None if absent."""
    try:
        src = subprocess.run(["git", "-C", str(REPO), "show", f"{rev}:seg2sat/stages/prepare.py"],
                             check=True, capture_output=True, text=True).stdout
    except (subprocess.CalledProcessError, FileNotFoundError):
        return None
    if "records/*.jsonl" in src:
        return None  # that revision already has the new implementation
    (where / "_old_prepare.py").write_text(src)
    sys.path.insert(0, str(where))
    return importlib.import_module("_old_prepare")


def timed(fn, *args) -> tuple[float, object]:
    t0 = time.perf_counter()
    result = fn(*args)
    return time.perf_counter() - t0, result


def measure(module, data_root: Path, out: Path, workers: int) -> dict[str, float]:
    cfg = compose("prepare", [f"data_root={data_root}", f"output_dir={out}", f"workers={workers}",
                              f"paths.root_dir={out.parent}"])
    full, res = timed(module.run, cfg)
    rerun, again = timed(module.run, cfg)
    assert res.n_done == res.n_tiles and again.n_done == 0, (res, again)
    return {"full_s": round(full, 2), "tiles_per_s": round(res.n_tiles / full, 1), "rerun_s": round(rerun, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiles", type=int, default=20000)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--old-rev", default="HEAD", help="git revision of the old prepare ('none' to skip)")
    parser.add_argument("--dir", type=Path, default=None, help="work folder (default: a temp folder, removed)")
    args = parser.parse_args()

    work = Path(args.dir or tempfile.mkdtemp(prefix="bench_prepare_"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        data_root = work / "flair"
        gen_s = make_tree(data_root, args.tiles, args.size, args.workers) if not data_root.exists() else 0.0
        discover_s, found = timed(discover, data_root)
        figures: dict[str, object] = {"generate_s": round(gen_s, 1), "discover_s": round(discover_s, 3),
                                      "n_tiles": len(found.tiles)}
        old = None if args.old_rev == "none" else load_old(args.old_rev, work)
        if old is not None:
            figures["old"] = measure(old, data_root, work / "prepared_old", args.workers)
            print("old:", json.dumps(figures["old"]))
        figures["new"] = measure(prepare, data_root, work / "prepared_new", args.workers)
        print("new:", json.dumps(figures["new"]))
        if old is not None:
            figures["ratio_tiles_per_s"] = round(figures["new"]["tiles_per_s"] / figures["old"]["tiles_per_s"], 2)
            figures["ratio_rerun_speedup"] = round(figures["old"]["rerun_s"] / figures["new"]["rerun_s"], 1)
            a = (work / "prepared_old" / "manifest.jsonl").read_text().splitlines()
            b = (work / "prepared_new" / "manifest.jsonl").read_text().splitlines()
            same = [json.loads(x)["caption"] for x in a] == [json.loads(x)["caption"] for x in b]
            figures["same_captions_as_old"] = same
            print(f"tiles/s new/old: {figures['ratio_tiles_per_s']}x; rerun old/new: "
                  f"{figures['ratio_rerun_speedup']}x faster; same captions: {same}")
        import rasterio as rio

        record = {
            "benchmark": "bench_prepare",
            "device": {"cpu_count": os.cpu_count(), "machine": platform.machine(), "python": platform.python_version()},
            "versions": {"rasterio": rio.__version__, "numpy": np.__version__},
            "settings": {"tiles": args.tiles, "size": args.size, "workers": args.workers, "old_rev": args.old_rev},
            "figures": figures,
            "date": time.strftime("%Y-%m-%d"),
        }
        out = Path(__file__).parent / "results" / "prepare.json"
        out.parent.mkdir(exist_ok=True)
        out.write_text(json.dumps(record, indent=2) + "\n")
        print(f"wrote {out}")
    finally:
        if args.dir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
