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
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from seg2sat import faults
from seg2sat.atomic import check_space, write_text
from seg2sat.data.dataset import (
    PreparedDataset,
)
from seg2sat.errors import Seg2SatError
from seg2sat.generation.devices import mixed_precision_dtype
from seg2sat.generation.models import Components, load_components
from seg2sat.training.checkpoint import (
    TrainState,
    list_checkpoints,
    save_checkpoint,
    sweep_checkpoint_tmp,
)
from seg2sat.training.objective import compute_loss, diffusion_forward
from seg2sat.training.profiler import training_profiler
from seg2sat.training.reward import codes_of_hint, load_reward, reward_loss
from seg2sat.training.setup import (
    Trainables,
    apply_speedups,
    flat_config,
    make_accelerator,
    make_dataloader,
    prepare_trainables,
    resume_state,
    train_dataset,
    trainable_controlnet,
)
from seg2sat.training.validation import validate

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
# The loop
# ---------------------------------------------------------------------------------------------


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


def _losses(batch: dict[str, Any], cfg: DictConfig, comps: Components, tr: Trainables, gen: torch.Generator,
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


def _micro_step(batch: dict[str, Any], cfg: DictConfig, accelerator: Any, comps: Components, tr: Trainables,
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


def _after_optimizer_step(cfg: DictConfig, accelerator: Any, comps: Components, tr: Trainables,
                          state: TrainState, meter: _Meter, run_dir: Path, bar: Any) -> None:
    """Log, checkpoint and validate when each is due."""
    step, max_steps = state.global_step, int(cfg.max_steps)
    if _due(step, int(cfg.log_every), max_steps):
        _log_interval(accelerator, meter, state, tr.lr_scheduler, bar)
    if _due(step, int(cfg.checkpointing_steps), max_steps):
        save_checkpoint(accelerator, tr.controlnet, state, run_dir, cfg.checkpoints_total_limit)
    if cfg.validation_steps and _due(step, int(cfg.validation_steps), max_steps):
        validate(accelerator, comps, tr.controlnet, cfg, run_dir, step)


def _train_loop(cfg: DictConfig, accelerator: Any, comps: Components, tr: Trainables, ds: PreparedDataset,
                state: TrainState, weight_dtype: torch.dtype, run_dir: Path) -> _Meter:
    """Epochs of this rank's batches from `state` on, an optimizer step every `accum` micro-batches."""
    from tqdm.auto import tqdm

    max_steps, accum = int(cfg.max_steps), int(cfg.gradient_accumulation_steps)
    batches_per_epoch = len(ds) // (accelerator.num_processes * int(cfg.batch_size))
    bar = tqdm(total=max_steps, initial=state.global_step, desc="train", disable=not accelerator.is_main_process)
    meter = _Meter(loss_sum=torch.zeros((), device=accelerator.device))
    micro = 0  # micro-batches since the last optimizer step
    loader, sampler = make_dataloader(ds, cfg, state, accelerator)
    with training_profiler(cfg, accelerator, run_dir) as prof:
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


def _teardown(accelerator: Any, tr: Trainables) -> Any:
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
    accelerator = make_accelerator(cfg, run_dir)
    set_seed(int(cfg.seed))
    # 2. Frozen base in the weight dtype, the run folder, the trainable ControlNet in fp32.
    weight_dtype = mixed_precision_dtype(str(cfg.mixed_precision))
    comps = load_components(cfg.model, dtype=weight_dtype, device=accelerator.device)
    _init_run_dir(accelerator, cfg, run_dir, comps.base)
    controlnet = trainable_controlnet(cfg, comps)
    apply_speedups(cfg, comps, controlnet, accelerator.device)
    # 3. Data, through the latent cache when enabled.
    ds = train_dataset(cfg, comps, accelerator)
    # 4. Optimizer and lr schedule, prepared with the model; the reward's frozen segmenter.
    tr = prepare_trainables(cfg, controlnet, accelerator)
    tr.reward = load_reward(cfg, cfg.prepared_dir, accelerator.device, accelerator.wait_for_everyone,
                            accelerator.is_main_process)
    # 5. Resume, then trackers (main process).
    state = resume_state(accelerator, run_dir, cfg.resume)
    if accelerator.is_main_process:
        accelerator.init_trackers(str(cfg.logger.project), config=flat_config(cfg))
    # 6. Loop.
    meter = _train_loop(cfg, accelerator, comps, tr, ds, state, weight_dtype, run_dir)
    # 7. Orderly end on every rank.
    trained = _teardown(accelerator, tr)
    return TrainResult(run_dir=run_dir, global_step=state.global_step, last_loss=meter.last_loss,
                       checkpoints=list_checkpoints(run_dir), samples_per_s=meter.samples_per_s,
                       peak_memory_mb=_peak_memory_mb(accelerator.device), seen=meter.seen, controlnet=trained,
                       last_reward=meter.last_reward)
