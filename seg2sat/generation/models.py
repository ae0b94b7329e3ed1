"""Stable Diffusion parts + ControlNet: presets, model folders and hub ids, loading and saving.

Presets live in `conf/model/*.yaml`: `tiny` is the pretrained tiny base shipped in
`seg2sat/assets/tiny-base` (or random weights built in code, `seg2sat.generation.tiny`), `sd15`,
`sd21_base` and `sdxl` name hub ids or local folders. Only safetensors are loaded and
`trust_remote_code` is never used.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from seg2sat.atomic import atomic_dir
from seg2sat.errors import ModelError
from seg2sat.generation.devices import (
    count_parameters,  # noqa: F401  (the app's import path)
    resolve_device_dtype,
    speed_up_pipeline,
)
from seg2sat.generation.schedulers import DISTILLED_SCHEDULERS, make_scheduler
from seg2sat.generation.tiny import (
    TINY_PRESET,
    TINY_RANDOM,
    TINY_RESOLUTION,
    assemble_pipeline,
    build_tiny_components,
    build_tiny_pipeline,
    controlnet_from_unet,
    tiny_scheduler_config,  # noqa: F401  (the app's import path)
)

log = logging.getLogger(__name__)

MODEL_INFO = "seg2sat.json"
# The pretrained tiny base shipped with the package (made by `seg2sat pretrain`, docs/fidelity.md).
EMBEDDED_TINY_BASE = Path(__file__).resolve().parents[1] / "assets" / "tiny-base"


@dataclass
class Components:
    """The frozen Stable Diffusion parts the ControlNet is trained against."""

    unet: Any
    vae: Any
    text_encoder: Any
    tokenizer: Any
    noise_scheduler: Any
    base: str  # hub id or folder, recorded in exports

    @property
    def prediction_type(self) -> str:
        """Epsilon or v_prediction, from the base model's scheduler."""
        return self.noise_scheduler.config.get("prediction_type", "epsilon")


def _hub_error(source: str, exc: Exception) -> ModelError:
    return ModelError(
        f"{source}: model weights not found locally and could not be downloaded ({type(exc).__name__}: "
        f"{str(exc).splitlines()[0][:200]}). On a machine with network run "
        f"`hf download {source}` once (or copy the folder here and pass its path)."
    )


def _from_pretrained(cls: Any, source: str | Path, **kwargs: Any) -> Any:
    """`cls.from_pretrained` with safetensors only and errors that say what to do."""
    source_s = str(source)
    local = Path(source_s).expanduser()
    folder = local / kwargs.get("subfolder", "") if local.exists() else None
    if folder is not None and folder.is_dir():
        if not list(folder.glob("*.safetensors")) and list(folder.glob("*.bin")) + list(folder.glob("*.ckpt")):
            raise ModelError(f"{folder}: only pickle weights (.bin/.ckpt) found; Seg2Sat loads safetensors only "
                             "(convert them with `safetensors` first)")
    elif source_s.startswith((".", "/", "~")) or (local.suffix == "" and local.parent != Path(".") and local.parent.exists()):
        raise ModelError(f"{source_s}: model folder not found")
    try:
        return cls.from_pretrained(source_s, use_safetensors=True, **kwargs)
    except ModelError:
        raise
    except (OSError, ValueError) as exc:
        if folder is not None:
            raise ModelError(f"{folder}: cannot load {cls.__name__}: {exc}") from exc
        raise _hub_error(source_s, exc) from exc


def tiny_base_folder(model_cfg: Mapping[str, Any]) -> str:
    """The tiny preset's pretrained base: `pretrained_dir`, or the shipped one when it is unset.

    A named folder that holds no base is an error, never a silent fallback to random weights
    (those come only with `random_weights: true`, for tests and benchmarks).
    """
    base = str(model_cfg.get("pretrained_dir") or EMBEDDED_TINY_BASE)
    if not Path(base, "model_index.json").exists():
        raise ModelError(f"{base}: no tiny base here (no model_index.json); leave model.pretrained_dir unset for "
                         "the shipped base, or make one with `seg2sat pretrain output_dir=<folder>`")
    return base


