"""Stable Diffusion parts + ControlNet: presets, the offline tiny model, loading and saving.

Presets live in `conf/model/*.yaml`: `tiny` is built here in code (no download; a trained
tiny base can be made with `pretrain_tiny_base`), `sd15`, `sd21_base` and `sdxl` name hub ids
or local folders. Only safetensors are loaded and `trust_remote_code` is never used.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from seg2sat.atomic import atomic_dir
from seg2sat.errors import ModelError

log = logging.getLogger(__name__)

TINY_PRESET = "tiny"  # conf/model/tiny.yaml: built in code, or the pretrained tiny base
TINY_RANDOM = "tiny-random"  # the random tiny model (tests, benchmarks): built in code, no folder
TINY_RESOLUTION = 64
TINY_VAE_FACTOR = 4
MODEL_INFO = "seg2sat.json"
# The pretrained tiny base shipped with the package (made by `seg2sat pretrain`, docs/fidelity.md).
EMBEDDED_TINY_BASE = Path(__file__).resolve().parents[1] / "assets" / "tiny-base"


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


# ---------------------------------------------------------------------------------------------
# The tiny preset: real diffusers classes at toy size, so every code path runs on a CPU.
# ---------------------------------------------------------------------------------------------


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable-character table (the BPE's base symbols)."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs), strict=True))


def _caption_words() -> list[str]:
    from seg2sat.labels import NAMES
    from seg2sat.prompts import DEPARTMENTS, STYLES

    text = " ".join([*NAMES, "aerial view of france in winter spring summer autumn",
                     *STYLES.values(), *DEPARTMENTS.values()]).lower()
    return sorted(set(re.findall(r"[a-zà-ÿ]+", text)))


def tiny_tokenizer() -> Any:
    """A CLIP BPE tokenizer built in memory, sized for captions.

    Byte symbols plus whole-word merges for the caption vocabulary (class names, "aerial view of", departments, styles), so a caption
    fits in 77 tokens; any other text still tokenizes, byte by byte.
    """
    from transformers import CLIPTokenizer

    symbols = list(bytes_to_unicode().values())
    vocab = {s: i for i, s in enumerate(symbols)}
    vocab.update({s + "</w>": len(symbols) + i for i, s in enumerate(symbols)})
    merges: list[tuple[str, str]] = []
    seen: set[tuple[str, str]] = set()
    byte_map = bytes_to_unicode()
    for word in _caption_words():
        chars = [byte_map[b] for b in word.encode("utf-8")]
        chars[-1] += "</w>"
        cur = chars[0]
        for c in chars[1:]:
            if (cur, c) not in seen:
                seen.add((cur, c))
                merges.append((cur, c))
            cur += c
            vocab.setdefault(cur, len(vocab))
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)


def tiny_scheduler_config() -> dict[str, Any]:
    """Stable Diffusion's noise schedule (scaled linear, 1000 steps, epsilon)."""
    return {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012,
            "beta_schedule": "scaled_linear", "prediction_type": "epsilon", "clip_sample": False,
            "steps_offset": 1}


def build_tiny_components(seed: int = 0) -> dict[str, Any]:
    """Random tiny UNet, VAE, CLIP text encoder, tokenizer and scheduler (64 px tiles).

    The VAE has latent factor 4 (16 x 16 latents per tile), not SD's 8: at 64 px an 8 x 8
    latent cannot hold roads, buildings or pools, and a VAE of factor 8 trained as long
    scored 0.39 re-segmented mIoU after its round trip against 0.80 for this one (real
    images 0.95; docs/fidelity.md). Sizes stay multiples of 8 everywhere, as for SD.
    """
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = tiny_tokenizer()
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=TINY_RESOLUTION // TINY_VAE_FACTOR, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(32, 64), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
        attention_head_dim=8, norm_num_groups=16,
    )
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, sample_size=TINY_RESOLUTION,
        block_out_channels=(32, 64, 64), layers_per_block=1, norm_num_groups=8,
        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
    )
    torch.manual_seed(seed + 2)
    vocab = tokenizer.get_vocab()
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=77, projection_dim=32,
        bos_token_id=vocab["<|startoftext|>"], eos_token_id=vocab["<|endoftext|>"],
        pad_token_id=vocab["<|endoftext|>"],
    ))
    scheduler = DDPMScheduler(**tiny_scheduler_config())
    return {"unet": unet, "vae": vae, "text_encoder": text_encoder, "tokenizer": tokenizer,
            "scheduler": scheduler}


def build_sd21_base_random_components(seed: int = 0) -> dict[str, Any]:
    """Stable Diffusion 2.1-base architecture (865M UNet, OpenCLIP-H text) with random weights.

    For benchmarks at real size with no download; the tokenizer is the tiny offline one (the
    text encoder's vocabulary is sized to it), which does not change the compute.
    """
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = tiny_tokenizer()
    vocab = tokenizer.get_vocab()
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=64, cross_attention_dim=1024, attention_head_dim=(5, 10, 20, 20),
        use_linear_projection=True, block_out_channels=(320, 640, 1280, 1280),
    )
    vae = AutoencoderKL(
        block_out_channels=(128, 256, 512, 512), latent_channels=4, layers_per_block=2, sample_size=512,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    )
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(vocab), hidden_size=1024, intermediate_size=4096, num_hidden_layers=23,
        num_attention_heads=16, max_position_embeddings=77, projection_dim=512, hidden_act="gelu",
        bos_token_id=vocab["<|startoftext|>"], eos_token_id=vocab["<|endoftext|>"],
        pad_token_id=vocab["<|endoftext|>"],
    ))
    scheduler = DDPMScheduler(**tiny_scheduler_config())
    return {"unet": unet, "vae": vae, "text_encoder": text_encoder, "tokenizer": tokenizer,
            "scheduler": scheduler}


