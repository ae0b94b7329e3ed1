"""`seg2sat export`: checkpoint -> model folder (see docs/architecture.md), optionally pushed to the hub.

1. export the checkpoint (or plain ControlNet) into `output_dir`; with `push_to_hub=true` an
   existing folder is pushed as it is (unless `overwrite=true`);
2. `push_to_hub=true repo_id=<org>/<name>`: upload every file of the folder with
   `huggingface_hub`; `check=true` (`--dry-run`) prints exactly the files it would send.
"""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig

from seg2sat.generation.models import read_model_info
from seg2sat.training.card import push
from seg2sat.training.export import ExportResult, export_model

log = logging.getLogger(__name__)


def _existing(out: Path) -> ExportResult:
    info = read_model_info(out)
    return ExportResult(model_dir=out, base_model=str(info["base_model"]), checkpoint=None, steps=info.get("steps"))


def run(cfg: DictConfig) -> ExportResult:
    """Export a checkpoint (or a plain ControlNet folder) as a Seg2Sat model folder; push it if asked."""
    # 1. The folder: exported now, or the one already there when only pushing.
    out = Path(cfg.output_dir)
    pushing = bool(cfg.get("push_to_hub"))
    result = _existing(out) if pushing and out.exists() and not cfg.overwrite else export_model(cfg)
    if not pushing:
        return result
    # 2. The upload (or the list of what it would send).
    dry = bool(cfg.get("check"))
    files = push(result.model_dir, cfg.get("repo_id"), private=bool(cfg.get("private")), dry_run=dry)
    result.hub_files = [p.as_posix() for p in files]
    sizes = {p: (result.model_dir / p).stat().st_size for p in files}
    verb = "would upload" if dry else "uploaded"
    print(f"export: {verb} {len(files)} files ({sum(sizes.values()) / 1e6:.1f} MB) from {result.model_dir} "
          f"to https://huggingface.co/{cfg.repo_id}")
    if dry:
        for p, size in sizes.items():
            print(f"  {p.as_posix()}  {size} B")
    return result