def load_components(model_cfg: Mapping[str, Any], dtype: torch.dtype = torch.float32,
                    device: str | torch.device = "cpu") -> Components:
    """The base model parts of a preset (`conf/model/*.yaml`), frozen, in `dtype`."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    name = model_cfg.get("name")
    if name == TINY_PRESET and model_cfg.get("random_weights"):
        parts = build_tiny_components(int(model_cfg.get("seed", 0)))
        parts["noise_scheduler"] = parts.pop("scheduler")
        base = f"{TINY_RANDOM}-{int(model_cfg.get('seed', 0))}"
    else:
        base = tiny_base_folder(model_cfg) if name == TINY_PRESET else str(model_cfg["base"])
        common = {"revision": model_cfg.get("revision")} if model_cfg.get("revision") else {}
        variant = {"variant": model_cfg["variant"]} if model_cfg.get("variant") else {}
        parts = {
            "unet": _from_pretrained(UNet2DConditionModel, base, subfolder="unet", **common, **variant),
            "vae": _from_pretrained(AutoencoderKL, base, subfolder="vae", **common, **variant),
            "text_encoder": _from_pretrained(CLIPTextModel, base, subfolder="text_encoder", **common, **variant),
            "tokenizer": _from_pretrained_tokenizer(CLIPTokenizer, base, common),
            "noise_scheduler": _from_pretrained_scheduler(DDPMScheduler, base, common),
        }
    for key in ("unet", "vae", "text_encoder"):
        parts[key].requires_grad_(False).eval().to(device=device, dtype=dtype)
    return Components(base=base, **parts)


def _from_pretrained_tokenizer(cls: Any, base: str, common: dict[str, Any]) -> Any:
    try:
        return cls.from_pretrained(base, subfolder="tokenizer", **common)
    except (OSError, ValueError) as exc:
        raise _hub_error(base, exc) from exc


def _from_pretrained_scheduler(cls: Any, base: str, common: dict[str, Any]) -> Any:
    try:
        return cls.from_pretrained(base, subfolder="scheduler", **common)
    except (OSError, ValueError) as exc:
        raise _hub_error(base, exc) from exc


def build_controlnet(model_cfg: Mapping[str, Any], unet: Any, vae: Any) -> Any:
    """A trainable ControlNet: a copy of the UNet's encoder, or an existing ControlNet."""
    from diffusers import ControlNetModel

    init = model_cfg.get("controlnet_init") or "from_unet"
    if init == "from_unet":
        return controlnet_from_unet(unet, vae)
    return _from_pretrained(ControlNetModel, init)


def read_model_info(folder: str | Path) -> dict[str, Any]:
    """The `seg2sat.json` of an exported model folder."""
    path = Path(folder) / MODEL_INFO
    if not path.exists():
        raise ModelError(f"{folder}: not a Seg2Sat model folder (no {MODEL_INFO}); run `seg2sat export`")
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelError(f"{path}: unreadable ({exc}); export the model again") from exc
    if not isinstance(info, dict):
        raise ModelError(f"{path}: not a model description (a JSON object); export the model again")
    return info


@dataclass(frozen=True)
class LoadedModel:
    """A pipeline with what its folder says about it, read once when it is loaded.

    `info` is the folder's `seg2sat.json` ({} for a plain diffusers ControlNet or the random
    tiny model); `tile` is the resolution the model was trained at, the window size of tiled
    generation. `base`, `scheduler` and `lora` are what it was loaded with (for sidecars).
    """

    pipe: Any
    tile: int
    info: Mapping[str, Any]
    source: str
    base: str | None = None
    scheduler: str | None = None
    lora: str | None = None

    @property
    def caption_template(self) -> str | None:
        """The caption template the model was trained with (None when its folder does not say)."""
        return self.info.get("caption_template") or None


def _resolve_base(folder: Path, base: str) -> str:
    candidate = folder / base
    return str(candidate) if candidate.exists() else base


def check_controlnet(source: str | Path) -> None:
    """Refuse a local folder that holds no ControlNet (before anything loads); hub ids pass."""
    folder = Path(str(source)).expanduser()
    if str(source) == TINY_RANDOM or not folder.exists():
        return
    if not (folder / "controlnet" / "config.json").exists() and not (folder / "config.json").exists():
        raise ModelError(f"{folder}: no ControlNet here (expected an exported model folder with controlnet/, or a "
                         "diffusers ControlNet folder); run `seg2sat export` (model_path=)")


def peek_model(source: str | Path) -> LoadedModel:
    """What a model folder says about itself (tile, info), without loading any weights (`pipe` None).

    Lets a run check its inputs (windows, sampling) before the slow load. A hub id or plain
    ControlNet folder says nothing: Stable Diffusion's 512 px tile is assumed until it loads.
    """
    if str(source) == TINY_RANDOM:
        return LoadedModel(pipe=None, tile=TINY_RESOLUTION, info={}, source=str(source))
    folder = Path(source).expanduser()
    info = read_model_info(folder) if (folder / MODEL_INFO).exists() else {}
    return LoadedModel(pipe=None, tile=int(info.get("resolution") or 512), info=info, source=str(source))


