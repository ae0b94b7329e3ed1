"""Country scale: planning time and memory, seams across blocks by method, throughput by workers.

1. plan: `seg2sat mosaic check=true` on the extent of one département (baseline) and of
   metropolitan France (EPSG:2154, 0.2 m, blocks of 8192 px + 512 halo), each in its own
   process so its peak RSS is its own; the ratio of seconds per block shows it scales linearly.
2. seams: the same land cover as a mosaic of 128 px blocks with no halo, a cropped halo and a
   cross-faded halo (`seam=crop|blend`), and as one whole-grid MultiDiffusion generation (the
   reference: no block border at all). `seam_ratio` at the block borders over the mean inside,
   and the same statistic at lines through the block middles. Model: the pretrained tiny base
   shipped in the package with a ControlNet copied from its UNet (it paints structure, so a
   seam shows; the random tiny model paints noise, where no method shows a seam).
3. throughput: a mosaic of 16 blocks on the random tiny model with `engine=local` (baseline)
   and `engine=ray` with 1 and 2 workers; km²/h and the speed-up of 2 workers over 1.

    python benchmarks/bench_scale.py                       # all three, CPU
    python benchmarks/bench_scale.py --parts plan
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
FRANCE = (99000, 6040000, 1243000, 7111000)  # metropolitan France, EPSG:2154 (Lambert-93)
GIRONDE = (350000, 6380000, 470000, 6480000)  # about one département (~12,000 km² box)


def _compose(out: Path, *overrides: str):
    from seg2sat.config import compose

    return compose("mosaic", [f"paths.root_dir={out.parent}", f"output_dir={out}", *overrides])


# ---------------------------------------------------------------------------------------------
# 1. Planning
# ---------------------------------------------------------------------------------------------


def plan_child(extent: str, out: str) -> dict:
    """Plan one extent (in this process) and report seconds, blocks and peak RSS."""
    import contextlib
    import io

    from seg2sat.stages import mosaic

    cfg = _compose(Path(out), "crs=EPSG:2154", f"extent=[{extent}]", "check=true", "model_path=none",
                   "block=8192", "halo=512", "sampling.tile=512", "sampling.overlap=128", "sampling.steps=20")
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        result = mosaic.run(cfg)
    seconds = time.perf_counter() - t0
    return {"extent": extent, "seconds": round(seconds, 2), "blocks": result.grid.rows * result.grid.cols,
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "manifest_mb": round((Path(out) / "manifest.sqlite").stat().st_size / 2**20, 1),
            "table": printed.getvalue().strip()}


def plan_part() -> dict:
    rows = {}
    for name, ext in (("departement", GIRONDE), ("france", FRANCE)):
        out = Path(tempfile.mkdtemp(prefix="plan-")) / "out"
        proc = subprocess.run([sys.executable, __file__, "--plan-child", ",".join(map(str, ext)), str(out)],
                              capture_output=True, text=True, check=True, cwd=REPO)
        rows[name] = json.loads(proc.stdout.strip().splitlines()[-1])
        shutil.rmtree(out.parent, ignore_errors=True)
        print(f"plan {name}: {rows[name]['blocks']} blocks in {rows[name]['seconds']} s, "
              f"peak RSS {rows[name]['peak_rss_mb']} MB, manifest {rows[name]['manifest_mb']} MB")
        print("   " + rows[name]["table"].replace("\n", "\n   "))
    d, f = rows["departement"], rows["france"]
    rows["france_over_departement"] = {
        "blocks": round(f["blocks"] / d["blocks"], 1), "seconds": round(f["seconds"] / d["seconds"], 1),
        "seconds_per_block": round((f["seconds"] / f["blocks"]) / (d["seconds"] / d["blocks"]), 2),
        "peak_rss": round(f["peak_rss_mb"] / d["peak_rss_mb"], 2)}
    print("france / département:", rows["france_over_departement"])
    return rows


# ---------------------------------------------------------------------------------------------
# 2. Seams
# ---------------------------------------------------------------------------------------------


def seams_part(side: int, steps: int) -> dict:
    import rasterio
    import torch
    from affine import Affine

    from seg2sat.data.synthetic import scene_codes
    from seg2sat.generation.models import EMBEDDED_TINY_BASE, load_pipeline_from_base
    from seg2sat.generation.tiling import generate_image
    from seg2sat.generation.windows import seam_ratio
    from seg2sat.geo.geotiff import write_geotiff
    from seg2sat.geo.raster import FLAIR_CRS
    from seg2sat.stages import mosaic

    torch.set_num_threads(1)  # this benchmark process only: 2 threads spin on 2 shared cores
    pipe = load_pipeline_from_base(EMBEDDED_TINY_BASE)
    work = Path(tempfile.mkdtemp(prefix="seams-"))
    codes = scene_codes(side, np.random.default_rng(0)).astype(np.uint8)
    # top-left on the lattice of 128 px blocks: the mosaic grid is the map's own grid
    lc = write_geotiff(work / "lc.tif", codes[None], FLAIR_CRS, Affine(0.2, 0, 128 * 0.2 * 40, 0, -0.2, 128 * 0.2 * 900))
    block, prompt = 128, "Aerial view of France"
    common = dict(steps=steps, guidance_scale=1.0, tile=64, overlap=16, batch_size=8)

    def measure(img: np.ndarray) -> dict:
        return {"border": round(seam_ratio(img, block), 3), "mid": round(seam_ratio(img[block // 2:, block // 2:], block), 3)}

    t0 = time.perf_counter()
    whole = generate_image(pipe, codes, prompt, **common)
    rows = {"whole_grid": {**measure(whole), "seconds": round(time.perf_counter() - t0, 1)}}
    for name, halo, seam in (("no_halo", 0, "crop"), ("crop_64", 64, "crop"), ("crop_128", 128, "crop"),
                             ("blend_64", 64, "blend"), ("blend_128", 128, "blend")):
        cfg = _compose(work / name, f"input={lc}", "model_path=tiny-random", f"sampling.steps={steps}", "sampling.guidance_scale=1.0",
                       "sampling.batch_size=8", f"block={block}", f"halo={halo}", f"seam={seam}", f"prompt.text={prompt}")
        t0 = time.perf_counter()
        result = mosaic.run(cfg, pipe)
        with rasterio.open(result.vrt) as src:
            img = np.moveaxis(src.read(), 0, -1)
        rows[name] = {**measure(img), "seconds": round(time.perf_counter() - t0, 1)}
        rows[name]["max_abs_diff_vs_whole"] = int(np.abs(img.astype(int) - whole.astype(int)).max())
    for name, r in rows.items():
        print(f"seams {name:<10} border {r['border']:.3f}  mid {r['mid']:.3f}  "
              f"border/whole-grid border {r['border'] / rows['whole_grid']['border']:.2f}x  ({r['seconds']} s)")
    shutil.rmtree(work, ignore_errors=True)
    return {"side": side, "block": block, "tile": 64, "overlap": 16, "steps": steps, "model": "embedded tiny base + "
            "ControlNet from its UNet", "rows": rows}


# ---------------------------------------------------------------------------------------------
# 3. Throughput
# ---------------------------------------------------------------------------------------------


def throughput_part(side: int, steps: int) -> dict:
    import os

    from affine import Affine

    from seg2sat.data.synthetic import scene_codes
    from seg2sat.geo.geotiff import write_geotiff
    from seg2sat.geo.raster import FLAIR_CRS

    work = Path(tempfile.mkdtemp(prefix="tput-"))
    codes = scene_codes(side, np.random.default_rng(1)).astype(np.uint8)
    lc = write_geotiff(work / "lc.tif", codes[None], FLAIR_CRS, Affine(0.2, 0, 128 * 0.2 * 40, 0, -0.2, 128 * 0.2 * 900))
    common = [f"input={lc}", "model_path=tiny-random", f"sampling.steps={steps}", "sampling.guidance_scale=1.0", "sampling.batch_size=8",
              "block=128", "halo=64", "prompt.text=Aerial view"]
    rows = {}
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # as Ray gives each 1-CPU actor
    ray_temp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")
    for name, extra in (("local", ["engine=local"]), ("ray_1", ["engine=ray", "ray.workers=1", "ray.num_cpus=2",
                                                                f"ray.temp_dir={ray_temp}"]),
                        ("ray_2", ["engine=ray", "ray.workers=2", "ray.num_cpus=2", f"ray.temp_dir={ray_temp}"])):
        out = work / name
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "seg2sat.cli", "mosaic", f"paths.root_dir={work}",
                        f"output_dir={out}", *common, *extra], check=True, env=env, cwd=REPO, capture_output=True)
        wall = time.perf_counter() - t0
        record = json.loads((out / "run.json").read_text())
        km2 = record["counts"]["done"] * (128 * 0.2) ** 2 / 1e6
        rows[name] = {"wall_s": round(wall, 1), "run_s": record["seconds"], "blocks": record["counts"]["done"],
                      "km2_per_h": round(km2 / (record["seconds"] / 3600), 4)}
        print(f"throughput {name:<6} {rows[name]}")
    rows["ray_2_over_ray_1"] = round(rows["ray_1"]["run_s"] / rows["ray_2"]["run_s"], 2)
    rows["ray_1_over_local"] = round(rows["local"]["run_s"] / rows["ray_1"]["run_s"], 2)
    print(f"throughput: 2 workers {rows['ray_2_over_ray_1']}x 1 worker; 1 Ray worker {rows['ray_1_over_local']}x local")
    shutil.rmtree(work, ignore_errors=True)
    shutil.rmtree(ray_temp, ignore_errors=True)
    return {"side": side, "steps": steps, "block": 128, "halo": 64, "tile": 64, "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", default="plan,seams,throughput")
    parser.add_argument("--seam-side", type=int, default=384)
    parser.add_argument("--seam-steps", type=int, default=4)
    parser.add_argument("--tput-side", type=int, default=512)
    parser.add_argument("--tput-steps", type=int, default=2)
    parser.add_argument("--json", default=str(REPO / "benchmarks" / "results" / "scale.json"))
    parser.add_argument("--plan-child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.plan_child:
        print(json.dumps(plan_child(*args.plan_child)))
        return
    import os

    import torch

    from seg2sat.generation.files import versions as _versions

    record = {"device": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
                        f"cuda={torch.cuda.is_available()}", "versions": _versions(),
              "date": time.strftime("%Y-%m-%d %H:%M:%S"), "load_average_at_start": os.getloadavg()}
    parts = args.parts.split(",")
    if "plan" in parts:
        record["plan"] = plan_part()
    if "seams" in parts:
        record["seams"] = seams_part(args.seam_side, args.seam_steps)
    if "throughput" in parts:
        import importlib.util

        if importlib.util.find_spec("ray") is None:
            print("throughput: skipped (the ray extra is not installed)")
        else:
            record["throughput"] = throughput_part(args.tput_side, args.tput_steps)
    out = Path(args.json)
    if out.exists():  # keep the parts this run did not measure
        old = json.loads(out.read_text())
        record = {**old, **record}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"-> {out}")


if __name__ == "__main__":
    main()
