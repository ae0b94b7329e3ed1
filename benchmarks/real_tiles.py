"""Real textures: the tiny model trained on crops of real FLAIR tiles, scored on another tile.

The three real tiles of `../shared/flair_samples` (512 px, 0.2 m, three departments) are cut
into 64 px crops written as a FLAIR tree (GeoTIFFs at their true Lambert-93 position). Two
tiles train, the third (D064_2021, whose classes all occur in the other two) is scored:
1. prepare the crops (validation split = the third tile's domain);
2. fine-tune the shipped tiny base on the training crops (`pretrain_tiny_base(init_dir=...)`):
   the synthetic base has never seen a real roof or tree;
3. train a ControlNet on them with the product's loop, export it;
4. `seg2sat evaluate` it: judge trained on the training crops, fidelity on the scored tile's crops.
Writes benchmarks/results/real_tiles.json and the evaluation grid (docs/fidelity_real_tiles.png
with `--grid`). Three tiles are little data: the figure says what this much data gives.

    python benchmarks/real_tiles.py --grid docs/fidelity_real_tiles.png
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from affine import Affine
from PIL import Image

from seg2sat.config import compose
from seg2sat.data.flair import METADATA_NAME
from seg2sat.generation.models import EMBEDDED_TINY_BASE
from seg2sat.geo.geotiff import write_geotiff
from seg2sat.geo.raster import FLAIR_CRS, FLAIR_RESOLUTION
from seg2sat.hints import hint_to_codes
from seg2sat.stages import evaluate, export, prepare
from seg2sat.training.loop import train
from seg2sat.training.tiny_base import PretrainSettings, pretrain_tiny_base

SCORED_DOMAIN = "D064_2021"


def write_crops(samples: Path, root: Path, size: int) -> int:
    """Every tile of `samples/tiles` as size x size crops in the official FLAIR layout."""
    metadata, n = {}, 0
    for meta_path in sorted((samples / "tiles").glob("META_*.json")):
        tid = meta_path.stem.split("_")[1]
        meta = json.loads(meta_path.read_text())
        rgb = np.asarray(Image.open(samples / "tiles" / f"IMG_{tid}.png").convert("RGB"))
        codes = hint_to_codes(np.asarray(Image.open(samples / "tiles" / f"MSK_{tid}.png").convert("RGB")))
        x0, y0 = meta["origin"]
        d, z = meta["domain"], meta["zone"]
        for r in range(0, rgb.shape[0] - size + 1, size):
            for c in range(0, rgb.shape[1] - size + 1, size):
                cid = f"{tid}{r // size:02d}{c // size:02d}"
                transform = Affine(FLAIR_RESOLUTION, 0, x0 + c * FLAIR_RESOLUTION, 0, -FLAIR_RESOLUTION,
                                   y0 - r * FLAIR_RESOLUTION)
                bands = np.concatenate([rgb[r:r + size, c:c + size].transpose(2, 0, 1),
                                        np.zeros((2, size, size), np.uint8)])  # NIR, elevation: not in the PNGs
                write_geotiff(root / "flair_aerial_train" / d / z / "img" / f"IMG_{cid}.tif", bands, FLAIR_CRS,
                              transform)
                write_geotiff(root / "flair_labels_train" / d / z / "msk" / f"MSK_{cid}.tif",
                              codes[r:r + size, c:c + size][None], FLAIR_CRS, transform)
                metadata[f"IMG_{cid}"] = {k: meta[k] for k in ("domain", "zone", "date", "time", "camera") if k in meta}
                n += 1
    (root / METADATA_NAME).write_text(json.dumps(metadata))
    return n


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--samples", default="../shared/flair_samples")
    p.add_argument("--work", default="data/real_tiles")
    p.add_argument("--vae-steps", type=int, default=1500)
    p.add_argument("--unet-steps", type=int, default=3000)
    p.add_argument("--controlnet-steps", type=int, default=3000)
    p.add_argument("--grid", default=None, help="copy the evaluation grid here")
    args = p.parse_args()
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    paths = [f"paths.data_dir={work}"]
    seconds = {}
    t0 = time.perf_counter()
    # 1. Crops, prepared.
    n = write_crops(Path(args.samples), work / "flair", 64)
    prep = prepare.run(compose("prepare", [*paths, f"data_root={work / 'flair'}", f"split.val_domains=[{SCORED_DOMAIN}]"]))
    seconds["data"] = round(time.perf_counter() - t0, 1)
    # 2. The shipped base, fine-tuned on the training crops.
    t0 = time.perf_counter()
    base = pretrain_tiny_base(prep.prepared_dir, work / "base", PretrainSettings(
        vae_steps=args.vae_steps, unet_steps=args.unet_steps, vae_lr=1e-3, unet_lr=1e-3), init_dir=EMBEDDED_TINY_BASE)
    seconds["base"] = round(time.perf_counter() - t0, 1)
    # 3. ControlNet, exported.
    t0 = time.perf_counter()
    run = train(compose("train", [*paths, "model=tiny", f"model.pretrained_dir={base.folder}", "run_name=real",
                                  f"prepared_dir={prep.prepared_dir}", f"max_steps={args.controlnet_steps}",
                                  f"checkpointing_steps={args.controlnet_steps}", "validation_steps=0"]))
    seconds["controlnet"] = round(time.perf_counter() - t0, 1)
    model = export.run(compose("export", [*paths, f"run_dir={run.run_dir}", f"output_dir={work / 'model'}",
                                          "overwrite=true"])).model_dir
    # 4. Fidelity on the scored tile's crops, with the demo's sampling.
    demo = compose("demo")
    ev_cfg = compose("evaluate", [*paths, f"model_path={model}", f"data_dir={prep.prepared_dir}",
                                  f"output_dir={work / 'evaluate'}"])
    from omegaconf import OmegaConf

    OmegaConf.update(ev_cfg, "sampling", demo.sampling, merge=True)
    scored = evaluate.run(ev_cfg)
    rep = scored.fidelity
    record = {"benchmark": "real_tiles", "crops": n, "scored_domain": SCORED_DOMAIN, "threads": torch.get_num_threads(),
              "steps": {"vae": args.vae_steps, "unet": args.unet_steps, "controlnet": args.controlnet_steps},
              "seconds": seconds, "fidelity_ratio": rep["fidelity_ratio"], "floor_ratio": rep.get("floor_ratio"),
              "vae_ratio": rep.get("vae_ratio"), "miou": {k: rep[k]["miou"] for k in
                                                          ("generated", "untrained", "vae_round_trip", "real_images")},
              "per_class_iou": {"generated": rep["generated"]["per_class_iou"],
                                "real_images": rep["real_images"]["per_class_iou"]}, "num_images": rep["num_images"]}
    out = Path(__file__).parent / "results" / "real_tiles.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    if args.grid:
        shutil.copy(scored.grid_path, args.grid)
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
