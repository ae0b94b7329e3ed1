"""Model loading (tiny preset, folders, safetensors only, offline errors) and one-tile generation."""


import numpy as np
import pytest
import torch

from seg2sat.errors import LegendError, ModelError
from seg2sat.generation.models import (
    build_controlnet,
    load_components,
    load_pipeline,
    save_pipeline_parts,
)
from seg2sat.generation.pipeline import generate
from seg2sat.generation.tiny import build_tiny_components
from seg2sat.generation.tokenizer import tiny_tokenizer
from seg2sat.hints import codes_to_hint


@pytest.fixture(scope="module")
def hint():
    codes = np.ones((64, 64), np.uint8) * 10
    codes[:32] = 1
    codes[40:, 20:50] = 5
    return codes_to_hint(codes)


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory):
    """The random tiny base saved as a diffusers folder."""
    return save_pipeline_parts(build_tiny_components(0), tmp_path_factory.mktemp("base") / "tiny")


def test_tiny_tokenizer_is_offline_clip_bpe():
    tok = tiny_tokenizer()
    ids = tok("Aerial view of Gironde. building, water", padding="max_length", max_length=77).input_ids
    assert len(ids) == 77
    assert ids[0] == tok.bos_token_id
    assert tok.unk_token_id not in ids[1: ids.index(tok.eos_token_id)]


def test_generate_shape_dtype_and_seed(hint):
    pipe = load_pipeline("tiny-random")
    a = generate(pipe, hint, "Aerial view of Gironde. building", steps=2, seed=1)
    b = generate(pipe, hint, "Aerial view of Gironde. building", steps=2, seed=1)
    c = generate(pipe, hint, "Aerial view of Gironde. building", steps=2, seed=2)
    assert a.shape == (64, 64, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    assert np.abs(a.astype(int) - c.astype(int)).mean() > 1


def test_generate_refuses_off_legend_hint_and_odd_size(hint):
    pipe = load_pipeline("tiny-random")
    bad = hint.copy()
    bad[0, 0] = (1, 2, 3)
    with pytest.raises(LegendError, match="colour"):
        generate(pipe, bad, "x", steps=1)
    with pytest.raises(LegendError, match="not a multiple of 8"):
        generate(pipe, hint[:60], "x", steps=1)


def test_controlnet_folder_round_trip(tiny_base, tmp_path, hint):
    comps = load_components({"name": "tiny", "pretrained_dir": str(tiny_base)})
    assert comps.base == str(tiny_base)
    controlnet = build_controlnet({"controlnet_init": "from_unet"}, comps.unet, comps.vae)
    with torch.no_grad():
        for p in controlnet.controlnet_cond_embedding.parameters():
            p.add_(0.05)
    controlnet.save_pretrained(tmp_path / "cn", safe_serialization=True)
    # a plain diffusers ControlNet folder + its base, as the public Seg2Sat model is published
    pipe = load_pipeline(tmp_path / "cn", base=tiny_base)
    for (name, a), b in zip(controlnet.state_dict().items(), pipe.controlnet.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, msg=name)
    # continuing training from that folder
    again = build_controlnet({"controlnet_init": str(tmp_path / "cn")}, comps.unet, comps.vae)
    torch.testing.assert_close(next(again.parameters()), next(controlnet.parameters()))
    assert generate(pipe, hint, "x", steps=1).shape == (64, 64, 3)


def test_pickle_weights_are_refused(tiny_base, tmp_path):
    comps = load_components({"name": "tiny", "pretrained_dir": str(tiny_base)})
    build_controlnet({}, comps.unet, comps.vae).save_pretrained(tmp_path / "cn", safe_serialization=False)
    assert list((tmp_path / "cn").glob("*.bin"))
    with pytest.raises(ModelError, match="only pickle weights"):
        load_pipeline(tmp_path / "cn", base=tiny_base)


def test_missing_weights_offline_say_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError, match=r"stabilityai/stable-diffusion-2-1-base: .*hf download"):
        load_components({"name": "sd21_base", "base": "stabilityai/stable-diffusion-2-1-base"})
    with pytest.raises(ModelError, match="model folder not found"):
        load_pipeline(tmp_path / "nowhere", base=tmp_path / "nobase")
    with pytest.raises(ModelError, match="needs its Stable Diffusion base"):
        load_pipeline("rgres/Seg2Sat-sd-controlnet")


def test_recommended_sampling_comes_from_the_model_info():
    from seg2sat.generation.models import LoadedModel
    from seg2sat.generation.sampling import recommended_sampling

    assert recommended_sampling(None) == recommended_sampling(LoadedModel(None, 64, {}, "x")) == {
        "steps": 20, "guidance_scale": 7.5, "controlnet_scale": 1.0}
    info = {"base_model": "base", "sampling": {"guidance_scale": 1.0}}
    assert recommended_sampling(LoadedModel(None, 64, info, "x")) == {"steps": 20, "guidance_scale": 1.0,
                                                                      "controlnet_scale": 1.0}


def test_load_model_returns_tile_and_info(tmp_path):
    from seg2sat.generation.models import load_model

    tiny = load_model("tiny-random")
    assert tiny.tile == 64 and tiny.info == {} and tiny.source == "tiny-random"
    with pytest.raises(ModelError, match="scheduler=lcm needs its distillation LoRA"):
        load_model("tiny-random", scheduler="lcm")


def test_controlnet_hint_encoder_matches_the_vae_factor():
    from diffusers import AutoencoderKL

    from seg2sat.generation.tiny import controlnet_from_unet, vae_factor

    parts = build_tiny_components(0)
    assert vae_factor(parts["vae"]) == 4
    cn = controlnet_from_unet(parts["unet"], parts["vae"])
    assert tuple(cn.config.conditioning_embedding_out_channels) == (16, 32, 96)
    # a 64 px hint lands on the 16 x 16 latent grid
    with torch.no_grad():
        down, mid = cn(torch.zeros(1, 4, 16, 16), torch.tensor([10]), encoder_hidden_states=torch.zeros(1, 77, 32),
                       controlnet_cond=torch.zeros(1, 3, 64, 64), return_dict=False)
    assert down[0].shape[-2:] == (16, 16) and mid.shape[-2:] == (8, 8)
    # Stable Diffusion's 4-block VAE: factor 8, diffusers' default hint encoder
    sd_like = AutoencoderKL(block_out_channels=(8, 8, 8, 8), norm_num_groups=4,
                            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
    assert vae_factor(sd_like) == 8
    assert tuple(controlnet_from_unet(parts["unet"], sd_like).config.conditioning_embedding_out_channels) == \
        (16, 32, 96, 256)
