"""What a training run is built from: the accelerator, the trainable ControlNet and its optimizer, the data.

Each piece is made from the run's config (`conf/train.yaml`); `loop.train` puts them together.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader

from seg2sat.data.augment import cache_safe
from seg2sat.data.dataset import PreparedDataset, ShardedEpochSampler, collate
from seg2sat.data.latent_cache import LatentCache
from seg2sat.errors import Seg2SatError
from seg2sat.generation.devices import auto_flag, speed_up
from seg2sat.generation.models import Components, build_controlnet
from seg2sat.training.checkpoint import TrainState, resolve_resume
from seg2sat.training.reward import Reward

log = logging.getLogger(__name__)


def make_accelerator(cfg: DictConfig, run_dir: Path) -> Any:
    """The run's Accelerator: accumulation, mixed precision, the tracker (wandb offline by default)."""
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


def flat_config(cfg: DictConfig) -> dict[str, Any]:
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


def make_optimizer(cfg: DictConfig, params: Any) -> torch.optim.Optimizer:
    """AdamW (fused), or bitsandbytes' 8-bit AdamW with `use_8bit_adam`."""
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


def num_workers(cfg: DictConfig, device: torch.device, local_world: int = 1) -> int:
    """DataLoader workers; `auto`: 0 on CPU, else this machine's cores per process less one (<= 8).

    On CPU the cores are better spent computing; on a GPU host the workers decode and augment
    while the device computes.
    """
    if str(cfg.num_workers) != "auto":
        return int(cfg.num_workers)
    cores = max(1, (os.cpu_count() or 1) // max(1, local_world) - 1)
    return min(8, cores) if device.type == "cuda" else 0


def make_dataloader(ds: PreparedDataset, cfg: DictConfig, state: TrainState,
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
class Trainables:
    """The prepared (possibly DDP-wrapped) model, optimizer and lr schedule.

    `train` holds them only here, so `_teardown` can drop the last references between barriers.
    """

    controlnet: Any
    optimizer: Any
    lr_scheduler: Any
    reward: Reward | None = None  # the frozen segmenter of a reward fine-tune (`reward:` group)


def trainable_controlnet(cfg: DictConfig, comps: Components) -> Any:
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

    `auto` turns each on for CUDA only (`devices.auto_flag`); channels_last and compile are
    `devices.speed_up`'s. None of them changes what is computed.
    """
    tf32 = auto_flag(cfg.tf32, device) and device.type == "cuda"
    if tf32:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    chosen = speed_up((comps.unet, controlnet), device, cfg.compile, cfg.channels_last,
                      str(cfg.compile_mode) if cfg.compile_mode else None)
    chosen["tf32"] = tf32
    log.info("train: speed-ups %s", chosen)
    return chosen


def train_dataset(cfg: DictConfig, comps: Components, accelerator: Any) -> PreparedDataset:
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


def prepare_trainables(cfg: DictConfig, controlnet: Any, accelerator: Any) -> Trainables:
    """Optimizer and lr schedule, then all three prepared by accelerate (DDP, mixed precision)."""
    from diffusers.optimization import get_scheduler

    optimizer = make_optimizer(cfg, param_groups(controlnet, float(cfg.learning_rate), float(cfg.zero_conv_lr_scale)))
    # Counted in optimizer steps times processes, as accelerate steps a prepared scheduler.
    lr_scheduler = get_scheduler(str(cfg.lr_scheduler), optimizer,
                                 num_warmup_steps=int(cfg.lr_warmup_steps) * accelerator.num_processes,
                                 num_training_steps=int(cfg.max_steps) * accelerator.num_processes)
    return Trainables(*accelerator.prepare(controlnet, optimizer, lr_scheduler))


def resume_state(accelerator: Any, run_dir: Path, resume: str | None) -> TrainState:
    """Load the checkpoint `resume` names (model, optimizer, RNG states) and its position."""
    ckpt = resolve_resume(run_dir, resume)
    if ckpt is None:
        return TrainState()
    accelerator.load_state(str(ckpt))
    state = TrainState.from_file(ckpt / "trainer_state.json")
    log.info("train: resumed from %s at step %d", ckpt, state.global_step)
    return state
