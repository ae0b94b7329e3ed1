"""Training throughput (samples/s): our loop side by side with diffusers' own script.

Rows, all in one run, on the same data, base folder, initial ControlNet, batch, resolution,
learning rate and precision:
- `diffusers train_controlnet.py`: diffusers' real example script (fetched at a tag, never
  committed; see benchmarks/diffusers_peer.py), run unmodified in a subprocess, timed from the
  per-step wall times it logs. Given with `--diffusers-script`.
- `naive`: the same algorithm in this process (VAE and text encoder every step, a host sync
  every step), the in-process stand-in for the script when it is not at hand.
- `ours, no cache` and `ours, latent cache`: seg2sat's `train()`, steady state (second log
  interval). The cache holds VAE posteriors and text embeddings, built once per dataset and base.
Targets on 2 CPU cores, tiny preset: >= 1.3x the peer with the cache, >= 1.0x without.
On a GPU it also prints model FLOPs per sample (torch.utils.flop_counter) and MFU.
A JSON record goes to benchmarks/results/ (device, versions, settings, figures).

    python benchmarks/bench_train.py                                  # tiny preset, CPU
    python benchmarks/bench_train.py --diffusers-script /tmp/train_controlnet.py
    python benchmarks/bench_train.py --preset sd21_base_random --resolution 512 \\
        --mixed-precision bf16 --batch-size 16 --diffusers-script /tmp/train_controlnet.py   # GPU
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from devices import device_name, peak_tflops, versions

from seg2sat.config import compose
from seg2sat.data.dataset import PreparedDataset, collate, hint_to_float
from seg2sat.generation.models import (
    EMBEDDED_TINY_BASE,
    build_controlnet,
    load_components,
    save_pipeline_parts,
)
from seg2sat.generation.tiny import (
    TINY_PRESET,
    TINY_RESOLUTION,
    build_sd21_base_random_components,
    build_tiny_components,
)
from seg2sat.stages import prepare, sample_data, train
from seg2sat.training.setup import num_workers


def _peak_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def make_data(root: Path, resolution: int, tiles: int) -> Path:
    """Synthetic FLAIR-layout tiles at `resolution`, prepared."""
    common = [f"paths.root_dir={root}"]
    per_domain = max(1, tiles // 3)
    sample_data.run(compose("sample_data", [*common, "domains=[D064_2021,D033_2020,D075_2019]",
                                            f"tiles_per_domain={per_domain}", f"size={resolution}"]))
    return Path(prepare.run(compose("prepare", [*common, "split.val_fraction=0"])).prepared_dir)


def model_overrides(preset: str, root: Path, base: str) -> list[str]:
    """Hydra overrides selecting the base, always a folder on disk (the peer script loads it too).

    The initial ControlNet is saved to a folder as well, so every loop starts from the same weights.
    """
    if preset == TINY_PRESET:
        folder = EMBEDDED_TINY_BASE if base == "embedded" else root / "tiny_random"
        if base != "embedded" and not (folder / "model_index.json").exists():
            save_pipeline_parts(build_tiny_components(0), folder)
        model = ["model=tiny", f"model.pretrained_dir={folder}"]
    else:
        folder = root / "sd21_base_random"
        if not (folder / "model_index.json").exists():
            save_pipeline_parts(build_sd21_base_random_components(0), folder)
        model = ["model=sd21_base", f"model.base={folder}"]
    init = root / f"controlnet_init_{preset}_{base}"
    if not (init / "config.json").exists():
        comps = load_components(compose("train", model).model)
        build_controlnet(compose("train", model).model, comps.unet, comps.vae).save_pretrained(init)
    return [*model, f"model.controlnet_init={init}"]


def base_folder(overrides: list[str]) -> Path:
    """The base folder named in `model_overrides`' result."""
    for o in overrides:
        if o.startswith(("model.pretrained_dir=", "model.base=")):
            return Path(o.split("=", 1)[1])
    raise ValueError(overrides)


