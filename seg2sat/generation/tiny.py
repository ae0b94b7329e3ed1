"""Models built in code, no download: the tiny preset at toy size and Stable Diffusion 2.1 at real size.

Real diffusers classes with random weights, so every code path runs on a CPU (tests, benchmarks);
the pretrained tiny base (`seg2sat/assets/tiny-base`) has the tiny architecture.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

from seg2sat.generation.schedulers import make_scheduler
from seg2sat.generation.tokenizer import tiny_tokenizer

TINY_PRESET = "tiny"  # conf/model/tiny.yaml: the pretrained tiny base, or random weights when asked
TINY_RANDOM = "tiny-random"  # the random tiny model (tests, benchmarks): built in code, no folder
TINY_RESOLUTION = 64
TINY_VAE_FACTOR = 4


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


def assemble_pipeline(parts: Mapping[str, Any], controlnet: Any, scheduler: str | None = "unipc") -> Any:
    """A ControlNet pipeline from base parts (unet, vae, text encoder, tokenizer, scheduler); no safety checker."""
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
    pipe = assemble_pipeline(parts, controlnet, scheduler)
    pipe.set_progress_bar_config(disable=True)
    return pipe


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