def _pipeline(parts: Mapping[str, Any], controlnet: Any, scheduler: str | None = "unipc") -> Any:
    from diffusers import StableDiffusionControlNetPipeline

    sched = parts["scheduler"]
    if scheduler:
        sched = make_scheduler(scheduler, sched.config)
    return StableDiffusionControlNetPipeline(
        vae=parts["vae"], text_encoder=parts["text_encoder"], tokenizer=parts["tokenizer"],
        unet=parts["unet"], controlnet=controlnet, scheduler=sched, safety_checker=None,
        feature_extractor=None, requires_safety_checker=False,
    )


def build_tiny_pipeline(seed: int = 0, controlnet: Any = None, scheduler: str = "unipc") -> Any:
    """A random tiny StableDiffusionControlNetPipeline (64x64 px); ControlNet from the UNet."""
    parts = build_tiny_components(seed)
    controlnet = controlnet if controlnet is not None else controlnet_from_unet(parts["unet"], parts["vae"])
    pipe = _pipeline(parts, controlnet, scheduler)
    pipe.set_progress_bar_config(disable=True)
    return pipe


# ---------------------------------------------------------------------------------------------
# Loading presets, folders and hub ids.
# ---------------------------------------------------------------------------------------------


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


def load_components(model_cfg: Mapping[str, Any], dtype: torch.dtype = torch.float32,
                    device: str | torch.device = "cpu") -> Components:
    """The base model parts of a preset (`conf/model/*.yaml`), frozen, in `dtype`."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    name = model_cfg.get("name")
    pretrained = model_cfg.get("pretrained_dir")
    if name == TINY_PRESET and not (pretrained and Path(pretrained, "model_index.json").exists()):
        parts = build_tiny_components(int(model_cfg.get("seed", 0)))
        parts["noise_scheduler"] = parts.pop("scheduler")
        base = f"{TINY_RANDOM}-{int(model_cfg.get('seed', 0))}"
    else:
        base = str(pretrained if name == TINY_PRESET else model_cfg["base"])
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


def vae_factor(vae: Any) -> int:
    """Pixels per latent cell: 2 per VAE block after the first (8 for Stable Diffusion)."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


def controlnet_from_unet(unet: Any, vae: Any) -> Any:
    """A ControlNet copied from the UNet's encoder, its hint encoder matched to the VAE's factor.

    The hint encoder halves the hint once per block after the first, so it must have
    log2(factor) + 1 blocks to land on the latent grid (diffusers' default is SD's factor 8).
    """
    from diffusers import ControlNetModel

    blocks = int(math.log2(vae_factor(vae))) + 1
    return ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(16, 32, 96, 256, 256)[:blocks])


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


# Sampling when neither the config nor the model folder says otherwise: Stable Diffusion's usual.
# `conf/sampling/default.yaml` leaves these null, so a model's own recommendation comes first.
DEFAULT_SAMPLING: dict[str, float] = {"steps": 20, "guidance_scale": 7.5, "controlnet_scale": 1.0}


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
    def recommended_sampling(self) -> dict[str, float]:
        """Steps, guidance and ControlNet scale the model recommends (`sampling` in its seg2sat.json).

        The tiny demo model follows its map best without classifier-free guidance and with a
        stronger ControlNet (docs/fidelity.md); Stable Diffusion models keep SD's usual settings.
        """
        recommended = self.info.get("sampling") or {}
        out = {k: float(recommended.get(k) if recommended.get(k) is not None else v)
               for k, v in DEFAULT_SAMPLING.items()}
        out["steps"] = int(out["steps"])
        return out

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


def auto_flag(value: Any, device: torch.device | str) -> bool:
    """A speed-up switch: true/false as given; `auto` is on with CUDA and off elsewhere.

    On the 2-core CPUs measured here channels_last was not faster and torch.compile of the
    tiny preset took minutes for slower steps (docs/performance.md), so CPU runs stay eager.
    """
    if str(value).lower() == "auto":
        return torch.device(device).type == "cuda"
    return bool(value) and str(value).lower() != "false"


def speed_up_pipeline(pipe: Any, compile: Any = "auto", channels_last: Any = "auto") -> dict[str, bool]:
    """channels_last and in-place torch.compile for the pipeline's UNet and ControlNet.

    In place (`nn.Module.compile`): the modules keep their class, so the pipeline, its
    `save_pretrained` and threads sharing it work as before; only the first call pays.
    """
    device = pipe.unet.device
    chosen = {"compile": auto_flag(compile, device), "channels_last": auto_flag(channels_last, device)}
    for module in (pipe.unet, pipe.controlnet):
        if chosen["channels_last"]:
            module.to(memory_format=torch.channels_last)
        if chosen["compile"]:
            module.compile()
    return chosen


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
    pipe = _pipeline(parts, controlnet_from_unet(sd.unet, sd.vae), scheduler)
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
    dtypes = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
    if dtype != "auto" and dtype not in dtypes:
        raise ModelError(f"dtype={dtype!r}: choose auto, {', '.join(dtypes)}")
    torch_dtype = dtypes.get(dtype) or (torch.float16 if resolved.type == "cuda" else torch.float32)
    return resolved, torch_dtype


def count_parameters(module: torch.nn.Module) -> int:
    """Number of parameters."""
    return sum(p.numel() for p in module.parameters())
