"""Device facts shared by the benchmarks: names, peaks for MFU, versions for the JSON records."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import re

import torch

# Dense fp16/bf16 tensor-core peaks (TFLOP/s), matched against the CUDA device name.
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0}


def device_name(device: torch.device) -> str:
    """The accelerator's name, or the CPU's architecture and core count."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu {platform.machine()} x{os.cpu_count()}"


def device_slug(device: torch.device) -> str:
    """A file-name piece for the device: `cpu`, `nvidia_h200`, ..."""
    if device.type != "cuda":
        return "cpu"
    return re.sub(r"[^a-z0-9]+", "_", torch.cuda.get_device_name(device).lower()).strip("_")


def peak_tflops(device: torch.device) -> float | None:
    """The device's dense fp16/bf16 peak, from its name (None on CPU or an unknown GPU)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_TFLOPS.items() if k in name), None)


def rates(flop: float, seconds: float, peak: float | None) -> tuple[float, float | None]:
    """(TFLOP/s achieved, MFU or None) for `flop` model FLOPs done in `seconds`."""
    tflops = flop / seconds / 1e12
    return tflops, (tflops / peak if peak else None)


def fmt_mfu(mfu: float | None) -> str:
    """MFU as a percentage, or n/a where the device has no known peak."""
    return "n/a" if mfu is None else f"{100 * mfu:.1f}%"


def versions() -> dict[str, str]:
    """Versions of what the figures depend on."""
    import accelerate
    import diffusers

    def version(dist: str) -> str:  # a source checkout on a bare GPU machine has no seg2sat metadata
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            return "not installed"

    return {"seg2sat": version("seg2sat"), "torch": torch.__version__,
            "diffusers": diffusers.__version__, "accelerate": accelerate.__version__, "cuda": str(torch.version.cuda),
            "python": platform.python_version()}
