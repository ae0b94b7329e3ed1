"""An optional torch.profiler over a few optimizer steps of a training run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from seg2sat.atomic import write_text


def training_profiler(cfg: DictConfig, accelerator: Any, run_dir: Path) -> Any:
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
