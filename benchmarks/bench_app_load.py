"""The app under load: latency and throughput for 1, 2 and 4 users sharing one model.

Each simulated user is a thread doing what the Draw page does when Generate is pressed, back to
back: take a place in the device queue (`seg2sat.serving.device_queue.DeviceQueue`, `app.max_concurrent`
slots), generate its own map with its own seed on the one shared pipeline (`app_support.generate`),
encode the PNG. Latency = waiting + generating + encoding, as the user sees it. The baseline is
one user, measured in the same run; ratios are against it. Peak memory (process RSS, sampled
every 20 ms) is compared for 4 users with 1 and with 2 slots.

    python benchmarks/bench_app_load.py                          # the demo model if built, else tiny-random
    python benchmarks/bench_app_load.py --model data/models/demo --size 256 --requests 3
    python benchmarks/bench_app_load.py --device cuda --model data/models/flair-sd21 --size 512
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import threading
import time
from pathlib import Path

import psutil
import torch

from seg2sat.config import compose
from seg2sat.generation.devices import resolve_device_dtype
from seg2sat.generation.models import load_model
from seg2sat.generation.sampling import Sampling
from seg2sat.serving import app_support as sup
from seg2sat.serving.device_queue import DeviceQueue


class PeakRSS:
    """Peak resident memory of this process while the block runs, in MB."""

    def __enter__(self) -> PeakRSS:
        self.proc, self.peak, self._stop = psutil.Process(), 0.0, threading.Event()
        self.start = self.proc.memory_info().rss / 2**20
        self._t = threading.Thread(target=self._watch, daemon=True)
        self._t.start()
        return self

    def _watch(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss / 2**20)
            time.sleep(0.02)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._t.join()


def run_users(model, users: int, requests: int, slots: int, size: int, settings: Sampling) -> dict:
    queue = DeviceQueue(slots)
    latencies: list[float] = []
    lock = threading.Lock()

    def user(u: int) -> None:
        for r in range(requests):
            codes = sup.template_codes(("fields", "village", "river")[(u + r) % 3], size)
            t0 = time.perf_counter()
            with queue.slot(poll_s=0.05):
                out = sup.generate(model, codes, "Aerial view of Gironde. fields", settings.replace(seed=100 * u + r))
            sup.png_bytes(out["image"])
            with lock:
                latencies.append(time.perf_counter() - t0)

    threads = [threading.Thread(target=user, args=(u,)) for u in range(users)]
    with PeakRSS() as mem:
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
    lat = sorted(latencies)
    return {"users": users, "slots": slots, "requests": len(lat), "wall_s": round(wall, 2),
            "images_per_min": round(60 * len(lat) / wall, 2),
            "p50_s": round(statistics.median(lat), 2), "p95_s": round(lat[min(len(lat) - 1, int(0.95 * len(lat)))], 2),
            "peak_rss_mb": round(mem.peak, 1), "rss_growth_mb": round(mem.peak - mem.start, 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_model = "data/models/demo" if Path("data/models/demo/seg2sat.json").exists() else "tiny-random"
    p.add_argument("--model", default=default_model)
    p.add_argument("--device", default="cpu")
    p.add_argument("--size", type=int, default=256, help="map side in pixels (the app's canvas is 256)")
    p.add_argument("--requests", type=int, default=3, help="requests per user")
    p.add_argument("--steps", type=int, default=20)
    args = p.parse_args()
    device, dtype = resolve_device_dtype(args.device, "auto")
    model = load_model(args.model, device=device, dtype=dtype)
    # The app's settings for this model (what the Draw page uses with untouched widgets).
    settings = Sampling.from_config(compose("app", [f"model_path={args.model}", f"sampling.steps={args.steps}"]).sampling, model)
    run_users(model, 1, 1, 1, args.size, settings)  # warm-up
    rows = [run_users(model, users, args.requests, 1, args.size, settings) for users in (1, 2, 4)]
    rows.append(run_users(model, 4, args.requests, 2, args.size, settings))
    base = rows[0]
    for row in rows:
        row["throughput_vs_1_user"] = round(row["images_per_min"] / base["images_per_min"], 2)
        row["p50_vs_1_user"] = round(row["p50_s"] / base["p50_s"], 2)
        print(json.dumps(row))
    record = {"benchmark": "app_load", "device": args.device if args.device != "cuda" else torch.cuda.get_device_name(),
              "threads": torch.get_num_threads(), "model": args.model, "map_px": args.size, "sampling": settings.kwargs(),
              "versions": {"torch": torch.__version__, "python": platform.python_version()}, "rows": rows,
              "note": "users are threads running the Draw page's generation path on one shared pipeline"}
    out = Path(__file__).parent / "results" / "app_load.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"record: {out}")


if __name__ == "__main__":
    main()
