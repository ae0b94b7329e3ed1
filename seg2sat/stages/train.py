"""`seg2sat train`: fine-tune a ControlNet (see seg2sat/training/loop.py)."""

from __future__ import annotations

from omegaconf import DictConfig

from seg2sat.errors import Seg2SatError
from seg2sat.training.loop import TrainResult, train


def run(cfg: DictConfig) -> TrainResult:
    """Train as configured; returns the run folder, last loss and checkpoints."""
    if cfg.model.get("unsupported_for_training"):
        raise Seg2SatError(f"model preset {cfg.model.name!r} cannot be trained by this loop yet "
                           "(SD 1.x/2.x UNets only); use sd15 or sd21_base")
    return train(cfg)
