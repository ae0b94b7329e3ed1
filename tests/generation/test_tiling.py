"""Tiled generation (seg2sat/generation/tiling.py): windows, ramps, positional noise, fusion, errors."""

import numpy as np
import pytest
import torch

from seg2sat.errors import Seg2SatError, TilingError
from seg2sat.generation.models import EMBEDDED_TINY_BASE, load_pipeline, load_pipeline_from_base
from seg2sat.generation.sampling import VAE_FACTOR
from seg2sat.generation.tiling import generate_tiled, pad_to_tile, regional_edit
from seg2sat.generation.windows import (
    balanced_batches,
    initial_noise,
    ramp,
    seam_ratio,
    windows_for,
)
from seg2sat.hints import codes_to_hint

PROMPT = "Aerial view of Gironde. water"


@pytest.fixture(scope="module")
def pipe():
    """The tiny random pipeline (latent factor 4, 64 px), its progress bars off."""
    p = load_pipeline("tiny-random")
    p.set_progress_bar_config(disable=True)
    return p


def _codes(height, width, seed=3):
    return np.random.default_rng(seed).integers(1, 20, (height, width)).astype(np.uint8)


def _generate(pipe, codes, **kwargs):
    """generate_tiled into an array; also returns the (row0, rows) of each write_rows call."""
    out = np.zeros((*codes.shape, 3), np.uint8)
    writes = []

    def write(row0, rgb):
        writes.append((row0, rgb.shape[0]))
        out[row0:row0 + rgb.shape[0]] = rgb

    result = generate_tiled(pipe, codes, PROMPT, write, **kwargs)
    return out, writes, result


# ---------------------------------------------------------------------------------------------
# Windows, ramps, noise
# ---------------------------------------------------------------------------------------------


def test_windows_cover_and_noise_is_positional():
    wins = windows_for(192, 200, 64, 16)
    cover = np.zeros((192, 200), int)
    for w in wins:
        cover[w.row:w.row + 64, w.col:w.col + 64] += 1
    assert cover.min() >= 1 and wins[-1].row == 128 and wins[-1].col == 136
    small, big = initial_noise(7, 8, 8, 8), initial_noise(7, 24, 16, 8)
    assert torch.equal(small, big[:, :, :8, :8]) and not torch.equal(big[:, :, :8, :8], big[:, :, 8:16, :8])


def test_ramps_of_neighbouring_windows_sum_to_one_across_the_overlap():
    w = ramp(64, 16)[32]  # a middle row of the outer product: the 1-D ramp
    assert w.shape == (64,) and (w > 0).all() and (w[16:-16] == 1).all()
    # window B starts 48 px after window A: over the 16 px they share the weights sum to 1
    np.testing.assert_allclose(w[48:] + w[:16], np.ones(16), rtol=0, atol=1e-6)
    assert (ramp(64, 0) == 1).all()


def test_pad_to_tile_reaches_the_vae_grid_and_a_tile_by_replicating_edges():
    codes = _codes(70, 101)
    padded = pad_to_tile(codes, 64)
    assert padded.shape == (72, 104) and padded.shape[0] % VAE_FACTOR == padded.shape[1] % VAE_FACTOR == 0
    np.testing.assert_array_equal(padded[:70, :101], codes)
    np.testing.assert_array_equal(padded[70:, :101], np.repeat(codes[-1:], 2, axis=0))
    assert pad_to_tile(_codes(16, 24), 64).shape == (64, 64)


