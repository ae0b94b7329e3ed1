"""The re-segmentation judge and tile search on 64 px and 512 px tiles: cost per step, time to an answer.

1. Judge step time (forward + backward + AdamW at batch 16) on 64 px and 512 px tiles, trained on
   fixed-size crops (`crop_size=64`, the default) against the whole-tile training of before
   (`crop_size` = the tile side), in the same run. The ratio crop/whole at 512 px is the speed-up;
   the crop step at 512 px over the step at 64 px should be ~1 (cost set by the crop, not the tile).
2. `seg2sat search query=...` on a prepared set of 512 px tiles (synthetic FLAIR layout, made
   here), as a user runs it: the cold query (index built: descriptions + the sentence encoder)
   and the warm one (cached index), each a whole process; and `example=` (the judge trains once,
   on crops).
Writes benchmarks/results/judge.json.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from seg2sat.atomic import write_json
from seg2sat.evaluation.judge import JudgeConfig, train_judge

RESULTS = Path(__file__).parent / "results" / "judge.json"


def step_seconds(size: int, crop: int, steps: int) -> float:
    """Median seconds per judge step on (8, size, size) random tiles."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (8, size, size, 3), dtype=np.uint8)
    codes = rng.integers(1, 20, (8, size, size), dtype=np.uint8)
    times: list[float] = []
    last = [time.perf_counter()]

    def tick(step: int, total: int, loss: float) -> None:
        now = time.perf_counter()
        times.append(now - last[0])
        last[0] = now

    train_judge(images, codes, JudgeConfig(steps=steps, crop_size=crop), progress=tick)
    return float(np.median(times[2:]))  # the first steps warm up the allocator


def cli(*args: str, cwd: Path) -> float:
    """Seconds of one `seg2sat ...` process (as a user runs it)."""
    env = {**os.environ, "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1"}
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "seg2sat.cli", *args], cwd=cwd, env=env, check=True,
                   capture_output=True, text=True)
    return time.perf_counter() - t0


def search_512(tiles: int) -> dict[str, float]:
    """A prepared set of 512 px tiles, then a sentence query (cold, warm) and a query by example."""
    work = Path(tempfile.mkdtemp(prefix="judge-bench-"))
    paths = [f"paths.root_dir={work}"]
    per_domain = max(1, tiles // 2)
    cli("sample-data", *paths, "size=512", f"tiles_per_domain={per_domain}", "domains=[D064_2021,D033_2020]", cwd=work)
    cli("prepare", *paths, cwd=work)
    query = ["search", *paths, "query=a road crossing farmland"]
    out = {"tiles": 2 * per_domain, "query_cold_s": cli(*query, cwd=work), "query_warm_s": cli(*query, cwd=work)}
    out["example_s"] = cli("search", *paths, "example=010000", cwd=work)
    return {k: round(v, 2) for k, v in out.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--tiles", type=int, default=8, help="512 px tiles in the search set")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    # 1. Judge steps: crops against whole tiles, at 64 and 512 px.
    steps = {f"{size}px_{mode}": round(step_seconds(size, crop, args.steps), 4)
             for size in (64, 512) for mode, crop in (("crop64", 64), ("whole", size))}
    ratios = {"whole_over_crop_512px": round(steps["512px_whole"] / steps["512px_crop64"], 1),
              "crop_512px_over_64px": round(steps["512px_crop64"] / steps["64px_crop64"], 2)}
    print(f"judge step (s): {steps}; {ratios}")
    # 2. Search on 512 px tiles, whole processes.
    search = search_512(args.tiles)
    print(f"search on 512 px tiles (s): {search}")
    write_json(args.out, {"benchmark": "judge", "judge_step_seconds": steps, "ratios": ratios,
                          "search_512px": search, "threads": torch.get_num_threads(),
                          "machine": platform.machine(), "cpu_count": os.cpu_count(),
                          "date": time.strftime("%Y-%m-%d")})


if __name__ == "__main__":
    main()
