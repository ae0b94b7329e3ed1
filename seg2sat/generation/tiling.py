"""Seamless generation at any size: overlapping windows fused at every denoising step.

MultiDiffusion (Bar-Tal et al., 2023) for a ControlNet: the whole raster has one latent; at
every step each window's UNet + ControlNet (seeing its own hint crop) predicts the noise of
its latent crop, and the predictions are blended with weights that ramp down across the
overlap. The schedulers we use (UniPC, DPM-Solver++, DDIM, Euler) update the latent linearly
in the model output, so blending the predictions and stepping once equals stepping every
window and blending the results, and it keeps the multistep schedulers' history consistent.

The latent is decoded window by window with the same ramps (tiled VAE decoding), one row of
windows at a time, and finished rows are handed to `write_rows` at once, so the decoded image
is never held whole. Initial noise is drawn per block of the latent grid from a generator
seeded by (seed, block row, block column): a rerun, or a larger raster containing the same
area at the same offsets, draws the same noise.

`overlap=0` is naive tiling (independent windows) and is what `seam_ratio` is compared with; the window
grid, its ramps and the per-block noise are `seg2sat.generation.windows`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from seg2sat.errors import TilingError
from seg2sat.generation.sampling import VAE_FACTOR, Sampling
from seg2sat.generation.windows import Window, balanced_batches, initial_noise, ramp, windows_for
from seg2sat.hints import codes_to_hint

_PROMPT_LOCK = threading.Lock()


@dataclass
class TiledResult:
    """What one tiled generation did."""

    windows: int
    model_calls: int
    height: int
    width: int


@dataclass(frozen=True)
class _Plan:
    """The windows over a grid and their blending weights, in pixels and in latent cells."""

    height: int
    width: int
    tile: int
    windows: list[Window]
    factor: int  # pixels per latent cell (the pipeline's VAE factor)
    lat_tile: int
    w_lat: torch.Tensor  # (1, 1, lat_tile, lat_tile) on the UNet's device
    w_pix: np.ndarray  # (tile, tile, 1)

    def latent_crops(self, latents: torch.Tensor, batch: list[Window]) -> torch.Tensor:
        """The latent cells under each window of `batch`, concatenated along the batch axis."""
        f, lt = self.factor, self.lat_tile
        return torch.cat([latents[:, :, w.row // f:w.row // f + lt, w.col // f:w.col // f + lt] for w in batch])


@dataclass
class _Progress:
    """Counts finished window units and reports them as progress(done, total)."""

    total: int
    callback: Callable[[int, int], None] | None
    done: int = 0

    def advance(self, n: int) -> None:
        self.done += n
        if self.callback:
            self.callback(self.done, self.total)


def _check_sizes(height: int, width: int, tile: int, overlap: int) -> None:
    if height % VAE_FACTOR or width % VAE_FACTOR or tile % VAE_FACTOR or overlap % VAE_FACTOR:
        raise TilingError(f"sizes must be multiples of {VAE_FACTOR} (grid {width}x{height}, tile {tile}, "
                          f"overlap {overlap}); pad_to_tile pads a grid")
    if height < tile or width < tile:
        raise TilingError(f"grid {width}x{height} is smaller than the tile {tile}; pad it first (pad_to_tile)")


def _plan(pipe: Any, height: int, width: int, tile: int, overlap: int) -> _Plan:
    """Check the sizes and lay out the windows and their ramps over a (height, width) grid."""
    _check_sizes(height, width, tile, overlap)
    wins = windows_for(height, width, tile, overlap)
    f = int(pipe.vae_scale_factor)
    lt, lo = tile // f, overlap // f
    w_lat = torch.from_numpy(ramp(lt, lo)).to(pipe.unet.device, torch.float32)[None, None]
    return _Plan(height=height, width=width, tile=tile, windows=wins, factor=f, lat_tile=lt, w_lat=w_lat,
                 w_pix=ramp(tile, overlap)[..., None])


def _encode_text(pipe: Any, prompt: str, negative_prompt: str, do_cfg: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(positive, negative) prompt embeddings; negative is None without guidance."""
    # A fast tokenizer sets its padding/truncation on the shared backend before each call
    # (diffusers calls it with two settings), so threads sharing a pipeline take turns.
    with _PROMPT_LOCK:
        pos, neg = pipe.encode_prompt(prompt, pipe.unet.device, 1, do_cfg, negative_prompt or None)
    return pos, (neg if do_cfg else None)


