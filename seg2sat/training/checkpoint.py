"""Training checkpoints: written whole or not at all, listed newest last, resumed exactly.

A checkpoint is written to a temp folder (every rank's model, optimizer, scheduler and RNG
states, the ControlNet in diffusers format, `trainer_state.json`) and renamed when complete, so
`kill -9` never leaves a checkpoint that looks finished; the next run sweeps the temp folder.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from seg2sat.atomic import TMP_PREFIX, write_json
from seg2sat.errors import Seg2SatError

CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")


@dataclass
class TrainState:
    """Where training is; saved in every checkpoint as trainer_state.json."""

    global_step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0  # micro-batches of this rank already consumed in `epoch`
    samples_seen: int = 0  # over all ranks



def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first (temp folders of killed runs are not listed)."""
    folder = run_dir / "checkpoints"
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := CHECKPOINT_RE.match(p.name))]
    return [p for _, p in sorted(found)]


def resolve_resume(run_dir: Path, resume: str | None) -> Path | None:
    """`latest` -> newest complete checkpoint (None if there is none); a path -> that path."""
    if not resume:
        return None
    if resume == "latest":
        ckpts = list_checkpoints(run_dir)
        return ckpts[-1] if ckpts else None
    path = Path(resume)
    if not (path / "trainer_state.json").exists():
        raise Seg2SatError(f"{path}: not a complete checkpoint (no trainer_state.json)")
    return path


def save_checkpoint(accelerator: Any, controlnet: Any, state: TrainState, run_dir: Path, limit: int | None) -> Path:
    """Save model/optimizer/scheduler/RNG states atomically as checkpoints/checkpoint-<step>."""
    folder = run_dir / "checkpoints"
    final = folder / f"checkpoint-{state.global_step}"
    tmp = folder / f"{TMP_PREFIX}checkpoint-{state.global_step}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()  # every rank's RNG state is in tmp before it is renamed
    if accelerator.is_main_process:
        accelerator.unwrap_model(controlnet).save_pretrained(tmp / "controlnet", safe_serialization=True)
        write_json(tmp / "trainer_state.json", asdict(state))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        if limit:
            for old in list_checkpoints(run_dir)[:-limit]:
                shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def sweep_checkpoint_tmp(run_dir: Path) -> None:
    """Remove the half-written checkpoint and validation folders a killed run left."""
    for p in [*(run_dir / "checkpoints").glob(f"{TMP_PREFIX}*"), *(run_dir / "validation").glob(f"{TMP_PREFIX}*")]:
        shutil.rmtree(p, ignore_errors=True)