def load_model(source: str | Path, base: str | Path | None = None, device: str | torch.device = "cpu",
               dtype: torch.dtype | None = None, scheduler: str | None = "unipc",
               lora: str | None = None, compile: Any = False, channels_last: Any = "auto") -> LoadedModel:
    """A StableDiffusionControlNetPipeline and its model info, from a folder, a ControlNet or an id.

    Args:
        source: our exported model folder (has `seg2sat.json`); a diffusers ControlNet folder
            or hub id (e.g. `rgres/Seg2Sat-sd-controlnet`, then `base` is required); or
            `tiny-random` for the random tiny model (tests).
        base: Stable Diffusion base (hub id or folder), e.g. `stabilityai/stable-diffusion-2-1-base`.
        device: where to run.
        dtype: precision (float32 when None).
        scheduler: sampler name (see SCHEDULERS); None keeps the base's own.
        lora: a LoRA folder or id fused into the UNet (the LCM/TCD distillation LoRAs).
        compile: torch.compile the UNet and ControlNet (`auto`: on CUDA; off by default until
            measured on a GPU: docs/performance.md).
        channels_last: NHWC convolutions (`auto`: on CUDA).
    """
    from diffusers import ControlNetModel, StableDiffusionControlNetPipeline

    # 1. The sampler must make sense without its distillation LoRA.
    requested_base = None if base is None else str(base)
    if scheduler in DISTILLED_SCHEDULERS and not lora:
        raise ModelError(f"sampling.scheduler={scheduler} needs its distillation LoRA (lora=<folder or id>)")
    # 2. The pipeline: built in code, or the ControlNet and its base from folders/ids.
    info: dict[str, Any] = {}
    torch_dtype = dtype or torch.float32
    if str(source) == TINY_RANDOM:
        pipe = build_tiny_pipeline(0, scheduler=scheduler or "unipc").to(dtype=torch_dtype)
    else:
        folder = Path(source).expanduser()
        if (folder / MODEL_INFO).exists():
            info = read_model_info(folder)
            base = base or _resolve_base(folder, info["base_model"])
            cn_source: str | Path = folder / info.get("controlnet", "controlnet")
        else:
            cn_source = source
            if base is None:
                raise ModelError(f"{source}: a plain ControlNet needs its Stable Diffusion base "
                                 "(e.g. base=stabilityai/stable-diffusion-2-1-base)")
        controlnet = _from_pretrained(ControlNetModel, cn_source, dtype=torch_dtype)
        pipe = _from_pretrained(StableDiffusionControlNetPipeline, base, controlnet=controlnet, safety_checker=None,
                                feature_extractor=None, requires_safety_checker=False, dtype=torch_dtype)
        if scheduler:
            pipe.scheduler = make_scheduler(scheduler, pipe.scheduler.config)
        pipe.set_progress_bar_config(disable=True)
    # 3. The optional LoRA, fused so sampling costs nothing more.
    if lora:
        try:
            pipe.load_lora_weights(str(lora))
            pipe.fuse_lora()
        except (OSError, ValueError) as exc:
            raise ModelError(f"{lora}: cannot load the LoRA: {exc}") from exc
    tile = int(info.get("resolution") or int(pipe.unet.config.sample_size) * int(pipe.vae_scale_factor))
    pipe = pipe.to(device)
    # 4. Speed-ups that do not change what is computed (off on CPU unless asked for).
    speed_up_pipeline(pipe, compile=compile, channels_last=channels_last)
    return LoadedModel(pipe=pipe, tile=tile, info=info, source=str(source), base=requested_base,
                       scheduler=scheduler, lora=None if lora is None else str(lora))


def load_configured(cfg: Mapping[str, Any]) -> LoadedModel:
    """The model an `infer`/`mosaic`/app config names, with the sampler of its `sampling` group.

    Reads `model_path`, `base_model`, `lora`, `device`, `dtype` and the speed-ups.
    """
    device, dtype = resolve_device_dtype(str(cfg["device"]), str(cfg["dtype"]))
    return load_model(str(cfg["model_path"]), base=cfg.get("base_model"), device=device, dtype=dtype,
                      scheduler=str(cfg["sampling"]["scheduler"]), lora=cfg.get("lora"),
                      compile=cfg.get("compile", False), channels_last=cfg.get("channels_last", "auto"))


def load_pipeline(source: str | Path, base: str | Path | None = None, device: str | torch.device = "cpu",
                  dtype: torch.dtype | None = None, scheduler: str | None = "unipc") -> Any:
    """The pipeline alone (`load_model(...).pipe`), for callers that need no model info."""
    return load_model(source, base=base, device=device, dtype=dtype, scheduler=scheduler).pipe


def load_pipeline_from_base(base: str | Path, device: str | torch.device = "cpu", scheduler: str = "unipc") -> Any:
    """The base model with an untrained ControlNet (copied from its UNet): the fidelity baseline."""
    from diffusers import StableDiffusionPipeline

    sd = _from_pretrained(StableDiffusionPipeline, base, safety_checker=None, feature_extractor=None,
                          requires_safety_checker=False)
    parts = {k: getattr(sd, k) for k in ("vae", "text_encoder", "tokenizer", "unet", "scheduler")}
    pipe = assemble_pipeline(parts, controlnet_from_unet(sd.unet, sd.vae), scheduler)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def save_pipeline_parts(parts: Mapping[str, Any], folder: str | Path,
                        extra_json: Mapping[str, Any] | None = None) -> Path:
    """Save base parts (unet, vae, text encoder, tokenizer, scheduler) as a diffusers folder.

    `extra_json` maps file names to objects written as JSON in the same atomic folder.
    """
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(
        vae=parts["vae"], text_encoder=parts["text_encoder"], tokenizer=parts["tokenizer"],
        unet=parts["unet"], scheduler=parts["scheduler"], safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )
    with atomic_dir(folder, overwrite=True) as tmp:
        pipe.save_pretrained(tmp, safe_serialization=True)
        for name, obj in (extra_json or {}).items():
            (tmp / name).write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")
    return Path(folder)
