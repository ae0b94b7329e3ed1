"""The parts of the GPU suite (`benchmarks/gpu_suite.py`): one function each, registered in PARTS.

A part takes the suite's `Context`, fills `ctx.settings` and `ctx.figures` as it measures (so a
part stopped at its time cap keeps what it had measured), and returns a one-line summary for
the table. Parts reuse the benchmark scripts beside this file (bench_train, bench_infer,
diffusers_peer, devices) and the package's own stages; nothing here re-implements a loop.

Two sizes (`Scale`): SD-2.1-base with random weights in bf16 on a GPU (`GPU`), and the tiny
configs at 64 px in fp32 on CPU (`DRY`, the CI dry run: the same code paths, small shapes).
Models never download: both are built in code once per run and saved to folders in the
scratch workspace, which every part then loads as a user's run would.

Adding a part (issue 35: SDXL, a transformer base) is one function and one PARTS entry.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from devices import fmt_mfu, peak_tflops, rates

SD21 = "sd21_base_random"


# ---------------------------------------------------------------------------------------------
# Sizes and the shared state of a run
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scale:
    """Every size one suite run uses (GPU: SD-2.1-base; DRY: the tiny configs at 64 px)."""

    preset: str  # bench_train/bench_infer preset: "sd21_base_random" or "tiny"
    resolution: int  # training resolution = inference tile, px
    precision: str  # mixed precision of training ("bf16" | "no"); inference uses the same dtype
    tiles: int  # prepared training tiles
    train_batch: int  # every training loop, ours and diffusers', runs at this batch
    train_steps: int  # timed steps per training loop (after as many warm-up steps)
    reward_crop: int  # reward.crop (latent cells) of the cropped reward run
    judge_steps: int  # training steps of the reward segmenter and the synthesis judge
    image_steps: tuple[int, ...]  # step counts of the one-image comparison with diffusers
    repeats: int  # timed calls per side and step count (median)
    warmup: int  # untimed calls first
    tiled_scale: int  # tiled raster area in tile areas (16: 2048² at 512 px)
    tiled_steps: int
    tiled_batch: int  # windows per model call
    compile_min_s: float  # the compiled round of `infer` runs only with this much of its cap left
    synth_tiles: int
    synth_steps: int
    mosaic_side: int  # land cover side, px (2 x 2 blocks)
    mosaic_block: int
    mosaic_halo: int
    mosaic_steps: int
    profile_steps: int  # steps recorded by the profiler


GPU = Scale(preset=SD21, resolution=512, precision="bf16", tiles=48, train_batch=16, train_steps=10,
            reward_crop=32, judge_steps=100, image_steps=(4, 8, 20), repeats=5, warmup=2, tiled_scale=16,
            tiled_steps=10, tiled_batch=8, compile_min_s=150.0, synth_tiles=8, synth_steps=20, mosaic_side=2048,
            mosaic_block=1024, mosaic_halo=512, mosaic_steps=10, profile_steps=5)
DRY = Scale(preset="tiny", resolution=64, precision="no", tiles=6, train_batch=2, train_steps=2, reward_crop=8,
            judge_steps=10, image_steps=(4, 8, 20), repeats=1, warmup=1, tiled_scale=4, tiled_steps=2,
            tiled_batch=8, compile_min_s=float("inf"), synth_tiles=3, synth_steps=2, mosaic_side=256,
            mosaic_block=128, mosaic_halo=64, mosaic_steps=2, profile_steps=2)


@dataclass
class Workspace:
    """Prepared data and model folders, made once per run and shared by every part."""

    root: Path
    prepared: Path
    model: list[str]  # Hydra overrides of `train` naming the base folder and the initial ControlNet
    base: Path  # the base pipeline folder (random weights)
    controlnet: Path  # the initial ControlNet folder (a plain diffusers ControlNet)
    seconds: float

    @classmethod
    def make(cls, root: Path, scale: Scale) -> Workspace:
        """Synthetic FLAIR tiles, prepared; the base and ControlNet saved (bench_train's helpers)."""
        from bench_train import base_folder, make_data, model_overrides

        t0 = time.perf_counter()
        prepared = make_data(root, scale.resolution, scale.tiles)
        model = model_overrides(scale.preset, root, "random")
        init = Path(next(o.split("=", 1)[1] for o in model if o.startswith("model.controlnet_init=")))
        return cls(root=root, prepared=prepared, model=model, base=base_folder(model), controlnet=init,
                   seconds=round(time.perf_counter() - t0, 2))

    def train_overrides(self, scale: Scale) -> list[str]:
        """`train` overrides shared by every training loop of the suite."""
        return [f"paths.root_dir={self.root}", f"prepared_dir={self.prepared}", *self.model,
                f"resolution={scale.resolution}", f"batch_size={scale.train_batch}",
                f"mixed_precision={scale.precision}", "num_workers=auto"]

    def infer_overrides(self, ctx: Context) -> list[str]:
        """infer/synthesize/mosaic overrides: the saved ControlNet on the saved base, this run's device."""
        return [f"paths.root_dir={self.root}", f"model_path={self.controlnet}", f"base_model={self.base}",
                f"device={ctx.device}", f"dtype={str(ctx.dtype).removeprefix('torch.')}",
                f"sampling.tile={ctx.scale.resolution}", "compile=false"]


@dataclass
class Context:
    """What a part sees: sizes, device, the shared workspace, earlier records, its own deadline."""

    scale: Scale
    device: torch.device
    dtype: torch.dtype
    root: Path  # scratch folder of the run
    out: Path  # the suite's output folder (DIR)
    peer_script: Path | None = None  # diffusers' train_controlnet.py, if at hand
    records: dict[str, dict[str, Any]] = field(default_factory=dict)  # finished parts, by name
    settings: dict[str, Any] = field(default_factory=dict)
    figures: dict[str, Any] = field(default_factory=dict)
    deadline: float = float("inf")  # time.monotonic() by which the running part must end
    _workspace: Workspace | None = None

    def begin(self, cap_s: float) -> None:
        """Start a part: empty settings and figures, its deadline `cap_s` from now."""
        self.settings, self.figures = {"scale": asdict(self.scale)}, {}
        self.deadline = time.monotonic() + cap_s

    def remaining(self) -> float:
        """Seconds left to the running part."""
        return self.deadline - time.monotonic()

    def workspace(self) -> Workspace:
        """The shared data and model folders (made by the first part that asks; its time noted there)."""
        if self._workspace is None:
            self._workspace = Workspace.make(self.root, self.scale)
            self.figures["workspace_setup_s"] = self._workspace.seconds
        return self._workspace

    @property
    def peak(self) -> float | None:
        """The device's dense bf16 peak (TFLOP/s), None where unknown (CPU): then no MFU."""
        return peak_tflops(self.device)


def reset_peak(device: torch.device) -> None:
    """Start a new CUDA peak-memory window (no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def _round(x: float | None, n: int = 4) -> float | None:
    return None if x is None else round(float(x), n)


# ---------------------------------------------------------------------------------------------
# setup: the shared data and model folders (first, so no part's cap pays for them)
# ---------------------------------------------------------------------------------------------


def setup_part(ctx: Context) -> str:
    """Synthetic tiles prepared at the model's resolution; the random base and initial ControlNet saved."""
    ws = ctx.workspace()
    ctx.settings.update(preset=ctx.scale.preset, resolution=ctx.scale.resolution, tiles=ctx.scale.tiles)
    ctx.figures.update(prepared=str(ws.prepared), base=str(ws.base), controlnet=str(ws.controlnet))
    return (f"{ctx.scale.tiles} tiles at {ctx.scale.resolution} px prepared, {ctx.scale.preset} base and ControlNet "
            f"saved in {ws.seconds:.0f} s")


# ---------------------------------------------------------------------------------------------
# train: ours cached and uncached vs diffusers' train_controlnet.py at equal batch, MFU
# ---------------------------------------------------------------------------------------------


def _train_row(name: str, samples_per_s: float, peak_mb: float | None) -> dict[str, Any]:
    return {"loop": name, "samples_per_s": round(samples_per_s, 3), "peak_mb": _round(peak_mb, 1)}


def _peer_unavailable(script: Path | None) -> str | None:
    """Why diffusers' script cannot run here (None when it can)."""
    import importlib.util

    if script is None:
        return "no --diffusers-script given"
    if not Path(script).exists():
        return f"{script}: not found"
    missing = [m for m in ("datasets", "tensorboard") if importlib.util.find_spec(m) is None]
    return f"{', '.join(missing)} not installed (the script needs it)" if missing else None


def _baseline(ctx: Context, ws: Workspace, overrides: list[str]) -> dict[str, Any]:
    """diffusers' own script on the same data, weights and batch; else the in-process naive loop."""
    from bench_train import naive_loop
    from diffusers_peer import export_parquet, run_peer

    from seg2sat.config import compose
    from seg2sat.training.setup import num_workers

    s, cfg = ctx.scale, compose("train", overrides)
    why = _peer_unavailable(ctx.peer_script)
    if why is None:
        try:
            data = export_parquet(ws.prepared, ws.root / "peer_data")
            run = run_peer(ctx.peer_script, base=ws.base, controlnet=ws.controlnet, data_dir=data,
                           out_dir=ws.root / f"peer_run_{time.time_ns()}", resolution=s.resolution,
                           batch_size=s.train_batch, warmup=s.train_steps, steps=s.train_steps,
                           learning_rate=float(cfg.learning_rate), precision=s.precision,
                           empty_prompt_prob=float(cfg.empty_prompt_prob), workers=num_workers(cfg, ctx.device))
            return _train_row(f"diffusers {Path(ctx.peer_script).name}", run.samples_per_s, None)
        except RuntimeError as exc:  # keep ours: the naive loop stands in, the reason is recorded
            lines = str(exc).strip().splitlines()
            why = lines[0] if len(lines) == 1 else f"{lines[0]} ... {lines[-1]}"
            ctx.figures["peer_error"] = str(exc)
    ctx.figures["peer_skipped"] = why
    return _train_row("naive in-process loop (stand-in for diffusers' script)",
                      *naive_loop(cfg, s.train_steps, s.train_steps))


def _with_mfu(rows: list[dict[str, Any]], flops: float, peak: float | None) -> None:
    """TFLOP/s, MFU and the ratio to the baseline (the last row) of every row, in place."""
    base = rows[-1]["samples_per_s"] if rows[-1]["loop"].startswith(("diffusers", "naive")) else None
    for r in rows:
        tflops, mfu = rates(r["samples_per_s"] * flops, 1.0, peak)
        r.update(tflops=round(tflops, 4), mfu=_round(mfu), ratio=_round(base and r["samples_per_s"] / base, 3))


def train_part(ctx: Context) -> str:
    """Training samples/s: ours with and without the latent cache, then the baseline; MFU.

    1. the latent cache, built once (timed apart: paid once per dataset and base);
    2. ours cached, ours uncached (bench_train.our_loop: steady state, the second log interval);
    3. model FLOPs per cached sample (torch.utils.flop_counter) -> TFLOP/s and MFU;
    4. diffusers' train_controlnet.py in a subprocess (or the naive loop) at the same batch.
    The most wanted figures come first, so a part stopped at its cap keeps them.
    """
    from bench_train import flops_per_sample, our_loop

    from seg2sat.config import compose

    s, ws = ctx.scale, ctx.workspace()
    overrides = ws.train_overrides(s)
    ctx.settings.update(batch_size=s.train_batch, steps=s.train_steps, resolution=s.resolution,
                        precision=s.precision, peer_script=str(ctx.peer_script) if ctx.peer_script else None)
    # 1. The cache.
    t0 = time.perf_counter()
    our_loop(overrides, ws.root, 1, cache=True)
    ctx.figures["cache_build_s"] = round(time.perf_counter() - t0, 2)
    # 2. Ours.
    rows = ctx.figures.setdefault("rows", [])
    rows.append(_train_row("ours, latent cache", *our_loop(overrides, ws.root, s.train_steps, cache=True)))
    rows.append(_train_row("ours, no cache", *our_loop(overrides, ws.root, s.train_steps, cache=False)))
    # 3. FLOPs and MFU.
    flops = flops_per_sample(compose("train", overrides))
    ctx.figures.update(flops_per_sample=flops, peak_tflops=ctx.peak)
    _with_mfu(rows, flops, ctx.peak)
    ctx.figures["mfu"] = rows[0]["mfu"]
    # 4. The baseline.
    rows.append(_baseline(ctx, ws, overrides))
    _with_mfu(rows, flops, ctx.peak)
    cached, plain, base = rows
    return (f"cached {cached['samples_per_s']:.2f} samples/s (MFU {fmt_mfu(cached['mfu'])}, "
            f"{cached['ratio']:.2f}x baseline), uncached {plain['samples_per_s']:.2f} "
            f"({plain['ratio']:.2f}x), baseline {base['loop'].split(' (')[0]} {base['samples_per_s']:.2f}")


# ---------------------------------------------------------------------------------------------
# reward: the reward fine-tune with and without reward.crop
# ---------------------------------------------------------------------------------------------


def reward_overrides(ctx: Context, crop: int | None) -> list[str]:
    """The reward fine-tune (conf/reward/default.yaml) on the cached loop, with or without a crop."""
    return ["reward=default", f"reward.crop={'null' if crop is None else crop}",
            f"reward.segmenter.steps={ctx.scale.judge_steps}"]


def reward_part(ctx: Context) -> str:
    """Samples/s and peak memory of the reward fine-tune, whole decode vs `reward.crop` (cached loop)."""
    from bench_train import our_loop

    s, ws = ctx.scale, ctx.workspace()
    overrides = ws.train_overrides(s)
    ctx.settings.update(batch_size=s.train_batch, steps=s.train_steps, crop=s.reward_crop,
                        segmenter_steps=s.judge_steps)
    t0 = time.perf_counter()
    our_loop([*overrides, *reward_overrides(ctx, None)], ws.root, 1, cache=True)  # cache + segmenter, once
    ctx.figures["setup_s"] = round(time.perf_counter() - t0, 2)
    rows = ctx.figures.setdefault("rows", [])
    for crop in (s.reward_crop, None):  # the crop first: the whole decode may not fit at SD size
        reset_peak(ctx.device)
        try:
            sps, mb = our_loop([*overrides, *reward_overrides(ctx, crop)], ws.root, s.train_steps, cache=True)
            rows.append({"crop": crop, "samples_per_s": round(sps, 3), "peak_mb": _round(mb, 1)})
        except torch.OutOfMemoryError:  # a figure too: this batch does not fit without the crop
            rows.append({"crop": crop, "samples_per_s": None, "peak_mb": None, "error": "out of memory"})
            torch.cuda.empty_cache()
    memory = "peak GPU MB" if ctx.device.type == "cuda" else "peak RSS MB (process)"
    return "; ".join(f"{'crop ' + str(r['crop']) if r['crop'] else 'whole decode'} "
                     + (f"{r['samples_per_s']:.2f} samples/s, {r['peak_mb']:.0f} {memory}" if r["samples_per_s"]
                        else "out of memory") for r in rows)


# ---------------------------------------------------------------------------------------------
# infer: one image vs diffusers' pipeline at 4/8/20 steps, tiled window-steps/s; compile on/off
# ---------------------------------------------------------------------------------------------


def _infer_args(ctx: Context, warmup: int) -> argparse.Namespace:
    """The settings bench_infer's functions read."""
    s = ctx.scale
    return argparse.Namespace(tile=s.resolution, guidance=7.5, steps_image=list(s.image_steps), repeats=s.repeats,
                              warmup=warmup, steps=s.tiled_steps, batch_size=s.tiled_batch)


def load_pipe(ctx: Context) -> Any:
    """The saved ControlNet on the saved base, as `infer` loads it (UniPC, eager, channels_last auto)."""
    from seg2sat.generation.models import load_model

    ws = ctx.workspace()
    return load_model(ws.controlnet, base=ws.base, device=ctx.device, dtype=ctx.dtype, scheduler="unipc",
                      compile=False).pipe


def _infer_round(ctx: Context, pipe: Any, peer: Any, label: str, warmup: int) -> dict[str, Any]:
    """One image per step count (both sides) and the tiled raster at batch 8, with MFU."""
    from bench_infer import meta_flops, side_by_side, tiled_row, with_rates

    args, s = _infer_args(ctx, warmup), ctx.scale
    if "flops" not in ctx.figures:
        ctx.figures["flops"] = meta_flops(s.preset, s.resolution)
    flops = ctx.figures["flops"]
    image = side_by_side(pipe, peer, args, flops, ctx.peak)
    ctx.figures[f"image_{label}"] = image
    tiled = with_rates(tiled_row(pipe, args, s.tiled_scale, s.tiled_batch), args, flops, ctx.peak)
    ctx.figures[f"tiled_{label}"] = tiled
    return {"tiled": tiled, "image": {r["steps"]: r for r in image if r["side"] == "ours"}}


def _compile_round(ctx: Context, pipe: Any) -> dict[str, Any] | None:
    """The same round with our UNet and ControlNet compiled (diffusers' side stays eager), if time allows."""
    from bench_infer import peer_pipeline

    from seg2sat.generation.devices import speed_up_pipeline

    if ctx.remaining() < ctx.scale.compile_min_s:
        why = "CPU dry run" if ctx.device.type != "cuda" else f"{ctx.remaining():.0f} s left of the cap"
        ctx.figures["compile_skipped"] = why
        return None
    peer = peer_pipeline(pipe, share_models=False)  # eager copies, made before compiling ours in place
    speed_up_pipeline(pipe, compile=True, channels_last="auto")
    return _infer_round(ctx, pipe, peer, "compiled", warmup=max(2, ctx.scale.warmup))


def infer_part(ctx: Context) -> str:
    """One image at 4/8/20 steps, ours vs diffusers' pipeline; tiled window-steps/s at batch 8; then compiled."""
    from bench_infer import peer_pipeline

    s = ctx.scale
    ctx.settings.update(tile=s.resolution, dtype=str(ctx.dtype), guidance=7.5, scheduler="unipc",
                        steps_image=list(s.image_steps), repeats=s.repeats, tiled_area=s.tiled_scale,
                        tiled_steps=s.tiled_steps, batch_size=s.tiled_batch)
    pipe = load_pipe(ctx)
    eager = _infer_round(ctx, pipe, peer_pipeline(pipe, share_models=True), "eager", s.warmup)
    ctx.figures["mfu"] = eager["tiled"]["mfu_denoise"]
    compiled = _compile_round(ctx, pipe)
    best = compiled or eager
    ctx.figures["mfu"] = best["tiled"]["mfu_denoise"]
    images = ", ".join(f"{k} steps {r['seconds']:.3f} s ({r['speed_ours_over_diffusers']:.2f}x diffusers)"
                       for k, r in best["image"].items())
    return (f"{'compiled' if compiled else 'eager'}: tiled {best['tiled']['window_steps_per_s']:.1f} window-steps/s "
            f"(MFU {fmt_mfu(best['tiled']['mfu_denoise'])}); one {s.resolution}² image: {images}"
            + (f"; eager tiled {eager['tiled']['window_steps_per_s']:.1f}" if compiled else ""))


# ---------------------------------------------------------------------------------------------
# synthesize: tiles/s; mosaic: window-steps/s (the pace the dry runs' estimates use)
# ---------------------------------------------------------------------------------------------


def synthesize_part(ctx: Context) -> str:
    """`seg2sat synthesize` of a few tiles (judged, bar 0 so none is retried): steady tiles/s."""
    from seg2sat.config import compose
    from seg2sat.stages import synthesize
    from seg2sat.synthesis.tiles import read_record

    s, ws = ctx.scale, ctx.workspace()
    out = ws.root / "synthesize"
    overrides = [*ws.infer_overrides(ctx), f"paths.prepared_dir={ws.prepared}", f"output_dir={out}",
                 f"target.n_tiles={s.synth_tiles}", f"sampling.steps={s.synth_steps}", "sampling.guidance_scale=7.5",
                 f"judge.steps={s.judge_steps}", "quality.threshold=0.0", "diversity.maps=0", "overwrite=true"]
    ctx.settings.update(overrides=overrides)
    t0 = time.perf_counter()
    result = synthesize.run(compose("synthesize", overrides))
    ctx.figures["stage_s"] = round(time.perf_counter() - t0, 2)
    seconds = [float(read_record(out, p.id)["seconds"]) for p in result.plans]
    per_tile = statistics.median(seconds)  # the first tile pays the warm-up
    ctx.figures.update(tiles=len(seconds), tile_seconds=seconds, tiles_per_s=round(1 / per_tile, 4),
                       window_steps_per_s=round(s.synth_steps / per_tile, 3))
    return (f"{1 / per_tile:.2f} tiles/s ({s.synth_steps} steps, CFG, judged; "
            f"{s.synth_steps / per_tile:.1f} window-steps/s); stage {ctx.figures['stage_s']:.0f} s for {len(seconds)}")


def _landcover(path: Path, side: int) -> Path:
    """A random land-cover GeoTIFF on the 0.2 m lattice (bench_scale's recipe)."""
    import numpy as np
    from affine import Affine

    from seg2sat.data.synthetic import scene_codes
    from seg2sat.geo.geotiff import write_geotiff
    from seg2sat.geo.raster import FLAIR_CRS

    codes = scene_codes(side, np.random.default_rng(1)).astype(np.uint8)
    return Path(write_geotiff(path, codes[None], FLAIR_CRS, Affine(0.2, 0, 128 * 0.2 * 40, 0, -0.2, 128 * 0.2 * 900)))


def mosaic_part(ctx: Context) -> str:
    """`seg2sat mosaic` of 2 x 2 blocks (engine=local, batch 8, CFG): window-steps/s as its manifest times them."""
    from seg2sat.config import compose
    from seg2sat.scale.manifest import MANIFEST_NAME, opened
    from seg2sat.stages import mosaic

    s, ws = ctx.scale, ctx.workspace()
    out = ws.root / "mosaic"
    lc = _landcover(ws.root / "mosaic_landcover.tif", s.mosaic_side)
    overrides = [*ws.infer_overrides(ctx), f"input={lc}", f"output_dir={out}", f"sampling.steps={s.mosaic_steps}",
                 "sampling.guidance_scale=7.5", "sampling.batch_size=8", f"block={s.mosaic_block}",
                 f"halo={s.mosaic_halo}", "engine=local", "prompt.text=Aerial view"]
    ctx.settings.update(overrides=overrides, side=s.mosaic_side)
    t0 = time.perf_counter()
    mosaic.run(compose("mosaic", overrides))
    ctx.figures["stage_s"] = round(time.perf_counter() - t0, 2)
    with opened(out / MANIFEST_NAME) as manifest:
        timed = [r for r in manifest.blocks(["done", "generated"]) if r["seconds"] and r["windows"]]
    window_steps, seconds = sum(r["windows"] * s.mosaic_steps for r in timed), sum(r["seconds"] for r in timed)
    rate = window_steps / seconds
    ctx.figures.update(blocks=len(timed), window_steps=window_steps, block_seconds=round(seconds, 3),
                       window_steps_per_s=round(rate, 3))
    return f"{rate:.1f} window-steps/s over {len(timed)} blocks ({window_steps} window-steps, batch 8, CFG)"


# ---------------------------------------------------------------------------------------------
# profile: torch.profiler's top operators for the slowest part
# ---------------------------------------------------------------------------------------------


def _profile_train(ctx: Context, extra: list[str]) -> str:
    """The training loop's own profiler (`profile.enabled`) over a few cached steps; its summary table."""
    from seg2sat.config import compose
    from seg2sat.stages import train

    s, ws = ctx.scale, ctx.workspace()
    wait, active = 1, s.profile_steps
    cfg = compose("train", [*ws.train_overrides(s), *extra, "run_name=suite-profile", "cache_latents=true",
                            f"max_steps={wait + 1 + active}", f"log_every={wait + 1 + active}",
                            "checkpointing_steps=100000", "validation_steps=0", "resume=null",
                            "profile.enabled=true", f"profile.wait={wait}", f"profile.active={active}"])
    result = train.run(cfg)
    ctx.figures["sorted_by"] = "total device time (the loop's profiler; the Self CUDA column is per operator)"
    return (Path(result.run_dir) / "profile" / "summary.txt").read_text()


def _profile_infer(ctx: Context) -> str:
    """torch.profiler over one tiled raster (after a 2-step warm-up), top operators by self device time."""
    from bench_infer import tiled_row
    from torch.profiler import ProfilerActivity, profile

    pipe, args = load_pipe(ctx), _infer_args(ctx, warmup=1)
    args.steps = ctx.scale.profile_steps
    cuda = ctx.device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    tiled_row(pipe, args, ctx.scale.tiled_scale, ctx.scale.tiled_batch)  # its own warm-up, then this one, unprofiled
    with profile(activities=activities) as prof:
        tiled_row(pipe, args, ctx.scale.tiled_scale, ctx.scale.tiled_batch)
    sort = "self_cuda_time_total" if cuda else "self_cpu_time_total"
    ctx.figures["sorted_by"] = sort
    return prof.key_averages().table(sort_by=sort, row_limit=25)


# part -> how to profile its hot loop (reward profiles the training loop with its reward on)
PROFILERS: dict[str, Callable[[Context], str]] = {
    "train": lambda ctx: _profile_train(ctx, []),
    "reward": lambda ctx: _profile_train(ctx, reward_overrides(ctx, ctx.scale.reward_crop)),
    "infer": _profile_infer, "synthesize": _profile_infer, "mosaic": _profile_infer,
}


def slowest(records: dict[str, dict[str, Any]]) -> str | None:
    """The finished part furthest from the device: lowest MFU where any part has one, else longest wall time."""
    done = {k: r for k, r in records.items() if k in PROFILERS and r["status"] == "ok"}
    with_mfu = {k: r["figures"]["mfu"] for k, r in done.items() if r["figures"].get("mfu") is not None}
    if with_mfu:
        return min(with_mfu, key=with_mfu.__getitem__)
    return max(done, key=lambda k: done[k]["wall_s"]) if done else None


def profile_part(ctx: Context) -> str:
    """The top operators of the slowest part's hot loop, also written as DIR/profile.txt."""
    from seg2sat.atomic import write_text

    target = slowest(ctx.records)
    if target is None:
        raise RuntimeError("no finished part to profile (run it with another part, e.g. --parts infer,profile)")
    ctx.settings.update(target=target, steps=ctx.scale.profile_steps)
    table = PROFILERS[target](ctx)
    ctx.figures["table"] = table
    write_text(ctx.out / "profile.txt", f"# top operators: {target} ({ctx.figures['sorted_by']})\n{table}\n")
    rows = [line.strip() for line in table.splitlines()[3:] if line.strip() and not line.startswith("-")]
    top = next((r.split("  ")[0] for r in rows if not r.startswith("ProfilerStep")), "?")
    return f"{target}: top operator {top} (profile.txt)"


# ---------------------------------------------------------------------------------------------
# The registry: name -> (function, share of the budget). Order is run order; profile last.
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Part:
    """A suite part: what it runs and its share of the time budget (weights are relative)."""

    run: Callable[[Context], str]
    weight: float


PARTS: dict[str, Part] = {
    "setup": Part(setup_part, 3),  # always run first (gpu_suite adds it); every part needs it
    "train": Part(train_part, 5),
    "reward": Part(reward_part, 2),
    "infer": Part(infer_part, 4),
    "synthesize": Part(synthesize_part, 1),
    "mosaic": Part(mosaic_part, 1),
    "profile": Part(profile_part, 1),
}

