"""The samplers by name: each built from a model's own scheduler config (keeping its prediction type)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from seg2sat.errors import ModelError


def _schedulers() -> dict[str, Any]:
    import diffusers as d

    return {
        "unipc": (d.UniPCMultistepScheduler, {}),
        "dpmpp": (d.DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++"}),
        "ddim": (d.DDIMScheduler, {}),
        "euler": (d.EulerDiscreteScheduler, {}),
        "lcm": (d.LCMScheduler, {}),
        "tcd": (d.TCDScheduler, {}),
    }


SCHEDULERS: tuple[str, ...] = ("unipc", "dpmpp", "ddim", "euler", "lcm", "tcd")
DISTILLED_SCHEDULERS = frozenset({"lcm", "tcd"})  # need a matching LoRA to make sense


def make_scheduler(name: str, config: Mapping[str, Any]) -> Any:
    """A sampler by name, built from a model's scheduler config (keeps its prediction type)."""
    table = _schedulers()
    if name not in table:
        raise ModelError(f"sampling.scheduler={name!r}: choose one of {', '.join(SCHEDULERS)}")
    cls, extra = table[name]
    return cls.from_config(config, **extra)