def _initial_latents(pipe: Any, plan: _Plan, seed: int, steps: int,
                     origin: tuple[int, int] = (0, 0)) -> tuple[Any, torch.Tensor]:
    """A scheduler of this call's own, and the whole latent's initial noise drawn per block."""
    # A multistep scheduler keeps the history of its steps: one per call, never the shared one.
    sched = type(pipe.scheduler).from_config(pipe.scheduler.config)
    device = pipe.unet.device
    sched.set_timesteps(steps, device=device)
    f = plan.factor
    if origin[0] % plan.tile or origin[1] % plan.tile:
        raise TilingError(f"origin {origin} must be a multiple of the tile {plan.tile} (noise is drawn per tile)")
    noise = initial_noise(seed, plan.height // f, plan.width // f, plan.lat_tile, int(pipe.unet.config.in_channels),
                          offset=(origin[0] // plan.tile, origin[1] // plan.tile))
    return sched, noise.to(device, torch.float32) * sched.init_noise_sigma


def _predict_noise(pipe: Any, inp: torch.Tensor, t: torch.Tensor, hint: torch.Tensor, pos: torch.Tensor,
                   neg: torch.Tensor | None, guidance_scale: float, controlnet_scale: float) -> torch.Tensor:
    """UNet + ControlNet noise prediction (fp32) for a batch of window latents, guided if `neg`."""
    n = len(inp)
    text = pos.repeat(n, 1, 1)
    if neg is not None:
        inp, hint = torch.cat([inp, inp]), torch.cat([hint, hint])
        text = torch.cat([neg.repeat(n, 1, 1), text])
    down, mid = pipe.controlnet(inp, t, encoder_hidden_states=text, controlnet_cond=hint,
                                conditioning_scale=controlnet_scale, return_dict=False)
    eps = pipe.unet(inp, t, encoder_hidden_states=text, down_block_additional_residuals=down,
                    mid_block_additional_residual=mid, return_dict=False)[0].float()
    if neg is None:
        return eps
    uncond, cond = eps.chunk(2)
    return uncond + guidance_scale * (cond - uncond)


def _hint_crops(hint: torch.Tensor, batch: list[Window], tile: int, dtype: torch.dtype) -> torch.Tensor:
    """The batch's hint crops as (B, 3, tile, tile) in [0, 1], cut from the hint on the device.

    The hint is sent to the device once per raster (uint8, 3 bytes a pixel, so memory stays
    flat) and cut there at every step: no step copies anything from the host.
    """
    return torch.stack([hint[w.row:w.row + tile, w.col:w.col + tile] for w in batch]).permute(0, 3, 1, 2) \
        .to(dtype) / 255.0


def _denoise(pipe: Any, sched: Any, latents: torch.Tensor, plan: _Plan, hint_rgb: np.ndarray, pos: torch.Tensor,
             neg: torch.Tensor | None, guidance_scale: float, controlnet_scale: float, batch_size: int,
             progress: _Progress) -> tuple[torch.Tensor, int]:
    """MultiDiffusion: at every step blend the windows' noise predictions, then step once.

    A single window is its own blend: its prediction goes to the scheduler as it is (the app's
    one-image path). Returns the denoised latent and the number of UNet/ControlNet calls.
    """
    device, dtype = pipe.unet.device, pipe.unet.dtype
    lt, f = plan.lat_tile, plan.factor
    batches = balanced_batches(plan.windows, batch_size)
    hint = torch.from_numpy(hint_rgb).to(device)
    calls = 0
    for t in sched.timesteps:
        if len(plan.windows) == 1:
            inp = sched.scale_model_input(plan.latent_crops(latents, batches[0]), t).to(dtype)
            crops = _hint_crops(hint, batches[0], plan.tile, dtype)
            blended = _predict_noise(pipe, inp, t, crops, pos, neg, guidance_scale, controlnet_scale)
            calls += 1
            progress.advance(1)
        else:
            acc = torch.zeros_like(latents)
            wsum = torch.zeros_like(latents[:, :1])
            for batch in batches:
                inp = sched.scale_model_input(plan.latent_crops(latents, batch), t).to(dtype)
                crops = _hint_crops(hint, batch, plan.tile, dtype)
                eps = _predict_noise(pipe, inp, t, crops, pos, neg, guidance_scale, controlnet_scale)
                calls += 1
                for i, w in enumerate(batch):
                    r, c = w.row // f, w.col // f
                    acc[:, :, r:r + lt, c:c + lt] += eps[i:i + 1] * plan.w_lat
                    wsum[:, :, r:r + lt, c:c + lt] += plan.w_lat
                progress.advance(len(batch))
            blended = acc / wsum
        latents = sched.step(blended, t, latents, return_dict=False)[0]
    return latents, calls


def _decode_rows(pipe: Any, latents: torch.Tensor, plan: _Plan, decode_batch_size: int,
                 write_rows: Callable[[int, np.ndarray], None], progress: _Progress) -> None:
    """Tiled VAE decoding a row of windows at a time; rows above the next row's start are final.

    The blended strip holds only the rows still unfinished, so the image is never held whole.
    """
    vae, tile, width = pipe.vae, plan.tile, plan.width
    scale = vae.config.scaling_factor
    rows = sorted({w.row for w in plan.windows})
    strip_top, strip = 0, np.zeros((0, width, 3), np.float32)
    strip_w = np.zeros((0, width, 1), np.float32)
    for ri, row in enumerate(rows):
        need = row + tile - strip_top
        if strip.shape[0] < need:  # grow the strip downwards
            extra = need - strip.shape[0]
            strip = np.concatenate([strip, np.zeros((extra, width, 3), np.float32)])
            strip_w = np.concatenate([strip_w, np.zeros((extra, width, 1), np.float32)])
        row_wins = [w for w in plan.windows if w.row == row]
        for batch in balanced_batches(row_wins, decode_batch_size):
            lat = plan.latent_crops(latents, batch)
            pix = vae.decode((lat / scale).to(vae.dtype), return_dict=False)[0].float()
            pix = ((pix.clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1).cpu().numpy()
            for i, w in enumerate(batch):
                y = w.row - strip_top
                strip[y:y + tile, w.col:w.col + tile] += pix[i] * plan.w_pix
                strip_w[y:y + tile, w.col:w.col + tile] += plan.w_pix
            progress.advance(len(batch))
        final_to = rows[ri + 1] if ri + 1 < len(rows) else plan.height  # absolute row where unfinished begins
        n = final_to - strip_top
        out = strip[:n] / np.maximum(strip_w[:n], 1e-8)
        write_rows(strip_top, np.clip(np.rint(out * 255), 0, 255).astype(np.uint8))
        strip, strip_w, strip_top = strip[n:], strip_w[n:], final_to


@torch.no_grad()
def generate_tiled(
    pipe: Any,
    codes: np.ndarray,
    prompt: str,
    write_rows: Callable[[int, np.ndarray], None],
    *,
    negative_prompt: str = Sampling.negative_prompt,
    steps: int = Sampling.steps,
    guidance_scale: float = Sampling.guidance_scale,
    controlnet_scale: float = Sampling.controlnet_scale,
    seed: int = Sampling.seed,
    tile: int = Sampling.tile,
    overlap: int = Sampling.overlap,
    batch_size: int = Sampling.batch_size,
    decode_batch_size: int = Sampling.decode_batch_size,
    progress: Callable[[int, int], None] | None = None,
    origin: tuple[int, int] = (0, 0),
) -> TiledResult:
    """Generate an aerial image for a land-cover `codes` grid of any size >= tile.

    Args:
        pipe: a StableDiffusionControlNetPipeline. Only its weights are used: the call builds
            its own scheduler from `pipe.scheduler`'s class and config and keeps every buffer
            to itself, so threads may share one pipeline (the app's sessions do).
        codes: (H, W) FLAIR codes; H and W multiples of `VAE_FACTOR` and >= tile.
        prompt: the caption.
        write_rows: called as write_rows(row0, rgb) with finished rows (uint8, (h, W, 3)),
            top to bottom, each row exactly once.
        negative_prompt: what to avoid (classifier-free guidance).
        steps: denoising steps.
        guidance_scale: classifier-free guidance (<= 1 disables it).
        controlnet_scale: ControlNet conditioning scale.
        seed: run seed; the noise of each latent block derives from it and the block position.
        tile: window size in pixels (the model's resolution).
        overlap: window overlap in pixels (multiple of `VAE_FACTOR`); 0 is naive tiling.
        batch_size: windows per UNet/ControlNet call.
        decode_batch_size: windows per VAE decoder call (its activations dominate peak memory).
        progress: called as progress(done, total) over (steps + 1) * windows units.
        origin: (row, col) in pixels where `codes` starts in a larger work grid (multiples of
            `tile`); the noise is that of the global position, so blocks of a mosaic cut from
            one grid draw the noise the whole grid would. (0, 0) is a grid of its own.

    Raises:
        TilingError: sizes that are not multiples of `VAE_FACTOR`, a grid smaller than the
            tile, or an overlap outside [0, tile).
    """
    # 1. Grid, windows and weights (pixels and latents).
    plan = _plan(pipe, *codes.shape, tile, overlap)
    # 2. Text embeddings, once (no negative embedding without guidance).
    pos, neg = _encode_text(pipe, prompt, negative_prompt, do_cfg=guidance_scale > 1.0)
    # 3. A scheduler of this call's own, and the initial noise for the whole latent, per block.
    sched, latents = _initial_latents(pipe, plan, seed, steps, origin)
    ticks = _Progress(total=(steps + 1) * len(plan.windows), callback=progress)
    # 4. Denoise: blend every window's noise prediction, then one scheduler step.
    hint_rgb = codes_to_hint(codes)  # once: 3 bytes per pixel, sliced per window
    latents, calls = _denoise(pipe, sched, latents, plan, hint_rgb, pos, neg, guidance_scale, controlnet_scale,
                              batch_size, ticks)
    # 5. Tiled decoding, streaming finished rows to `write_rows`.
    _decode_rows(pipe, latents, plan, decode_batch_size, write_rows, ticks)
    return TiledResult(windows=len(plan.windows), model_calls=calls, height=plan.height, width=plan.width)


def pad_to_tile(codes: np.ndarray, tile: int) -> np.ndarray:
    """Pad (bottom, right) to multiples of `VAE_FACTOR` and at least one tile, replicating edges."""
    h, w = codes.shape
    ph = max(tile, -(-h // VAE_FACTOR) * VAE_FACTOR) - h
    pw = max(tile, -(-w // VAE_FACTOR) * VAE_FACTOR) - w
    return np.pad(codes, ((0, ph), (0, pw)), mode="edge")


def generate_image(pipe: Any, codes: np.ndarray, prompt: str, **kwargs: Any) -> np.ndarray:
    """`generate_tiled` for a map of any size held in memory; returns (H, W, 3) uint8."""
    h, w = codes.shape
    padded = pad_to_tile(codes, int(kwargs.get("tile", 512)))
    out = np.zeros((*padded.shape, 3), np.uint8)

    def write(row0: int, rgb: np.ndarray) -> None:
        out[row0:row0 + rgb.shape[0]] = rgb

    generate_tiled(pipe, padded, prompt, write, **kwargs)
    return out[:h, :w]


def regional_edit(pipe: Any, image: np.ndarray, codes: np.ndarray, known: np.ndarray, region: np.ndarray,
                  prompt: str, margin: int = 16, **kwargs: Any) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """Regenerate `region` of an aerial `image` from `codes`; the rest stays bit-identical.

    Inside the region the new image replaces the old; over `margin` pixels outside it, it
    fades out linearly with the distance to the region; farther pixels are copied as they are.
    Codes are needed around the region too: where `known` is False they are taken from the
    nearest known pixel. Returns the new image and the changed box (col0, row0, col1, row1).

    Raises:
        TilingError: an empty `region`, or sizes `generate_tiled` refuses.
    """
    from scipy import ndimage

    if not region.any():
        raise TilingError(f"the edit region is empty (no True pixel in a {region.shape[1]}x{region.shape[0]} "
                          "mask): paint the area to regenerate")
    # 1. Blend weights.
    dist = ndimage.distance_transform_edt(~region)
    alpha = np.where(dist <= margin, np.clip(1.0 - dist / (margin + 1), 0.0, 1.0), 0.0)
    touched = alpha > 0
    rows, cols = np.flatnonzero(touched.any(1)), np.flatnonzero(touched.any(0))
    r0, r1, c0, c1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    # 2. Codes over the box (unknown ones from the nearest known pixel), generated.
    idx = ndimage.distance_transform_edt(~known, return_distances=False, return_indices=True)
    filled = codes[idx[0], idx[1]][r0:r1, c0:c1]
    new = generate_image(pipe, filled, prompt, **kwargs)
    # 3. Blend into a copy.
    out = image.copy()
    a = alpha[r0:r1, c0:c1, None]
    blended = np.rint(a * new + (1 - a) * image[r0:r1, c0:c1].astype(np.float64)).astype(np.uint8)
    out[r0:r1, c0:c1] = np.where(touched[r0:r1, c0:c1, None], blended, image[r0:r1, c0:c1])
    return out, (c0, r0, c1, r1)
