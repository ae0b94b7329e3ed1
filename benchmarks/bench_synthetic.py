"""Do synthetic pairs make a segmenter better? Real only vs real + generated vs generated only.

The protocol (docs/synthetic.md):
1. Data: the demo's prepared set (synthetic FLAIR layout, 64 px): the training split (72 tiles of
   three domains) is the "real" set; the held-out real tiles of another domain (24) are the test.
2. Two scales: 16 real tiles (a seeded subset of the training split) and all 72. At each scale
   the generator is trained on exactly those real tiles (the 72-tile one is the demo's model; the
   16-tile one is trained here with the demo's recipe, reward phase included, on the 16 tiles
   alone), so nothing of the test domain or of other tiles leaks in.
3. Synthesis: `seg2sat synthesize` from those real maps (re-rendered and edited, with targets for
   the rare classes: greenhouse, swimming pool), filtered by the judge; 4x the real count, the
   1x and 2x sets being its first tiles in plan order.
4. The segmenter: a network of another architecture than the judge (`AtrousNet`: dilated
   convolutions, no U-Net skips), trained the same number of steps on (a) real only, (b) real +
   generated at 1x, 2x, 4x, (c) generated only (1x: the same count as real), 3 seeds each.
5. Scores on the held-out domain: mIoU, per-class IoU; mean and spread over seeds.
Writes benchmarks/results/synthetic.json and, with --plot, docs/synthetic.png.

    python benchmarks/bench_synthetic.py --plot docs/synthetic.png
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from seg2sat.atomic import write_json, write_text
from seg2sat.config import compose
from seg2sat.data.dataset import read_manifest
from seg2sat.evaluation.judge import JudgeConfig, split_arrays, train_judge
from seg2sat.evaluation.scores import segmentation_scores

RESULTS = Path(__file__).parent / "results" / "synthetic.json"
RARE = ("greenhouse", "swimming pool")


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", default="data/bench_synthetic", help="scratch folder (data, models, synthetic sets)")
    p.add_argument("--prepared", default="data/prepared", help="the demo's prepared set (`seg2sat demo` makes it)")
    p.add_argument("--model", default="data/models/demo", help="the generator trained on the whole training split")
    p.add_argument("--small", type=int, default=16, help="real tiles at the small scale")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--seg-steps", type=int, default=400)
    p.add_argument("--threshold", type=float, default=0.3, help="the synthesis quality bar")
    p.add_argument("--targets", default="{greenhouse: 0.03, swimming pool: 0.01}")
    p.add_argument("--spare", type=float, default=1.25, help="tiles planned per tile needed (some are dropped)")
    p.add_argument("--no-ablations", action="store_true", help="skip the unfiltered / no-edits syntheses")
    p.add_argument("--plot", default=None)
    p.add_argument("--out", type=Path, default=RESULTS)
    return p.parse_args()


def subset_prepared(prepared: Path, dest: Path, n: int, seed: int = 0) -> Path:
    """A prepared set holding `n` seeded training tiles of `prepared` (and all its validation tiles)."""
    records = read_manifest(prepared)
    train = [r for r in records if r["split"] == "train"]
    keep = {train[i]["id"] for i in np.random.default_rng(seed).permutation(len(train))[:n]}
    dest.mkdir(parents=True, exist_ok=True)
    for sub in ("images", "hints"):
        if not (dest / sub).exists():
            os.symlink((prepared / sub).resolve(), dest / sub)
    shutil.copy(prepared / "prepare_config.yaml", dest / "prepare_config.yaml")
    write_text(dest / "manifest.jsonl", "".join(json.dumps(r) + "\n" for r in records
                                                if r["split"] != "train" or r["id"] in keep))
    return dest


def generator_for(prepared: Path, work: Path) -> Path:
    """The demo's recipe (plain, then its reward phase), trained on `prepared`'s training tiles alone, exported.

    Kept between runs. The reward segmenter is trained on the same tiles (its `prepared_dir`).
    """
    from omegaconf import OmegaConf

    from seg2sat.generation.models import EMBEDDED_TINY_BASE
    from seg2sat.stages import evaluate, export, train
    from seg2sat.training.checkpoint import list_checkpoints

    model = work / "model"
    if (model / "seg2sat.json").exists():
        return model
    paths, demo = [f"paths.root_dir={work}"], compose("demo")
    common = [*paths, "model=tiny", f"model.pretrained_dir={EMBEDDED_TINY_BASE}", f"prepared_dir={prepared}",
              "resume=latest", "validation_steps=0"]
    run = train.run(compose("train", [*common, f"experiment={demo.experiment}", f"run_dir={work / 'run'}"]))
    if demo.get("reward_experiment"):
        init = list_checkpoints(run.run_dir)[-1] / "controlnet"
        run = train.run(compose("train", [*common, f"experiment={demo.reward_experiment}",
                                          f"model.controlnet_init={init}", f"run_dir={work / 'reward_run'}"]))
    ex = compose("export", [*paths, f"run_dir={run.run_dir}", f"output_dir={model}", "overwrite=true"])
    OmegaConf.update(ex, "sampling", OmegaConf.to_container(demo.sampling))
    export.run(ex)
    evaluate.run(compose("evaluate", [*paths, f"model_path={model}", f"data_dir={prepared}",
                                      f"output_dir={work / 'evaluate'}", "realism.enabled=false"]))
    return model


def synthesize_set(model: Path, prepared: Path, out: Path, n: int, args: argparse.Namespace, *extra: str) -> dict:
    """`seg2sat synthesize` of n tiles from `prepared`'s training maps, filtered by its judge (`extra` last)."""
    from seg2sat.stages import synthesize

    cfg = compose("synthesize", [f"paths.root_dir={out.parent}", f"paths.prepared_dir={prepared}",
                                 f"model_path={model}", f"output_dir={out}", f"target.n_tiles={n}",
                                 f"target.classes={args.targets}", f"quality.threshold={args.threshold}", *extra])
    return synthesize.run(cfg).report


