"""Fidelity ratio against training steps: the curve the demo's recipe is chosen from.

Trains a ControlNet with the product's own loop (`seg2sat train`) on a prepared dataset,
saves a checkpoint every `--every` steps, and scores each one with the dataset's judge
(`seg2sat.evaluation.judge`): the re-segmented mIoU of its images of the validation maps over that
of the real images. The untrained ControlNet (step 0) and the VAE round trip are scored once.
Each sampling setting given with `--sampling guidance,scale` is scored at every checkpoint.
Writes a JSON record to benchmarks/results/ and, with `--plot`, a PNG of the curves.

    seg2sat sample-data && seg2sat prepare            # the demo's data (or any prepared set)
    python benchmarks/fidelity_curve.py --steps 10000 --every 1000 --plot docs/fidelity_curve.png
    python benchmarks/fidelity_curve.py --device cuda --steps 20000 --every 1000   # on a GPU
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from seg2sat.config import compose
from seg2sat.evaluation.judge import JudgeConfig, load_or_train_judge, split_arrays
from seg2sat.evaluation.scores import Judges, ReportSettings, fidelity_report
from seg2sat.generation.models import EMBEDDED_TINY_BASE, load_pipeline, load_pipeline_from_base
from seg2sat.training.loop import train


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--prepared", default="data/prepared")
    p.add_argument("--base", default=str(EMBEDDED_TINY_BASE))
    p.add_argument("--run-dir", default="data/runs/fidelity-curve")
    p.add_argument("--steps", type=int, default=4000)
    p.add_argument("--every", type=int, default=500)
    p.add_argument("--sampling", action="append", default=None,
                   help="guidance,controlnet_scale (repeatable); default 1,1 and the demo's 1,3")
    p.add_argument("--sampling-steps", type=int, default=20)
    p.add_argument("--device", default="cpu")
    p.add_argument("--plot", default=None, help="write the curves to this PNG")
    p.add_argument("--name", default="fidelity_curve")
    p.add_argument("overrides", nargs="*", help="Hydra overrides of conf/train.yaml, e.g. learning_rate=2e-3")
    return p.parse_args()


def main() -> None:
    args = parse()
    specs = [tuple(float(v) for v in s.split(",")) for s in (args.sampling or ["1,1", "1,3"])]
    prepared = Path(args.prepared)
    # 1. Train, keeping every checkpoint.
    cfg = compose("train", ["model=tiny", f"model.pretrained_dir={args.base}", f"run_dir={args.run_dir}",
                            f"prepared_dir={prepared}", f"max_steps={args.steps}", f"checkpointing_steps={args.every}",
                            "checkpoints_total_limit=null", "validation_steps=0", "resume=latest", *args.overrides])
    t0 = time.perf_counter()
    result = train(cfg)
    train_s = time.perf_counter() - t0
    # 2. Judge and maps.
    judge, _ = load_or_train_judge(prepared, JudgeConfig())
    records, real, codes = split_arrays(prepared, "val")

    def score(pipe, guidance: float, scale: float, ceiling: bool = False) -> dict:
        sampling = {"steps": args.sampling_steps, "guidance_scale": guidance, "controlnet_scale": scale}
        rep, _ = fidelity_report(pipe, None, Judges(judge), records, real, codes,
                                 ReportSettings(sampling=sampling, vae_round_trip=ceiling))
        return rep

    # 3. The floor and the ceiling, then every checkpoint.
    floor = load_pipeline_from_base(args.base, device=args.device)
    first = score(floor, *specs[0], ceiling=True)
    curve = [{"step": 0, **{f"{g:g},{s:g}": score(floor, g, s)["fidelity_ratio"] for g, s in specs}}]
    for ckpt in result.checkpoints:
        pipe = load_pipeline(ckpt / "controlnet", base=args.base, device=args.device)
        row = {"step": int(ckpt.name.split("-")[1])}
        row.update({f"{g:g},{s:g}": score(pipe, g, s)["fidelity_ratio"] for g, s in specs})
        curve.append(row)
        print(json.dumps(row), flush=True)
    record = {
        "benchmark": args.name, "device": args.device if args.device != "cuda" else torch.cuda.get_device_name(),
        "threads": torch.get_num_threads(), "versions": {"torch": torch.__version__, "python": platform.python_version()},
        "settings": {"steps": args.steps, "every": args.every, "prepared": str(prepared),
                     "base": "embedded" if Path(args.base) == EMBEDDED_TINY_BASE else args.base,
                     "overrides": args.overrides, "sampling_steps": args.sampling_steps, "val_maps": len(codes)},
        "train_seconds": round(train_s, 1), "samples_per_s": result.samples_per_s,
        "real_miou": first["real_images"]["miou"], "vae_ratio": first["vae_ratio"], "curve": curve,
    }
    out = Path(__file__).parent / "results" / f"{args.name}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"train {train_s:.0f} s; VAE ceiling ratio {first['vae_ratio']:.2f}; record {out}")
    if args.plot:
        plot(record, Path(args.plot))


def plot(record: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6))
    steps = [r["step"] for r in record["curve"]]
    for key in [k for k in record["curve"][0] if k != "step"]:
        g, s = key.split(",")
        ax.plot(steps, [r[key] for r in record["curve"]], marker="o", label=f"guidance {g}, ControlNet scale {s}")
    ax.axhline(record["vae_ratio"], ls="--", c="grey", label="VAE round trip (the base's ceiling)")
    ax.set_xlabel("ControlNet training steps (batch 8)")
    ax.set_ylabel("fidelity ratio (generated / real mIoU)")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