# ---------------------------------------------------------------------------------------------
# Generation
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("guidance_scale", [3.0, 1.0])
def test_naive_tiling_is_the_diffusers_pipeline_on_each_window(pipe, guidance_scale):
    # overlap=0 blends nothing: each window must be exactly what the diffusers pipeline makes of
    # its hint crop from its noise block (the reference is computed by diffusers' own loop).
    codes = _codes(64, 128)
    out, _, result = _generate(pipe, codes, steps=3, seed=5, tile=64, overlap=0, guidance_scale=guidance_scale,
                               negative_prompt="blurry", batch_size=1, decode_batch_size=1)
    assert (result.windows, result.model_calls) == (2, 3 * 2)
    f = pipe.vae_scale_factor
    lt = 64 // f
    noise = initial_noise(5, 64 // f, 128 // f, lt)
    hint = codes_to_hint(codes)
    for j in range(2):
        crop = torch.from_numpy(hint[:, 64 * j:64 * (j + 1)]).permute(2, 0, 1)[None].float() / 255.0
        image = pipe(PROMPT, image=crop, num_inference_steps=3, guidance_scale=guidance_scale,
                     negative_prompt="blurry", latents=noise[:, :, :, lt * j:lt * (j + 1)].clone(), height=64,
                     width=64, output_type="np").images[0]
        expected = np.clip(np.rint(image * 255), 0, 255).astype(np.uint8)
        np.testing.assert_array_equal(out[:, 64 * j:64 * (j + 1)], expected, err_msg=f"window {j}")
    assert not np.array_equal(out[:, :64], out[:, 64:])


def test_one_window_is_the_diffusers_pipeline_exactly(pipe):
    # The single-window path hands its prediction to the scheduler unblended: the app's image
    # must be what diffusers' own pipeline makes of the same map, noise and settings.
    codes = _codes(64, 64, seed=8)
    out, _, result = _generate(pipe, codes, steps=3, seed=2, tile=64, overlap=16, guidance_scale=3.0)
    assert (result.windows, result.model_calls) == (1, 3)
    hint = torch.from_numpy(codes_to_hint(codes)).permute(2, 0, 1)[None].float() / 255.0
    image = pipe(PROMPT, image=hint, num_inference_steps=3, guidance_scale=3.0,
                 latents=initial_noise(2, 64 // pipe.vae_scale_factor, 64 // pipe.vae_scale_factor,
                                       64 // pipe.vae_scale_factor), height=64, width=64, output_type="np").images[0]
    np.testing.assert_array_equal(out, np.clip(np.rint(image * 255), 0, 255).astype(np.uint8))


@pytest.mark.parametrize("n", [1, 2, 7, 8, 9, 17, 40])
@pytest.mark.parametrize("size", [1, 3, 8])
def test_balanced_batches_keep_order_and_differ_by_at_most_one(n, size):
    items = list(range(n))
    batches = balanced_batches(items, size)
    lengths = [len(b) for b in batches]
    assert [i for b in batches for i in b] == items
    assert len(batches) == -(-n // size) and max(lengths) <= size and max(lengths) - min(lengths) <= 1


def test_no_step_ends_with_a_one_window_call(pipe, monkeypatch):
    # 9 windows at batch 8: calls of 5 and 4 windows (x2 with guidance), never 8 then 1
    sizes = []
    forward = pipe.controlnet.forward

    def spy(sample, *args, **kwargs):
        sizes.append(sample.shape[0])
        return forward(sample, *args, **kwargs)

    monkeypatch.setattr(pipe.controlnet, "forward", spy)
    balanced, _, result = _generate(pipe, _codes(160, 160), steps=2, seed=1, tile=64, overlap=16, batch_size=8,
                                    guidance_scale=3.0)
    assert result.windows == 9 and sizes == [10, 8, 10, 8]
    monkeypatch.setattr(pipe.controlnet, "forward", forward)
    one_by_one, _, _ = _generate(pipe, _codes(160, 160), steps=2, seed=1, tile=64, overlap=16, batch_size=1,
                                 guidance_scale=3.0)
    # the batch composition changes no prediction beyond float rounding
    assert np.abs(balanced.astype(int) - one_by_one.astype(int)).max() <= 2


def test_channels_last_changes_no_pixel_beyond_rounding():
    from seg2sat.generation.devices import speed_up_pipeline

    codes = _codes(64, 128, seed=4)
    plain, _, _ = _generate(load_pipeline("tiny-random"), codes, steps=2, seed=3, tile=64, overlap=16)
    fast = load_pipeline("tiny-random")
    assert speed_up_pipeline(fast, compile=False, channels_last=True) == {"compile": False, "channels_last": True}
    assert fast.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    nhwc, _, _ = _generate(fast, codes, steps=2, seed=3, tile=64, overlap=16)
    assert np.abs(plain.astype(int) - nhwc.astype(int)).max() <= 2


def test_speed_ups_default_to_cuda_only():
    from seg2sat.generation.devices import auto_flag

    assert [auto_flag("auto", "cpu"), auto_flag("auto", "cuda"), auto_flag(True, "cpu"), auto_flag("false", "cuda"),
            auto_flag(False, "cuda")] == [False, True, True, False, False]


def test_rows_are_written_once_top_to_bottom_and_progress_reaches_total(pipe):
    ticks = []
    out, writes, result = _generate(pipe, _codes(112, 64), steps=2, seed=0, tile=64, overlap=16, batch_size=2,
                                    progress=lambda done, total: ticks.append((done, total)))
    # windows start at rows 0 and 48: rows 0..48 are final once the second row begins
    assert writes == [(0, 48), (48, 64)] and result.windows == 2 and result.model_calls == 2
    assert ticks[-1] == (6, 6) and [d for d, _ in ticks] == sorted(d for d, _ in ticks)
    assert out.std() > 1


def test_seamless_tiling_beats_naive_tiles():
    # A trained base draws structure, so independent windows show their borders (random
    # weights draw noise, in which no seam can be seen).
    pipe = load_pipeline_from_base(EMBEDDED_TINY_BASE)
    from seg2sat.data.synthetic import scene_codes

    codes = scene_codes(192, np.random.default_rng(0))  # 3x the 64 px tile each way
    ratios = {}
    for overlap in (0, 32):
        out = np.zeros((192, 192, 3), np.uint8)

        def write(r, rgb, out=out):
            out[r:r + len(rgb)] = rgb

        generate_tiled(pipe, codes, "Aerial view of Gironde. deciduous", write, steps=4, tile=64,
                       overlap=overlap, seed=0, guidance_scale=3.0)
        ratios[overlap] = seam_ratio(out, 64)
    assert ratios[32] < 1.1, ratios  # close to the inside-window value (1.0)
    assert ratios[0] > 2 * ratios[32], ratios  # measured: 4.9 naive vs 0.91 fused


# ---------------------------------------------------------------------------------------------
# Errors: messages the app shows (Seg2SatError) that old `except ValueError` still catches
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("shape", "kwargs", "match"),
    [
        ((60, 64), {}, r"sizes must be multiples of 8 \(grid 64x60, tile 64, overlap 16\)"),
        ((64, 64), {"tile": 60}, r"sizes must be multiples of 8 \(grid 64x64, tile 60"),
        ((64, 64), {"overlap": 12}, r"sizes must be multiples of 8 .*overlap 12\)"),
        ((64, 48), {}, r"grid 48x64 is smaller than the tile 64; pad it first"),
        ((64, 64), {"overlap": 64}, r"overlap 64 must be in \[0, 64\)"),
        ((64, 64), {"overlap": -8}, r"overlap -8 must be in \[0, 64\)"),
    ],
)
def test_generate_tiled_refuses_bad_sizes(pipe, shape, kwargs, match):
    with pytest.raises(TilingError, match=match) as info:
        generate_tiled(pipe, _codes(*shape), PROMPT, lambda r, rgb: None, steps=1, tile=kwargs.get("tile", 64),
                       overlap=kwargs.get("overlap", 16))
    assert isinstance(info.value, Seg2SatError) and isinstance(info.value, ValueError)


def test_regional_edit_refuses_an_empty_region(pipe):
    codes = _codes(64, 64)
    image = np.zeros((64, 64, 3), np.uint8)
    with pytest.raises(TilingError, match=r"the edit region is empty .*64x64"):
        regional_edit(pipe, image, codes, np.ones((64, 64), bool), np.zeros((64, 64), bool), PROMPT, tile=64)


def test_seam_ratio_needs_a_tile_border():
    with pytest.raises(TilingError, match=r"image \(64, 64\) has no tile border for tile 64"):
        seam_ratio(np.zeros((64, 64, 3), np.uint8), 64)
    # one border (after column 63) is enough
    assert seam_ratio(np.zeros((64, 128, 3), np.uint8), 64) == 0.0
