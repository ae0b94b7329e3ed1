"""Tiled inference: windows/s and peak memory at 1x, 4x and 16x the tile area; batched vs one window.

Each size runs in its own process (so peak RSS is that size's), generating a random land-cover
map with overlapping windows fused at every step and writing the GeoTIFF row by row. Targets:
peak memory flat within 20% across sizes, time about linear in the number of windows. The
second table runs the same raster with `batch_size` windows per model call against one window
per call (the loop a naive implementation writes), in the same run.

    python benchmarks/bench_infer.py                                    # tiny preset, CPU
    python benchmarks/bench_infer.py --preset sd21_base_random --dtype float16   # SD-2.1-base size, GPU
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from affine import Affine
from rasterio.windows import Window

from seg2sat.data.synthetic import scene_codes
from seg2sat.models import TINY_PRESET, TINY_RESOLUTION
from seg2sat.raster import FLAIR_CRS, open_geotiff_writer
from seg2sat.tiling import generate_tiled


def build_pipe(preset: str, device: str, dtype: torch.dtype):
    from seg2sat.models import (
        _pipeline,
        build_sd21_base_random_components,
        build_tiny_components,
        controlnet_from_unet,
    )

    parts = build_tiny_components(0) if preset == TINY_PRESET else build_sd21_base_random_components(0)
    pipe = _pipeline(parts, controlnet_from_unet(parts["unet"], parts["vae"]), "unipc")
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device=device, dtype=dtype)


def one(args: argparse.Namespace) -> dict:
    """Generate one raster of `args.scale` x the tile area; report time and peak memory."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = getattr(torch, args.dtype)
    pipe = build_pipe(args.preset, device, dtype)
    tile = args.tile
    side = tile * int(round(args.scale ** 0.5))
    codes = scene_codes(side, np.random.default_rng(0))
    out = Path(tempfile.mkdtemp()) / "out.tif"
    # warm-up (kernel selection, allocator) so the first size is not charged for it
    generate_tiled(pipe, codes[:tile, :tile], "warm up", lambda r, rgb: None, steps=1, tile=tile, overlap=0,
                   batch_size=1, guidance_scale=args.guidance)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    with open_geotiff_writer(out, side, side, 3, "uint8", FLAIR_CRS, Affine(0.2, 0, 0, 0, -0.2, 0)) as writer:
        def write(row0: int, rgb: np.ndarray) -> None:
            writer.write(np.moveaxis(rgb, -1, 0), Window(0, row0, side, rgb.shape[0]))

        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        res = generate_tiled(pipe, codes, "Aerial view of Gironde. deciduous, water", write, steps=args.steps,
                             guidance_scale=args.guidance, tile=tile, overlap=tile // 4, batch_size=args.batch_size,
                             seed=0)
        if device == "cuda":
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
    return {"scale": args.scale, "side": side, "windows": res.windows, "seconds": dt,
            "windows_per_s": res.windows * args.steps / dt, "images_per_s_equiv": res.windows / dt,
            "rss_before_mb": rss0, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else None,
            "batch_size": args.batch_size}


def child(args: argparse.Namespace, scale: int, batch_size: int) -> dict:
    cmd = [sys.executable, __file__, "--one", "--scale", str(scale), "--batch-size", str(batch_size),
           "--preset", args.preset, "--tile", str(args.tile), "--steps", str(args.steps), "--dtype", args.dtype,
           "--guidance", str(args.guidance)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", choices=[TINY_PRESET, "sd21_base_random"], default=TINY_PRESET)
    ap.add_argument("--tile", type=int, default=None, help="default 64 (tiny), 512 (sd21)")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--guidance", type=float, default=7.5)
    ap.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    ap.add_argument("--scales", default="1,4,16")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--scale", type=int, default=1, help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.tile = args.tile or (TINY_RESOLUTION if args.preset == TINY_PRESET else 512)
    if args.one:
        print(json.dumps(one(args)))
        return

    scales = [int(s) for s in args.scales.split(",")]
    rows = [child(args, s, args.batch_size) for s in scales]
    mem_key = "peak_gpu_mb" if rows[0]["peak_gpu_mb"] is not None else "peak_rss_mb"
    print(f"preset {args.preset}, tile {args.tile}, {args.steps} steps, batch {args.batch_size}, {args.dtype}\n")
    print(f"{'area':>5} {'pixels':>11} {'windows':>8} {'s':>8} {'win-steps/s':>12} {'s/window':>9} "
          f"{'peak RSS MB':>12} {'peak GPU MB':>12}")
    for r in rows:
        gpu = f"{r['peak_gpu_mb']:.0f}" if r["peak_gpu_mb"] is not None else "-"
        print(f"{r['scale']:>4}x {r['side']:>5}x{r['side']:<5} {r['windows']:>8} {r['seconds']:>8.2f} "
              f"{r['windows_per_s']:>12.2f} {r['seconds'] / r['windows']:>9.3f} {r['peak_rss_mb']:>12.0f} {gpu:>12}")
    full = [r for r in rows if r["windows"] >= args.batch_size] or rows  # 1x has a single window
    mem = [r[mem_key] for r in full]
    per_window = [r["seconds"] / r["windows"] for r in full]
    sizes = ", ".join(f"{r['scale']}x" for r in full)
    print(f"\nmemory ({mem_key}) over sizes with full batches ({sizes}): "
          f"largest/smallest {max(mem) / min(mem):.2f}x (target <= 1.20x); "
          f"time per window largest/smallest: {per_window[-1] / per_window[0]:.2f}x (linear = 1.00x)")

    mid = scales[min(1, len(scales) - 1)]
    single = child(args, mid, 1)
    batched = next(r for r in rows if r["scale"] == mid)
    print(f"\n{mid}x area: one window per call {single['windows_per_s']:.2f} win-steps/s, "
          f"batch {args.batch_size} {batched['windows_per_s']:.2f} win-steps/s -> "
          f"{batched['windows_per_s'] / single['windows_per_s']:.2f}x")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "single": single, "preset": args.preset,
                                         "device": torch.cuda.get_device_name() if torch.cuda.is_available()
                                         else "cpu"}, indent=1))


if __name__ == "__main__":
    main()
