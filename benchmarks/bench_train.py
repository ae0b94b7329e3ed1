"""Training throughput (samples/s): our loop vs a naive loop that re-encodes every step.

The naive loop is what diffusers' ControlNet example (and the research code's copy of it)
does: every step encodes the images with the VAE and the captions with the text encoder,
and syncs the loss with the host. Ours reads VAE posteriors and text embeddings from the
latent cache (built once, reused across runs) and syncs only at log intervals. Both run in
the same process on the same data, batch size and precision; the printed ratio is the
speed-up. Target on CPU (tiny preset): >= 1.3x.

    python benchmarks/bench_train.py                                  # tiny preset, CPU
    python benchmarks/bench_train.py --preset sd21_base_random \\
        --resolution 512 --mixed-precision bf16 --batch-size 8        # real SD-2.1-base size, GPU
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

from seg2sat.config import compose
from seg2sat.data.dataset import PreparedDataset, collate
from seg2sat.models import (
    TINY_PRESET,
    TINY_RESOLUTION,
    build_controlnet,
    build_sd21_base_random_components,
    load_components,
    save_pipeline_parts,
)
from seg2sat.stages import prepare, sample_data, train


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


def model_overrides(preset: str, root: Path) -> list[str]:
    """Hydra overrides selecting the model; the SD-2.1-size random base is saved to a folder first."""
    if preset == TINY_PRESET:
        return ["model=tiny", f"model.pretrained_dir={root}/none"]
    folder = root / "sd21_base_random"
    if not (folder / "model_index.json").exists():
        save_pipeline_parts(build_sd21_base_random_components(0), folder)
    return ["model=sd21_base", f"model.base={folder}"]


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
                                         drop_last=True, num_workers=int(cfg.num_workers),
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
                cond = batch["conditioning"].to(device)
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", choices=[TINY_PRESET, "sd21_base_random"], default=TINY_PRESET)
    ap.add_argument("--resolution", type=int, default=None, help="default: 64 (tiny), 512 (sd21)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--steps", type=int, default=20, help="timed steps per loop (after as many warm-up)")
    ap.add_argument("--tiles", type=int, default=48)
    ap.add_argument("--mixed-precision", default="no", choices=["no", "bf16", "fp16"])
    ap.add_argument("--gradient-checkpointing", action="store_true")
    ap.add_argument("--workers", type=int, default=0, help="DataLoader workers of our loop")
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--prepared", type=Path, default=None, help="reuse this prepared dataset (skip making one)")
    ap.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    args = ap.parse_args()
    resolution = args.resolution or (TINY_RESOLUTION if args.preset == TINY_PRESET else 512)

    root = args.workdir or Path(tempfile.mkdtemp(prefix="bench_train_"))
    t0 = time.perf_counter()
    prepared = args.prepared or make_data(root, resolution, args.tiles)
    overrides = [f"paths.root_dir={root}", f"prepared_dir={prepared}", *model_overrides(args.preset, root),
                 f"resolution={resolution}", f"batch_size={args.batch_size}",
                 f"mixed_precision={args.mixed_precision}",
                 f"gradient_checkpointing={str(args.gradient_checkpointing).lower()}", f"num_workers={args.workers}"]
    print(f"setup (data + base) {time.perf_counter() - t0:.1f} s; preset {args.preset}, {resolution}px, "
          f"batch {args.batch_size}, precision {args.mixed_precision}")

    # The cache is built once (timed) and reused by every later run.
    t0 = time.perf_counter()
    our_loop(overrides, root, 1, cache=True)
    cache_s = time.perf_counter() - t0
    naive_sps, naive_mb = naive_loop(compose("train", overrides), args.steps, args.steps)
    nocache_sps, nocache_mb = our_loop(overrides, root, args.steps, cache=False)
    cache_sps, cache_mb = our_loop(overrides, root, args.steps, cache=True)

    rows = [("naive (re-encode every step)", naive_sps, naive_mb),
            ("ours, no cache", nocache_sps, nocache_mb),
            ("ours, latent cache", cache_sps, cache_mb)]
    mem = "peak GPU MB" if torch.cuda.is_available() else "peak RSS MB"
    print(f"\n{'loop':<30} {'samples/s':>10} {'ratio':>7} {mem:>12}")
    for name, sps, mb in rows:
        print(f"{name:<30} {sps:>10.2f} {sps / naive_sps:>6.2f}x {mb:>12.0f}")
    print(f"(first run with the cache: build + 2 steps took {cache_s:.1f} s, paid once per dataset and base)")
    if args.json:
        args.json.write_text(json.dumps({"preset": args.preset, "resolution": resolution,
                                         "batch_size": args.batch_size, "precision": args.mixed_precision,
                                         "device": torch.cuda.get_device_name() if torch.cuda.is_available()
                                         else "cpu", "rows": rows, "cache_build_s": cache_s}, indent=1))


if __name__ == "__main__":
    main()
