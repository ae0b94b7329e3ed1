"""ControlNet fine-tuning with accelerate: one process or many, exact resume, atomic checkpoints.

What differs from diffusers' example script (and why):
- checkpoints are written to a temp folder and renamed when complete, so `kill -9` never
  leaves a checkpoint that looks finished;
- resume restores the position inside the epoch: the sampler order depends only on
  (seed, epoch), and noise/timesteps for a step are drawn from a generator seeded by
  (seed, step, rank), so a resumed run is identical to an uninterrupted one;
- validation is spread over all ranks and gathered, so no rank waits into a collective
  timeout while rank 0 samples;
- hints are never resized with bilinear filtering; latents can come from a cache;
- the loss is synchronised with the host only at log intervals.
"""

from __future__ import annotations

import logging
import math
import os
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from PIL import Image
from torch.utils.data import DataLoader

from seg2sat import faults
from seg2sat.atomic import atomic_dir, check_space, write_text
from seg2sat.data.augment import cache_safe
from seg2sat.data.dataset import (
    LatentCache,
    PreparedDataset,
    ShardedEpochSampler,
    collate,
    load_rgb,
    read_manifest,
)
from seg2sat.errors import Seg2SatError
from seg2sat.generation.models import Components, auto_flag, build_controlnet, load_components
from seg2sat.training.checkpoint import (
    TrainState,
    list_checkpoints,
    resolve_resume,
    save_checkpoint,
    sweep_checkpoint_tmp,
)
from seg2sat.training.objective import compute_loss, diffusion_forward
from seg2sat.training.reward import Reward, codes_of_hint, load_reward, reward_loss

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """What a training run produced."""

    run_dir: Path
    global_step: int
    last_loss: float | None
    checkpoints: list[Path]
    samples_per_s: float | None
    peak_memory_mb: float
    seen: list[tuple[int, int]] = field(default_factory=list)  # (epoch, index) of this rank
    controlnet: Any = None  # the trained model (unwrapped), for callers that go on using it
    last_reward: float | None = None  # the reward's cross-entropy at the last log (reward fine-tunes)


# ---------------------------------------------------------------------------------------------
# Setup
# ---------------------------------------------------------------------------------------------


def _accelerator(cfg: DictConfig, run_dir: Path) -> Any:
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration

    log_with = None if cfg.logger.name == "none" else cfg.logger.name
    if log_with == "wandb":
        os.environ.setdefault("WANDB_MODE", str(cfg.logger.mode))
        os.environ.setdefault("WANDB_DIR", str(run_dir))
        os.environ.setdefault("WANDB_CACHE_DIR", str(run_dir / ".wandb-cache"))
    return Accelerator(
        gradient_accumulation_steps=int(cfg.gradient_accumulation_steps),
        mixed_precision=str(cfg.mixed_precision),
        log_with=log_with,
        project_config=ProjectConfiguration(project_dir=str(run_dir), logging_dir=str(run_dir / "logs")),
    )


def _flat_config(cfg: DictConfig) -> dict[str, Any]:
    """The config as flat `a.b: scalar` pairs (TensorBoard's hparams accept nothing else)."""
    out: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, f"{prefix}{key}.")
        else:
            out[prefix[:-1]] = node if isinstance(node, (int, float, str, bool)) else str(node)

    walk(OmegaConf.to_container(cfg, resolve=True), "")
    return out


def _weight_dtype(mixed_precision: str) -> torch.dtype:
    return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(mixed_precision, torch.float32)


# The ControlNet's zero-initialised layers: the hint encoder's last conv and the convs that add
# its residuals into the UNet. `zero_conv_lr_scale` gives them their own learning rate.
ZERO_CONV_PREFIXES = ("controlnet_down_blocks.", "controlnet_mid_block.", "controlnet_cond_embedding.conv_out.")


def param_groups(controlnet: torch.nn.Module, lr: float, zero_conv_lr_scale: float) -> list[dict[str, Any]]:
    """Two groups: the zero-initialised convs at `lr * zero_conv_lr_scale`, the rest at `lr`.

    With Adam a zero-initialised weight moves about `lr` per step whatever its gradient, so
    the residuals a ControlNet adds grow only as fast as its zero convs do; scaling their
    rate alone speeds that growth without moving the copied encoder faster.
    """
    zero, rest = [], []
    for name, p in controlnet.named_parameters():
        (zero if name.startswith(ZERO_CONV_PREFIXES) else rest).append(p)
    groups = [{"params": rest, "lr": lr}]
    if zero:
        groups.append({"params": zero, "lr": lr * zero_conv_lr_scale})
    return groups