# What helped (at the small scale, real + 2x generated): a stricter quality bar (on the demo's
# data the default bar of 0.3 drops nothing: every pair scores above it, so the main arms are the
# unfiltered ones), and the prepared maps only (no edits, no class targets).
ABLATIONS = {"strict_filter": ["quality.threshold=0.5"],
             "no_edits": ["target.classes=null", "sources=[{kind: prepared, path: ${paths.prepared_dir}}]"]}


def ablations(model: Path, src: Path, work: Path, real: tuple[np.ndarray, np.ndarray],
              test: tuple[np.ndarray, np.ndarray], args: argparse.Namespace) -> tuple[dict, dict]:
    """Real + 2x generated for each ablation's synthesis; (scores by arm, synthesis reports)."""
    n, scores, reports = len(real[0]), {}, {}
    for name, extra in ABLATIONS.items():
        out = work / f"synthetic_{name}"
        reports[name] = synthesize_set(model, src, out, int(np.ceil(2 * n * args.spare)), args, *extra)
        synth = synthetic_arrays(out, 2 * n)
        arm = (np.concatenate([real[0], synth[0]]), np.concatenate([real[1], synth[1]]))
        scores[f"real+gen2x {name}"] = arm_scores(f"{n} real+gen2x {name}", arm, test, args)
    return scores, reports


