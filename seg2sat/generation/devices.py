"""Where and in what precision models run, and speed-ups that do not change what is computed."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from seg2sat.errors import ModelError

# Precision names as configs spell them (`dtype=`), and accelerate's mixed-precision names for them.
DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
MIXED_PRECISION_DTYPES: dict[str, str] = {"fp16": "float16", "bf16": "bfloat16"}


def process_state() -> Any:
    """Accelerate's process state; on CPU it must be told (ACCELERATE_USE_CPU=1) to join the group."""
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    return PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))


def resolve_device_dtype(device: str = "auto", dtype: str = "auto") -> tuple[torch.device, torch.dtype]:
    """`auto` device: this process's accelerator (a rank's GPU under `accelerate launch`), else CPU.

    `auto` dtype: float16 on CUDA, float32 elsewhere; or float32 | float16 | bfloat16.
    """
    if device == "auto":
        resolved = process_state().device
    else:
        resolved = torch.device(device)
    if dtype != "auto" and dtype not in DTYPES:
        raise ModelError(f"dtype={dtype!r}: choose auto, {', '.join(DTYPES)}")
    torch_dtype = DTYPES.get(dtype) or (torch.float16 if resolved.type == "cuda" else torch.float32)
    return resolved, torch_dtype


def mixed_precision_dtype(mixed_precision: str) -> torch.dtype:
    """The frozen weights' dtype under accelerate's `mixed_precision` (fp16 | bf16; float32 otherwise)."""
    return DTYPES[MIXED_PRECISION_DTYPES.get(mixed_precision, "float32")]


def count_parameters(module: torch.nn.Module) -> int:
    """Number of parameters."""
    return sum(p.numel() for p in module.parameters())


def auto_flag(value: Any, device: torch.device | str) -> bool:
    """A speed-up switch: true/false as given; `auto` is on with CUDA and off elsewhere.

    On the 2-core CPUs measured here channels_last was not faster and torch.compile of the
    tiny preset took minutes for slower steps (docs/performance.md), so CPU runs stay eager.
    """
    if str(value).lower() == "auto":
        return torch.device(device).type == "cuda"
    return bool(value) and str(value).lower() != "false"


def speed_up(modules: Iterable[torch.nn.Module], device: torch.device | str, compile: Any = "auto",
             channels_last: Any = "auto", compile_mode: str | None = None) -> dict[str, bool]:
    """channels_last and in-place torch.compile for `modules` (a UNet and its ControlNet), as switched.

    In place (`nn.Module.compile`): the modules keep their class, so pipelines, `save_pretrained`,
    unwrapping and threads sharing them work as before; only the first call pays.
    """
    chosen = {"compile": auto_flag(compile, device), "channels_last": auto_flag(channels_last, device)}
    for module in modules:
        if chosen["channels_last"]:
            module.to(memory_format=torch.channels_last)
        if chosen["compile"]:
            module.compile(**({"mode": compile_mode} if compile_mode else {}))
    return chosen


def speed_up_pipeline(pipe: Any, compile: Any = "auto", channels_last: Any = "auto") -> dict[str, bool]:
    """`speed_up` for the pipeline's UNet and ControlNet."""
    return speed_up((pipe.unet, pipe.controlnet), pipe.unet.device, compile, channels_last)