def _optimizer(cfg: DictConfig, params: Any) -> torch.optim.Optimizer:
    kwargs = {"lr": float(cfg.learning_rate), "betas": (float(cfg.adam_beta1), float(cfg.adam_beta2)),
              "weight_decay": float(cfg.adam_weight_decay), "eps": float(cfg.adam_epsilon)}
    if cfg.use_8bit_adam:
        try:
            import bitsandbytes as bnb
        except ImportError as exc:
            raise Seg2SatError("use_8bit_adam=true needs bitsandbytes (pip install bitsandbytes, GPU only)") from exc
        return bnb.optim.AdamW8bit(params, **kwargs)
    # Fused AdamW (one kernel for all tensors; CPU and CUDA): ~30% faster steps than the
    # default per-tensor AdamW on the tiny preset (benchmarks/bench_train.py measures it).
    return torch.optim.AdamW(params, fused=bool(cfg.get("fused_adam", True)), **kwargs)


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KB on Linux


def _step_generator(seed: int, step: int, rank: int, device: torch.device) -> torch.Generator:
    """Noise and timesteps of a step depend only on (seed, step, rank): exact resume."""
    g = torch.Generator(device=device)
    g.manual_seed(int(np.random.SeedSequence([seed, step, rank]).generate_state(1)[0]))
    return g


# ---------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------


def validate(accelerator: Any, comps: Components, controlnet: Any, cfg: DictConfig, run_dir: Path,
             step: int) -> Path | None:
    """Generate the fixed validation maps, spread over ranks; main saves images and a grid."""
    from seg2sat.generation.models import _pipeline
    from seg2sat.generation.pipeline import generate

    records = read_manifest(cfg.prepared_dir, "val")[: int(cfg.num_validation_images)]
    if not records:
        return None
    parts = {"vae": comps.vae, "text_encoder": comps.text_encoder, "tokenizer": comps.tokenizer,
             "unet": comps.unet, "scheduler": comps.noise_scheduler}
    pipe = _pipeline(parts, accelerator.unwrap_model(controlnet), "unipc")
    pipe.set_progress_bar_config(disable=True)
    mine = list(range(accelerator.process_index, len(records), accelerator.num_processes))
    outputs = []
    for i in mine:
        rec = records[i]
        hint = load_rgb(Path(cfg.prepared_dir) / rec["hint"])
        with torch.autocast(accelerator.device.type, enabled=accelerator.mixed_precision != "no"):
            image = generate(pipe, hint, rec["caption"], steps=int(cfg.validation_inference_steps),
                             guidance_scale=float(cfg.validation_guidance_scale), seed=int(cfg.seed) + i)
        outputs.append((i, hint, image))
    gathered = accelerator.gather_for_metrics(outputs, use_gather_object=True)
    if not accelerator.is_main_process:
        return None
    gathered = sorted(gathered, key=lambda t: t[0])
    out = run_dir / "validation" / f"step-{step}"
    grid = np.concatenate([np.concatenate([hint, image], axis=0) for _, hint, image in gathered], axis=1)
    with atomic_dir(out, overwrite=True) as tmp:  # the step's folder appears whole, or not at all
        for i, _, image in gathered:
            Image.fromarray(image).save(tmp / f"{i:02d}.png")
        Image.fromarray(grid).save(tmp / "grid.png")
    for tracker in accelerator.trackers:
        if tracker.name == "wandb":
            import wandb

            tracker.log({"validation": [wandb.Image(grid, caption=f"step {step}")]}, step=step)
        elif tracker.name == "tensorboard":
            tracker.writer.add_image("validation", grid, step, dataformats="HWC")
    return out / "grid.png"


# ---------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------