def synthetic_arrays(out: Path, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The first n accepted pairs (plan order) as (images, codes)."""
    import rasterio

    records = [json.loads(line) for line in (out / "synthesis.jsonl").read_text().splitlines()]
    kept = [r for r in records if r["state"] == "accepted"][:n]
    images, codes = [], []
    for r in kept:
        with rasterio.open(out / r["image"]) as a, rasterio.open(out / r["mask"]) as b:
            images.append(np.moveaxis(a.read(), 0, -1))
            codes.append(b.read(1))
    return np.stack(images), np.stack(codes)


def segmenter_scores(images: np.ndarray, codes: np.ndarray, test: tuple[np.ndarray, np.ndarray], seed: int,
                     steps: int) -> dict:
    """Train the other-architecture segmenter on (images, codes); score it on the test tiles."""
    net = train_judge(images, codes, JudgeConfig(kind="atrous", widths=(24, 48), steps=steps, seed=seed))
    preds = net.classify(test[0])
    return segmentation_scores(list(preds), list(test[1]))


def run_scale(name: str, real: tuple[np.ndarray, np.ndarray], synth: tuple[np.ndarray, np.ndarray],
              test: tuple[np.ndarray, np.ndarray], args: argparse.Namespace) -> dict:
    """Real only, real + generated at 1x/2x/4x, generated only (1x); `args.seeds` seeds each."""
    n = len(real[0])
    arms = {"real": real}
    for k in (1, 2, 4):
        arms[f"real+gen{k}x"] = (np.concatenate([real[0], synth[0][: k * n]]), np.concatenate([real[1], synth[1][: k * n]]))
    arms["gen1x"] = (synth[0][:n], synth[1][:n])
    return {arm: arm_scores(f"{name} {arm}", xy, test, args) for arm, xy in arms.items()}


def arm_scores(label: str, arm: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray],
               args: argparse.Namespace) -> dict:
    """The segmenter trained on one arm with `args.seeds` seeds: mIoU mean, spread, per-class IoU."""
    x, y = arm
    runs = [segmenter_scores(x, y, test, seed, args.seg_steps) for seed in range(args.seeds)]
    mious = [r["miou"] for r in runs]
    classes = sorted({c for r in runs for c in r["per_class_iou"]})
    out = {"tiles": len(x), "miou_mean": float(np.mean(mious)), "miou_std": float(np.std(mious)), "miou_runs": mious,
           "per_class_iou": {c: float(np.mean([r["per_class_iou"].get(c, 0.0) for r in runs])) for c in classes}}
    print(f"{label}: mIoU {out['miou_mean']:.3f} ± {out['miou_std']:.3f} ({len(x)} tiles); rare "
          f"{[round(out['per_class_iou'].get(c, 0.0), 3) for c in RARE]}", flush=True)
    return out


def _colour(arm: str) -> str:
    """Real only grey, real + generated blue (ablations lighter), generated only orange."""
    if arm == "real":
        return "#777777"
    if arm.startswith("gen"):
        return "#d9822b"
    return "#9ec3db" if " " in arm else "#3a7ca5"


def plot(record: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), sharey=True)
    for ax, (scale, arms) in zip(axes, record["scales"].items(), strict=True):
        names = list(arms)
        ax.bar(range(len(names)), [arms[a]["miou_mean"] for a in names], yerr=[arms[a]["miou_std"] for a in names],
               color=[_colour(a) for a in names], capsize=3)
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
        ax.set_title(f"{scale} real tiles", fontsize=10)
    axes[0].set_ylabel("mIoU on the held-out domain")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    args = parse()
    work, prepared = Path(args.work), Path(args.prepared)
    t0 = time.perf_counter()
    _, test_images, test_codes = split_arrays(prepared, "val")
    test = (test_images, test_codes)
    scales = {}
    synth_reports = {}
    for name, n in ((str(args.small), args.small), ("all", None)):
        # 1-2. The real tiles of this scale and a generator trained on exactly them.
        src = prepared if n is None else subset_prepared(prepared, work / f"real{n}" / "prepared", n)
        model = Path(args.model) if n is None else generator_for(src, work / f"real{n}")
        _, real_images, real_codes = split_arrays(src, "train")
        # 3. 4x as many synthetic pairs, filtered.
        out = work / f"synthetic_{name}"
        synth_reports[name] = synthesize_set(model, src, out, int(np.ceil(4 * len(real_images) * args.spare)), args)
        synth = synthetic_arrays(out, 4 * len(real_images))
        # 4-5. The segmenter on each arm, scored on the held-out domain.
        scales[f"{len(real_images)}"] = run_scale(name, (real_images, real_codes), synth, test, args)
        if n is not None and not args.no_ablations:
            more, reports = ablations(model, src, work, (real_images, real_codes), test, args)
            scales[f"{len(real_images)}"].update(more)
            synth_reports.update({f"{name}_{k}": v for k, v in reports.items()})
    record = {"benchmark": "synthetic", "scales": scales, "synthesis": synth_reports, "rare": list(RARE),
              "segmenter": {"kind": "atrous", "widths": [24, 48], "steps": args.seg_steps, "seeds": args.seeds},
              "threshold": args.threshold, "targets": args.targets, "seconds": round(time.perf_counter() - t0),
              "threads": torch.get_num_threads(), "machine": platform.machine(), "date": time.strftime("%Y-%m-%d")}
    write_json(args.out, record)
    if args.plot:
        plot(record, args.plot)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
