"""Training checkpoints: written whole or not at all, listed newest last, resumed exactly.

A checkpoint is written to a temp folder (every rank's model, optimizer, scheduler and RNG
states, the ControlNet in diffusers format, `trainer_state.json`, then the checksums of every
file), fsynced and renamed when complete, so `kill -9` never leaves a checkpoint that looks
finished; the next run sweeps the temp folder. A full disk while saving is one `WriteError`
and leaves no temp folder. A checkpoint damaged later (a file truncated or changed) fails its
checksums: `resume=latest` passes over it and resumes from the one before.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from seg2sat import faults
from seg2sat.atomic import TMP_PREFIX, fsync_path, guard_writes, sha256_of, sweep_tmp, write_json
from seg2sat.errors import Seg2SatError

log = logging.getLogger(__name__)
CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
CHECKSUMS = "checksums.json"  # SHA-256 of every file of a checkpoint, written last


@dataclass
class TrainState:
    """Where training is; saved in every checkpoint as trainer_state.json."""

    global_step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0  # micro-batches of this rank already consumed in `epoch`
    samples_seen: int = 0  # over all ranks

    @classmethod
    def from_file(cls, path: Path) -> TrainState:
        """A checkpoint's `trainer_state.json`.

        Raises:
            Seg2SatError: the file is unreadable or holds anything but counts (damaged).
        """
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            values = {f.name: data[f.name] for f in fields(cls)}
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise Seg2SatError(f"{path}: damaged ({type(exc).__name__}: {exc})") from exc
        if not all(type(v) is int and v >= 0 for v in values.values()):
            raise Seg2SatError(f"{path}: damaged (counts that are not whole numbers: {values})")
        return cls(**values)



def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first (temp folders of killed runs are not listed)."""
    folder = run_dir / "checkpoints"
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := CHECKPOINT_RE.match(p.name))]
    return [p for _, p in sorted(found)]


def checkpoint_problem(ckpt: Path) -> str | None:
    """What is wrong with a checkpoint's files against the checksums saved with it (None: whole).

    Checkpoints written before checksums existed are only checked for a readable `trainer_state.json`.
    """
    try:
        TrainState.from_file(ckpt / "trainer_state.json")
    except Seg2SatError as exc:
        return str(exc).split(": ", 1)[-1]
    try:
        sums = json.loads((ckpt / CHECKSUMS).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        return f"unreadable {CHECKSUMS} ({exc})"
    if not isinstance(sums, dict):
        return f"unreadable {CHECKSUMS}"
    for rel, sha in sums.items():
        path = ckpt / str(rel)
        if not path.is_file():
            return f"{rel} is missing"
        if sha256_of(path) != sha:
            return f"{rel} does not match its checksum (truncated or changed)"
    return None


def resolve_resume(run_dir: Path, resume: str | None) -> Path | None:
    """`latest` -> newest whole checkpoint (None if there is none); a path -> that path, checked.

    A damaged checkpoint (a file truncated or changed since it was saved) is passed over with a
    warning: training resumes from the one before and redoes the steps in between.
    """
    if not resume:
        return None
    if resume == "latest":
        for ckpt in reversed(list_checkpoints(run_dir)):
            problem = checkpoint_problem(ckpt)
            if problem is None:
                return ckpt
            log.warning("train: %s is damaged (%s); resuming from an earlier checkpoint", ckpt, problem)
        return None
    path = Path(resume)
    if not (path / "trainer_state.json").exists():
        raise Seg2SatError(f"{path}: not a complete checkpoint (no trainer_state.json)")
    problem = checkpoint_problem(path)
    if problem:
        raise Seg2SatError(f"{path}: damaged checkpoint: {problem}; resume from an earlier one (or resume=latest)")
    return path


def _write_checksums(folder: Path) -> None:
    """`checksums.json`: the SHA-256 of every file of a checkpoint, relative paths."""
    sums = {str(p.relative_to(folder)): sha256_of(p) for p in sorted(folder.rglob("*")) if p.is_file()}
    write_json(folder / CHECKSUMS, sums)


def save_checkpoint(accelerator: Any, controlnet: Any, state: TrainState, run_dir: Path, limit: int | None) -> Path:
    """Save model/optimizer/scheduler/RNG states atomically as checkpoints/checkpoint-<step>.

    1. every rank saves its states into a temp folder (a failed write: one `WriteError`);
    2. main adds the ControlNet in diffusers format, `trainer_state.json` and the checksums of
       every file, fsyncs them, and renames the folder; older checkpoints over `limit` go.
    """
    folder = run_dir / "checkpoints"
    final = folder / f"checkpoint-{state.global_step}"
    tmp = folder / f"{TMP_PREFIX}checkpoint-{state.global_step}"
    main = accelerator.is_main_process
    # ControlNet weights twice (accelerate's copy and diffusers'), Adam's two moments: ~16 bytes a parameter
    needed = 16 * sum(p.numel() for p in controlnet.parameters())
    try:
        with guard_writes(folder, needed):
            if main:
                shutil.rmtree(tmp, ignore_errors=True)
                tmp.mkdir(parents=True)
                faults.write_point(final, "start")
            accelerator.wait_for_everyone()
            accelerator.save_state(str(tmp))
            accelerator.wait_for_everyone()  # every rank's RNG state is in tmp before it is renamed
            if main:
                _finish_checkpoint(accelerator, controlnet, state, tmp, final)
    except BaseException:
        if main:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    if main and limit:
        for old in list_checkpoints(run_dir)[:-limit]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def _finish_checkpoint(accelerator: Any, controlnet: Any, state: TrainState, tmp: Path, final: Path) -> None:
    """Main process: the diffusers ControlNet, the position, the checksums; fsync; rename."""
    accelerator.unwrap_model(controlnet).save_pretrained(tmp / "controlnet", safe_serialization=True)
    write_json(tmp / "trainer_state.json", asdict(state))
    _write_checksums(tmp)
    fsync_path(tmp)
    faults.write_point(final, "commit")
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    fsync_path(final.parent)


def sweep_checkpoint_tmp(run_dir: Path) -> None:
    """Remove the half-written checkpoint and validation folders (and config) a killed run left."""
    sweep_tmp(run_dir, "config.yaml")
    for p in [*(run_dir / "checkpoints").glob(f"{TMP_PREFIX}*"), *(run_dir / "validation").glob(f"{TMP_PREFIX}*")]:
        shutil.rmtree(p, ignore_errors=True)