def num_workers(cfg: DictConfig, device: torch.device, local_world: int = 1) -> int:
    """DataLoader workers; `auto`: 0 on CPU, else this machine's cores per process less one (<= 8).

    On CPU the cores are better spent computing; on a GPU host the workers decode and augment
    while the device computes.
    """
    if str(cfg.num_workers) != "auto":
        return int(cfg.num_workers)
    cores = max(1, (os.cpu_count() or 1) // max(1, local_world) - 1)
    return min(8, cores) if device.type == "cuda" else 0


def _dataloader(ds: PreparedDataset, cfg: DictConfig, state: TrainState,
                accelerator: Any) -> tuple[DataLoader, ShardedEpochSampler]:
    """One loader for the whole run: its sampler is moved on with `set_epoch`, so workers persist."""
    sampler = ShardedEpochSampler(len(ds), int(cfg.seed), state.epoch, accelerator.process_index,
                                  accelerator.num_processes, int(cfg.batch_size), state.batch_in_epoch)
    workers = num_workers(cfg, accelerator.device, int(os.environ.get("LOCAL_WORLD_SIZE", 1)))  # set by torchrun
    loader = DataLoader(ds, batch_size=int(cfg.batch_size), sampler=sampler, collate_fn=collate,
                        num_workers=workers, persistent_workers=workers > 0,
                        prefetch_factor=int(cfg.prefetch_factor) if workers > 0 else None,
                        pin_memory=accelerator.device.type == "cuda" and bool(cfg.pin_memory))
    return loader, sampler


@dataclass
class _Trainables:
    """The prepared (possibly DDP-wrapped) model, optimizer and lr schedule.

    `train` holds them only here, so `_teardown` can drop the last references between barriers.
    """

    controlnet: Any
    optimizer: Any
    lr_scheduler: Any
    reward: Reward | None = None  # the frozen segmenter of a reward fine-tune (`reward:` group)


@dataclass
class _Meter:
    """Loss and throughput since the last log, and the samples this rank has seen."""

    loss_sum: torch.Tensor  # on the device: summed without a host sync
    loss_count: int = 0
    reward_sum: float = 0.0  # the reward's cross-entropy on reward steps (this rank's)
    reward_count: int = 0
    last_reward: float | None = None
    samples: int = 0  # over all ranks, since the last log
    t_start: float = field(default_factory=time.perf_counter)
    last_loss: float | None = None
    samples_per_s: float | None = None
    seen: list[tuple[int, int]] = field(default_factory=list)

    def add(self, loss: torch.Tensor, batch: dict[str, Any], world: int, reward: torch.Tensor | None = None) -> None:
        """Count one micro-batch of this rank."""
        self.seen.extend(zip(batch["epoch"].tolist(), batch["index"].tolist(), strict=True))
        self.loss_sum += loss.detach()
        self.loss_count += 1
        if reward is not None:
            self.reward_sum += float(reward.detach())
            self.reward_count += 1
        self.samples += len(batch["index"]) * world

    def restart(self) -> None:
        """Start a new logging interval."""
        self.loss_sum.zero_()
        self.loss_count, self.t_start, self.samples = 0, time.perf_counter(), 0
        self.reward_sum, self.reward_count = 0.0, 0


def _due(step: int, every: int, max_steps: int) -> bool:
    """Periodic work runs every `every` steps and after the last one."""
    return step % every == 0 or step == max_steps


def _init_run_dir(accelerator: Any, cfg: DictConfig, run_dir: Path, resolved_base: str) -> None:
    """Main process: create the run folder, sweep killed runs' temp checkpoints, save the config.

    The saved config records the base actually loaded (export copies exactly that one).
    """
    if accelerator.is_main_process:
        check_space(run_dir, 0)  # a folder we can write (a read-only one is one line, not a traceback)
        (run_dir / "checkpoints").mkdir(exist_ok=True)
        sweep_checkpoint_tmp(run_dir)
        saved = OmegaConf.to_container(cfg, resolve=True)
        saved["resolved_base"] = resolved_base
        write_text(run_dir / "config.yaml", OmegaConf.to_yaml(OmegaConf.create(saved)))
    accelerator.wait_for_everyone()


def _trainable_controlnet(cfg: DictConfig, comps: Components) -> Any:
    """The ControlNet to train, in fp32, with PyTorch's fused attention in it and the UNet."""
    from diffusers.models.attention_processor import AttnProcessor2_0

    controlnet = build_controlnet(cfg.model, comps.unet, comps.vae).float().train()
    if cfg.gradient_checkpointing:
        controlnet.enable_gradient_checkpointing()
    controlnet.set_attn_processor(AttnProcessor2_0())
    comps.unet.set_attn_processor(AttnProcessor2_0())
    return controlnet


def apply_speedups(cfg: DictConfig, comps: Components, controlnet: Any, device: torch.device) -> dict[str, bool]:
    """channels_last, torch.compile and TF32 for the UNet and ControlNet, as configured.

    `auto` turns each on for CUDA only (`models.auto_flag`). Compilation is in place (`nn.Module.compile`), so the modules keep their class for
    saving, unwrapping and the validation pipeline. None of them changes what is computed.
    """
    chosen = {"channels_last": auto_flag(cfg.channels_last, device), "compile": auto_flag(cfg.compile, device),
              "tf32": auto_flag(cfg.tf32, device) and device.type == "cuda"}
    if chosen["tf32"]:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    for module in (comps.unet, controlnet):
        if chosen["channels_last"]:
            module.to(memory_format=torch.channels_last)
        if chosen["compile"]:
            module.compile(mode=str(cfg.compile_mode) if cfg.compile_mode else None)
    log.info("train: speed-ups %s", chosen)
    return chosen


def _train_dataset(cfg: DictConfig, comps: Components, accelerator: Any) -> PreparedDataset:
    """The train split, reading latents and text embeddings from the cache when enabled."""
    cache = None
    if cfg.cache_latents:
        if not cache_safe(cfg.augment):
            raise Seg2SatError("cache_latents=true allows only flips and rot90 augmentations "
                               f"(got {OmegaConf.to_container(cfg.augment)}); set cache_latents=false")
        # Every rank encodes its share of the shards (once, for all runs on this data), then loads it.
        cache, _ = LatentCache.build_or_load(cfg.prepared_dir, "train", comps, int(cfg.resolution), accelerator.device,
                                             rank=accelerator.process_index, world=accelerator.num_processes,
                                             barrier=accelerator.wait_for_everyone)
    return PreparedDataset(cfg.prepared_dir, "train", resolution=int(cfg.resolution), tokenizer=comps.tokenizer,
                           augment=cfg.augment, seed=int(cfg.seed), empty_prompt_prob=float(cfg.empty_prompt_prob),
                           cache=cache)


def _prepare_trainables(cfg: DictConfig, controlnet: Any, accelerator: Any) -> _Trainables:
    """Optimizer and lr schedule, then all three prepared by accelerate (DDP, mixed precision)."""
    from diffusers.optimization import get_scheduler

    optimizer = _optimizer(cfg, param_groups(controlnet, float(cfg.learning_rate), float(cfg.zero_conv_lr_scale)))
    # Counted in optimizer steps times processes, as accelerate steps a prepared scheduler.
    lr_scheduler = get_scheduler(str(cfg.lr_scheduler), optimizer,
                                 num_warmup_steps=int(cfg.lr_warmup_steps) * accelerator.num_processes,
                                 num_training_steps=int(cfg.max_steps) * accelerator.num_processes)
    return _Trainables(*accelerator.prepare(controlnet, optimizer, lr_scheduler))


def _resume(accelerator: Any, run_dir: Path, resume: str | None) -> TrainState:
    """Load the checkpoint `resume` names (model, optimizer, RNG states) and its position."""
    ckpt = resolve_resume(run_dir, resume)
    if ckpt is None:
        return TrainState()
    accelerator.load_state(str(ckpt))
    state = TrainState.from_file(ckpt / "trainer_state.json")
    log.info("train: resumed from %s at step %d", ckpt, state.global_step)
    return state


def _losses(batch: dict[str, Any], cfg: DictConfig, comps: Components, tr: _Trainables, gen: torch.Generator,
            weight_dtype: torch.dtype, step: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The diffusion loss, plus the weighted reward on reward steps; (total, reward or None)."""
    if tr.reward is None or not tr.reward.config.active(step):
        return compute_loss(batch, comps, tr.controlnet, gen, weight_dtype, str(cfg.timestep_sampling)), None
    rc = tr.reward.config
    k = rc.rewarded(len(batch["conditioning"]))
    fwd = diffusion_forward(batch, comps, tr.controlnet, gen, weight_dtype, str(cfg.timestep_sampling),
                            small_t=(k, rc.t_max))
    codes = codes_of_hint(batch["conditioning"].to(comps.unet.device, non_blocking=True))
    reward = reward_loss(fwd, k, comps, tr.reward, codes, gen)
    return fwd.mse() + rc.weight * reward, reward


def _micro_step(batch: dict[str, Any], cfg: DictConfig, accelerator: Any, comps: Components, tr: _Trainables,
                gen: torch.Generator, weight_dtype: torch.dtype, step: int) -> tuple[torch.Tensor, Any]:
    """Forward and backward of one micro-batch; the optimizer steps only when gradients sync."""
    with accelerator.accumulate(tr.controlnet):
        loss, reward = _losses(batch, cfg, comps, tr, gen, weight_dtype, step)
        accelerator.backward(loss)
        if accelerator.sync_gradients and cfg.max_grad_norm:
            accelerator.clip_grad_norm_(tr.controlnet.parameters(), float(cfg.max_grad_norm))
        tr.optimizer.step()
        tr.lr_scheduler.step()
        tr.optimizer.zero_grad(set_to_none=True)
    return loss, reward


def _log_interval(accelerator: Any, meter: _Meter, state: TrainState, lr_scheduler: Any, bar: Any) -> None:
    """Synchronise the loss with the host (only here) and log it with throughput and memory."""
    mean_loss = accelerator.reduce(meter.loss_sum / max(1, meter.loss_count), reduction="mean").item()
    dt = time.perf_counter() - meter.t_start
    meter.samples_per_s = meter.samples / dt if dt > 0 else None
    meter.last_loss = mean_loss
    logs = {"loss": mean_loss, "lr": lr_scheduler.get_last_lr()[0], "samples_per_s": meter.samples_per_s,
            "peak_memory_mb": _peak_memory_mb(accelerator.device), "epoch": state.epoch}
    if meter.reward_count:
        logs["reward_loss"] = meter.reward_sum / meter.reward_count  # this rank's; the reward is logged, not synced
        meter.last_reward = logs["reward_loss"]
    accelerator.log(logs, step=state.global_step)
    bar.set_postfix(loss=f"{mean_loss:.4f}", **({"reward": f"{logs['reward_loss']:.4f}"} if "reward_loss" in logs else {}))
    if not math.isfinite(mean_loss):
        raise Seg2SatError(f"loss became {mean_loss} at step {state.global_step}; lower the learning rate")
    meter.restart()


def _after_optimizer_step(cfg: DictConfig, accelerator: Any, comps: Components, tr: _Trainables,
                          state: TrainState, meter: _Meter, run_dir: Path, bar: Any) -> None:
    """Log, checkpoint and validate when each is due."""
    step, max_steps = state.global_step, int(cfg.max_steps)
    if _due(step, int(cfg.log_every), max_steps):
        _log_interval(accelerator, meter, state, tr.lr_scheduler, bar)
    if _due(step, int(cfg.checkpointing_steps), max_steps):
        save_checkpoint(accelerator, tr.controlnet, state, run_dir, cfg.checkpoints_total_limit)
    if cfg.validation_steps and _due(step, int(cfg.validation_steps), max_steps):
        validate(accelerator, comps, tr.controlnet, cfg, run_dir, step)


def _profiler(cfg: DictConfig, accelerator: Any, run_dir: Path) -> Any:
    """torch.profiler over `profile.active` optimizer steps after `profile.wait` (main process).

    Writes `profile/summary.txt` (operators by total time, host and device) and a Chrome trace
    (`profile/trace.json`, open it in Perfetto) into the run folder; a null context when off.
    """
    import contextlib

    prof_cfg = cfg.get("profile") or {}
    if not prof_cfg.get("enabled") or not accelerator.is_main_process:
        return contextlib.nullcontext()
    from torch.profiler import ProfilerActivity, profile, schedule

    out = run_dir / "profile"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if accelerator.device.type == "cuda" else [])
    sort = "cuda_time_total" if accelerator.device.type == "cuda" else "cpu_time_total"

    def ready(prof: Any) -> None:
        out.mkdir(parents=True, exist_ok=True)
        write_text(out / "summary.txt", prof.key_averages().table(sort_by=sort, row_limit=40) + "\n")
        prof.export_chrome_trace(str(out / "trace.json"))

    return profile(activities=activities, on_trace_ready=ready, record_shapes=True,
                   schedule=schedule(wait=int(prof_cfg.get("wait", 5)), warmup=1, active=int(prof_cfg.get("active", 5)),
                                     repeat=1))


def _train_loop(cfg: DictConfig, accelerator: Any, comps: Components, tr: _Trainables, ds: PreparedDataset,
                state: TrainState, weight_dtype: torch.dtype, run_dir: Path) -> _Meter:
    """Epochs of this rank's batches from `state` on, an optimizer step every `accum` micro-batches."""
    from tqdm.auto import tqdm

    max_steps, accum = int(cfg.max_steps), int(cfg.gradient_accumulation_steps)
    batches_per_epoch = len(ds) // (accelerator.num_processes * int(cfg.batch_size))
    bar = tqdm(total=max_steps, initial=state.global_step, desc="train", disable=not accelerator.is_main_process)
    meter = _Meter(loss_sum=torch.zeros((), device=accelerator.device))
    micro = 0  # micro-batches since the last optimizer step
    loader, sampler = _dataloader(ds, cfg, state, accelerator)
    with _profiler(cfg, accelerator, run_dir) as prof:
        while state.global_step < max_steps:
            sampler.set_epoch(state.epoch, state.batch_in_epoch)
            for batch in loader:
                gen = _step_generator(int(cfg.seed), state.global_step * accum + micro,
                                      accelerator.process_index, accelerator.device)
                micro += 1
                loss, reward = _micro_step(batch, cfg, accelerator, comps, tr, gen, weight_dtype, state.global_step)
                meter.add(loss, batch, accelerator.num_processes, reward)
                state.batch_in_epoch += 1
                if not accelerator.sync_gradients:
                    continue
                micro = 0
                state.global_step += 1
                state.samples_seen += int(cfg.batch_size) * accum * accelerator.num_processes
                bar.update(1)
                _after_optimizer_step(cfg, accelerator, comps, tr, state, meter, run_dir, bar)
                faults.progress("train.step", state.global_step)
                if prof is not None:
                    prof.step()
                if state.global_step >= max_steps:
                    break
            if state.batch_in_epoch >= batches_per_epoch:
                state.epoch += 1
                state.batch_in_epoch = 0
    bar.close()
    if meter.last_loss is None and meter.loss_count:
        meter.last_loss = float((meter.loss_sum / meter.loss_count).item())
    return meter


def _teardown(accelerator: Any, tr: _Trainables) -> Any:
    """End training on every rank together; returns the trained model, unwrapped.

    The DDP wrapper and its gradient hooks are freed while every rank is here (a rank tearing
    them down after another has left was seen to stall on CPU/gloo): `tr` holds the last
    references, dropped between the two barriers.
    """
    trained = accelerator.unwrap_model(tr.controlnet)
    accelerator.wait_for_everyone()
    tr.controlnet = tr.optimizer = tr.lr_scheduler = None
    accelerator.free_memory()
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return trained


def train(cfg: DictConfig) -> TrainResult:
    """Fine-tune a ControlNet as configured by `conf/train.yaml`."""
    from accelerate.utils import set_seed

    run_dir = Path(cfg.run_dir)
    # 1. Accelerator and seeds.
    accelerator = _accelerator(cfg, run_dir)
    set_seed(int(cfg.seed))
    # 2. Frozen base in the weight dtype, the run folder, the trainable ControlNet in fp32.
    weight_dtype = _weight_dtype(str(cfg.mixed_precision))
    comps = load_components(cfg.model, dtype=weight_dtype, device=accelerator.device)
    _init_run_dir(accelerator, cfg, run_dir, comps.base)
    controlnet = _trainable_controlnet(cfg, comps)
    apply_speedups(cfg, comps, controlnet, accelerator.device)
    # 3. Data, through the latent cache when enabled.
    ds = _train_dataset(cfg, comps, accelerator)
    # 4. Optimizer and lr schedule, prepared with the model; the reward's frozen segmenter.
    tr = _prepare_trainables(cfg, controlnet, accelerator)
    tr.reward = load_reward(cfg, cfg.prepared_dir, accelerator.device, accelerator.wait_for_everyone,
                            accelerator.is_main_process)
    # 5. Resume, then trackers (main process).
    state = _resume(accelerator, run_dir, cfg.resume)
    if accelerator.is_main_process:
        accelerator.init_trackers(str(cfg.logger.project), config=_flat_config(cfg))
    # 6. Loop.
    meter = _train_loop(cfg, accelerator, comps, tr, ds, state, weight_dtype, run_dir)
    # 7. Orderly end on every rank.
    trained = _teardown(accelerator, tr)
    return TrainResult(run_dir=run_dir, global_step=state.global_step, last_loss=meter.last_loss,
                       checkpoints=list_checkpoints(run_dir), samples_per_s=meter.samples_per_s,
                       peak_memory_mb=_peak_memory_mb(accelerator.device), seen=meter.seen, controlnet=trained,
                       last_reward=meter.last_reward)
