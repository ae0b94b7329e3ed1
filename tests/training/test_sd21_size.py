"""The real-size path: Stable Diffusion 2.1-base's architecture with random weights (no download).

SD's VAE factor 8, the real channel counts (UNet 320/640/1280/1280, OpenCLIP-H width 1024) and
reduced precision run nowhere else in the suite. Marked `gpu` (bf16 on a CUDA device: `python -m
pytest -m gpu`) and `slow` (fp32 on CPU: `python -m pytest -m slow -k sd21`, a few minutes and
~12 GB of RAM); the default run skips both.
"""

import numpy as np
import pytest
import torch

from seg2sat.config import compose
from seg2sat.data.dataset import tokenize
from seg2sat.generation.models import Components, load_model, save_pipeline_parts
from seg2sat.generation.tiling import generate_tiled
from seg2sat.generation.tiny import (
    assemble_pipeline,
    build_sd21_base_random_components,
    controlnet_from_unet,
    vae_factor,
)
from seg2sat.hints import codes_to_hint
from seg2sat.training.export import export_model
from seg2sat.training.objective import compute_loss

pytestmark = [pytest.mark.gpu, pytest.mark.slow]

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
DTYPE = torch.bfloat16 if DEVICE.type == "cuda" else torch.float32
PROMPT = "Aerial view of Gironde. deciduous, water"


@pytest.fixture(scope="module")
def parts():
    parts = build_sd21_base_random_components(0)
    for key in ("unet", "vae", "text_encoder"):
        parts[key].requires_grad_(False).eval().to(DEVICE, DTYPE)
    return parts


def _codes(size: int = 64) -> np.ndarray:
    codes = np.full((size, size), 7, np.uint8)
    codes[:, size // 2:] = 5
    return codes


def test_one_training_step_reaches_only_the_controlnet(parts):
    assert vae_factor(parts["vae"]) == 8 and parts["unet"].config.block_out_channels == (320, 640, 1280, 1280)
    sched = parts["scheduler"]
    comps = Components(unet=parts["unet"], vae=parts["vae"], text_encoder=parts["text_encoder"],
                       tokenizer=parts["tokenizer"], noise_scheduler=sched, base="sd21-random")
    controlnet = controlnet_from_unet(parts["unet"], parts["vae"]).to(DEVICE, torch.float32).train()
    hint = torch.from_numpy(codes_to_hint(_codes())).permute(2, 0, 1)[None].repeat(2, 1, 1, 1)
    batch = {"pixel_values": torch.rand(2, 3, 64, 64) * 2 - 1, "input_ids": tokenize(parts["tokenizer"], [PROMPT] * 2),
             "conditioning": hint}
    with torch.autocast(DEVICE.type, dtype=DTYPE, enabled=DTYPE != torch.float32):
        loss = compute_loss(batch, comps, controlnet, torch.Generator(DEVICE).manual_seed(0), DTYPE)
    loss.backward()
    assert torch.isfinite(loss) and loss.item() > 0
    # the zero convolutions pass the first gradient only to themselves; the base gets none
    grads = {n: p.grad for n, p in controlnet.named_parameters()}
    assert any(g is not None and g.abs().sum() > 0 for n, g in grads.items() if n.startswith("controlnet_down_blocks"))
    assert all(p.grad is None for p in parts["unet"].parameters())
    opt = torch.optim.AdamW(controlnet.parameters(), lr=1e-5)
    before = controlnet.controlnet_mid_block.weight.detach().clone()
    opt.step()
    assert not torch.equal(before, controlnet.controlnet_mid_block.weight.detach())


def test_one_tiled_window_at_real_size(parts):
    pipe = assemble_pipeline(parts, controlnet_from_unet(parts["unet"], parts["vae"]).to(DEVICE, DTYPE), "unipc")
    pipe.set_progress_bar_config(disable=True)
    rows = []
    result = generate_tiled(pipe, _codes(), PROMPT, lambda r, rgb: rows.append((r, rgb)), steps=2, tile=64,
                            overlap=0, guidance_scale=3.0, seed=1)
    image = np.concatenate([rgb for _, rgb in rows])
    assert result.windows == 1 and [r for r, _ in rows][0] == 0
    assert image.shape == (64, 64, 3) and image.dtype == np.uint8 and image.std() > 0


def test_export_and_load_at_real_size(parts, tmp_path):
    # the base as a diffusers folder (fp16 on disk: 2.6 GB instead of 5.2), a ControlNet beside it
    base = save_pipeline_parts({k: (v.to("cpu", torch.float16) if k in ("unet", "vae", "text_encoder") else v)
                                for k, v in parts.items()}, tmp_path / "base")
    controlnet = controlnet_from_unet(parts["unet"], parts["vae"]).to("cpu", torch.float32)
    controlnet.save_pretrained(tmp_path / "cn", safe_serialization=True)
    for key in ("unet", "vae", "text_encoder"):  # the fixture's modules go back to the device and dtype
        parts[key].to(DEVICE, DTYPE)
    out = export_model(compose("export", [f"paths.root_dir={tmp_path}", f"controlnet_dir={tmp_path / 'cn'}",
                                          f"base_model={base}", f"output_dir={tmp_path / 'model'}"])).model_dir
    loaded = load_model(out, device=DEVICE, dtype=DTYPE)
    assert loaded.tile == 512 and loaded.pipe.vae_scale_factor == 8 and loaded.info["base_model"] == str(base)
    assert loaded.pipe.unet.config.cross_attention_dim == 1024
    a = controlnet.state_dict()
    for name, value in loaded.pipe.controlnet.state_dict().items():
        torch.testing.assert_close(value.float().cpu(), a[name], rtol=0, atol=1e-2 if DTYPE != torch.float32 else 0)