def flops_per_sample(cfg) -> float:
    """Model FLOPs of one cached training sample (UNet forward, its backward to the residuals,
    ControlNet forward and backward), counted by torch.utils.flop_counter on a batch of 1."""
    from torch.utils.flop_counter import FlopCounterMode

    from seg2sat.training.objective import compute_loss

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = {"no": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[str(cfg.mixed_precision)]
    comps = load_components(cfg.model, dtype=dtype, device=device)
    controlnet = build_controlnet(cfg.model, comps.unet, comps.vae).float().to(device).train()
    res = int(cfg.resolution)
    lat = res // (2 ** (len(comps.vae.config.block_out_channels) - 1))
    text = torch.zeros(1, comps.tokenizer.model_max_length, comps.text_encoder.config.hidden_size, device=device)
    batch = {"latent_mean": torch.zeros(1, 4, lat, lat, device=device),
             "latent_std": torch.ones(1, 4, lat, lat, device=device), "text_embeds": text,
             "conditioning": torch.zeros(1, 3, res, res, device=device)}
    gen = torch.Generator(device=device).manual_seed(0)
    with FlopCounterMode(display=False) as counter, torch.autocast(device.type, dtype=dtype,
                                                                   enabled=dtype != torch.float32):
        compute_loss(batch, comps, controlnet, gen, dtype).backward()
    return float(counter.get_total_flops())


def naive_loop(cfg, steps: int, warmup: int) -> tuple[float, float]:
    """diffusers-example style: VAE + text encoder every step, loss.item() every step."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = {"no": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[str(cfg.mixed_precision)]
    comps = load_components(cfg.model, dtype=dtype, device=device)
    controlnet = build_controlnet(cfg.model, comps.unet, comps.vae).float().to(device).train()
    if cfg.gradient_checkpointing:
        controlnet.enable_gradient_checkpointing()
    opt = torch.optim.AdamW(controlnet.parameters(), lr=1e-5)
    ds = PreparedDataset(cfg.prepared_dir, "train", resolution=int(cfg.resolution), tokenizer=comps.tokenizer)
    loader = torch.utils.data.DataLoader(ds, batch_size=int(cfg.batch_size), shuffle=True, collate_fn=collate,
                                         drop_last=True, num_workers=num_workers(cfg, device),
                                         pin_memory=device.type == "cuda")
    done, t0 = 0, None
    _reset_peak(device)
    while done < warmup + steps:
        for batch in loader:
            if done == warmup:
                if device.type == "cuda":
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
            with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
                with torch.no_grad():
                    latents = comps.vae.encode(batch["pixel_values"].to(device, dtype)).latent_dist.sample()
                    latents = latents.float() * comps.vae.config.scaling_factor
                    text = comps.text_encoder(batch["input_ids"].to(device))[0]
                noise = torch.randn_like(latents)
                t = torch.randint(0, 1000, (latents.shape[0],), device=device)
                noisy = comps.noise_scheduler.add_noise(latents, noise, t)
                cond = hint_to_float(batch["conditioning"].to(device))
                down, mid = controlnet(noisy, t, encoder_hidden_states=text, controlnet_cond=cond, return_dict=False)
                pred = comps.unet(noisy.to(dtype), t, encoder_hidden_states=text,
                                  down_block_additional_residuals=[r.to(dtype) for r in down],
                                  mid_block_additional_residual=mid.to(dtype)).sample
            loss = F.mse_loss(pred.float(), noise)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(controlnet.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            loss.item()  # the per-step host sync of the example's progress bar
            done += 1
            if done >= warmup + steps:
                break
    if device.type == "cuda":
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    return steps * int(cfg.batch_size) / dt, _peak_mb(device)


def our_loop(cfg_overrides: list[str], root: Path, steps: int, cache: bool) -> tuple[float, float]:
    """seg2sat's train(): two log intervals of `steps`; the second is the steady-state rate."""
    cfg = compose("train", [*cfg_overrides, f"run_name=bench-{'cache' if cache else 'nocache'}",
                            f"cache_latents={str(cache).lower()}", f"max_steps={2 * steps}",
                            f"log_every={steps}", f"checkpointing_steps={10 * steps}", "validation_steps=0",
                            "resume=null"])
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    _reset_peak(device)
    result = train.run(cfg)
    return float(result.samples_per_s), _peak_mb(device)


def _peer_row(args, cfg, root: Path, prepared: Path, resolution: int) -> tuple[str, float, float | None] | None:
    """diffusers' script on the same data and weights, or None without --diffusers-script."""
    if args.diffusers_script is None:
        return None
    from diffusers_peer import export_parquet, run_peer

    data = export_parquet(prepared, root / "peer_data")
    init = Path(next(o.split("=", 1)[1] for o in args.overrides if o.startswith("model.controlnet_init=")))
    run = run_peer(args.diffusers_script, base=base_folder(args.overrides), controlnet=init, data_dir=data,
                   out_dir=root / f"peer_run_{time.time_ns()}", resolution=resolution, batch_size=args.batch_size,
                   warmup=args.steps, steps=args.steps, learning_rate=float(cfg.learning_rate),
                   precision=args.mixed_precision, empty_prompt_prob=float(cfg.empty_prompt_prob),
                   workers=num_workers(cfg, torch.device("cuda" if torch.cuda.is_available() else "cpu")))
    return (f"diffusers {args.diffusers_script.name}", run.samples_per_s, None)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", choices=[TINY_PRESET, "sd21_base_random"], default=TINY_PRESET)
    ap.add_argument("--base", choices=["embedded", "random"], default="embedded",
                    help="tiny preset: the shipped base (the demo's) or random weights")
    ap.add_argument("--resolution", type=int, default=None, help="default: 64 (tiny), 512 (sd21)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--steps", type=int, default=20, help="timed steps per loop (after as many warm-up)")
    ap.add_argument("--tiles", type=int, default=48)
    ap.add_argument("--mixed-precision", default="no", choices=["no", "bf16", "fp16"])
    ap.add_argument("--gradient-checkpointing", action="store_true")
    ap.add_argument("--workers", default="auto", help="DataLoader workers of both in-process loops "
                    "(auto: 0 on CPU, cores per GPU less one)")
    ap.add_argument("--diffusers-script", type=Path, default=None,
                    help="diffusers' examples/controlnet/train_controlnet.py (fetched at a tag)")
    ap.add_argument("--no-naive", action="store_true", help="skip the in-process naive loop")
    ap.add_argument("--set", dest="extra", action="append", default=[],
                    help="extra Hydra override for our loop (repeatable), e.g. --set compile=true")
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--prepared", type=Path, default=None, help="reuse this prepared dataset (skip making one)")
    ap.add_argument("--json", type=Path, default=None, help="where to write the record "
                    "(default benchmarks/results/train_<device>_<preset>.json)")
    args = ap.parse_args()
    resolution = args.resolution or (TINY_RESOLUTION if args.preset == TINY_PRESET else 512)
    device = "cuda" if torch.cuda.is_available() else "cpu"

    root = args.workdir or Path(tempfile.mkdtemp(prefix="bench_train_"))
    t0 = time.perf_counter()
    prepared = args.prepared or make_data(root, resolution, args.tiles)
    args.overrides = [f"paths.root_dir={root}", f"prepared_dir={prepared}",
                      *model_overrides(args.preset, root, args.base), f"resolution={resolution}",
                      f"batch_size={args.batch_size}", f"mixed_precision={args.mixed_precision}",
                      f"gradient_checkpointing={str(args.gradient_checkpointing).lower()}",
                      f"num_workers={args.workers}", *args.extra]
    cfg = compose("train", args.overrides)
    print(f"setup (data + base) {time.perf_counter() - t0:.1f} s; preset {args.preset} ({args.base}), "
          f"{resolution}px, batch {args.batch_size}, precision {args.mixed_precision}, extra {args.extra}")

    # The cache is built once (timed) and reused by every later run.
    t0 = time.perf_counter()
    our_loop(args.overrides, root, 1, cache=True)
    cache_s = time.perf_counter() - t0
    rows: list[tuple[str, float, float | None]] = []
    peer = _peer_row(args, cfg, root, prepared, resolution)
    if peer:
        rows.append(peer)
    if not args.no_naive:
        rows.append(("naive (re-encode every step)", *naive_loop(cfg, args.steps, args.steps)))
    rows.append(("ours, no cache", *our_loop(args.overrides, root, args.steps, cache=False)))
    rows.append(("ours, latent cache", *our_loop(args.overrides, root, args.steps, cache=True)))

    flops = flops_per_sample(cfg)
    peak = peak_tflops(torch.device(device))
    base_sps = rows[0][1]
    mem = "peak GPU MB" if device == "cuda" else "peak RSS MB"
    print(f"\n{'loop':<36} {'samples/s':>10} {'ratio':>7} {'TFLOP/s':>8} {'MFU':>6} {mem:>12}")
    records = []
    for name, sps, mb in rows:
        tflops = sps * flops / 1e12
        mfu = tflops / peak if peak else None
        mfu_s = f"{100 * mfu:5.1f}%" if mfu is not None else "   n/a"
        mb_s = f"{mb:12.0f}" if mb is not None else f"{'n/a':>12}"
        print(f"{name:<36} {sps:>10.2f} {sps / base_sps:>6.2f}x {tflops:>8.3f} {mfu_s:>6} {mb_s}")
        records.append({"loop": name, "samples_per_s": round(sps, 3), "ratio": round(sps / base_sps, 3),
                        "tflops": round(tflops, 4), "mfu": None if mfu is None else round(mfu, 4), "peak_mb": mb})
    print(f"(ratios against '{rows[0][0]}'; model FLOPs per cached sample {flops / 1e9:.2f} GFLOP; "
          f"cache build + 2 steps {cache_s:.1f} s, paid once per dataset and base)")
    out = args.json or Path(__file__).parent / "results" / f"train_{device}_{args.preset}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "benchmark": "train", "device": device_name(torch.device(device)),
        "threads": torch.get_num_threads(), "versions": versions(),
        "settings": {"preset": args.preset, "base": args.base, "resolution": resolution,
                     "batch_size": args.batch_size, "precision": args.mixed_precision, "steps": args.steps,
                     "tiles": args.tiles, "workers": args.workers, "extra": args.extra,
                     "peer": str(args.diffusers_script.name) if args.diffusers_script else None},
        "flops_per_sample": flops, "peak_tflops": peak, "rows": records, "cache_build_s": round(cache_s, 2),
    }, indent=1) + "\n")
    print(f"record: {out}")


if __name__ == "__main__":
    main()
