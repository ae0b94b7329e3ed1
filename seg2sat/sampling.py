"""One sampling contract for `infer`, the app and evaluation.

The settings of a generation (steps, guidance, ControlNet scale, negative prompt, seed, tile,
overlap, batches) are built from the config in one place, `Sampling.from_config`, so the same
map and seed give the same pixels whether they come through `seg2sat infer`, the app's Draw,
Edit or Batch page, or a benchmark. Values left null in the config fall back to what the model
recommends (its `seg2sat.json`), then to Stable Diffusion's usual ones.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from seg2sat.errors import ConfigError
from seg2sat.models import DEFAULT_SAMPLING, LoadedModel
from seg2sat.tiling import VAE_FACTOR

# Window size when neither the config nor a loaded model gives one: Stable Diffusion's 512 px.
DEFAULT_TILE = 512


@dataclass(frozen=True)
class Sampling:
    """The settings of one tiled generation; `kwargs()` feeds `tiling.generate_tiled`."""

    steps: int = 20
    guidance_scale: float = DEFAULT_SAMPLING["guidance_scale"]
    controlnet_scale: float = DEFAULT_SAMPLING["controlnet_scale"]
    negative_prompt: str = ""
    seed: int = 0
    tile: int = DEFAULT_TILE
    overlap: int = DEFAULT_TILE // 4
    batch_size: int = 4
    decode_batch_size: int = 2

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ConfigError(f"steps={self.steps}: must be >= 1")
        if self.tile % VAE_FACTOR or self.overlap % VAE_FACTOR:
            raise ConfigError(f"tile={self.tile}, overlap={self.overlap}: must be multiples of {VAE_FACTOR}")
        if not 0 <= self.overlap < self.tile:
            raise ConfigError(f"overlap={self.overlap}: must be in [0, tile={self.tile})")
        if self.batch_size < 1 or self.decode_batch_size < 1:
            raise ConfigError(f"batch_size={self.batch_size}, decode_batch_size={self.decode_batch_size}: "
                              "must be >= 1")

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], model: LoadedModel | None = None, **overrides: Any) -> Sampling:
        """Settings from an `infer`/`app` config; nulls take the model's recommendation.

        `overrides` (e.g. the app's widgets) replace config values; the overlap defaults to a
        quarter of the tile, rounded down to the VAE factor, as the tiling needs.
        """
        recommended = model.recommended_sampling if model is not None else DEFAULT_SAMPLING
        merged = {k: cfg.get(k) for k in ("steps", "guidance_scale", "controlnet_scale", "negative_prompt", "seed",
                                          "tile", "overlap", "batch_size", "decode_batch_size")}
        merged.update({k: v for k, v in overrides.items() if v is not None})
        tile = int(merged["tile"] or (model.tile if model is not None else DEFAULT_TILE))
        overlap = int(merged["overlap"]) if merged["overlap"] is not None else tile // 4
        return cls(
            steps=int(merged["steps"] if merged["steps"] is not None else cls.steps),
            guidance_scale=float(recommended["guidance_scale"] if merged["guidance_scale"] is None
                                 else merged["guidance_scale"]),
            controlnet_scale=float(recommended["controlnet_scale"] if merged["controlnet_scale"] is None
                                   else merged["controlnet_scale"]),
            negative_prompt=str(merged["negative_prompt"] or ""),
            seed=int(merged["seed"] or 0),
            tile=tile,
            overlap=overlap - overlap % VAE_FACTOR,
            batch_size=int(merged["batch_size"] or cls.batch_size),
            decode_batch_size=int(merged["decode_batch_size"] or cls.decode_batch_size),
        )

    def replace(self, **changes: Any) -> Sampling:
        """A copy with some settings changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def kwargs(self) -> dict[str, Any]:
        """The settings as keyword arguments of `generate_tiled` / `generate_image`, and for sidecars."""
        return dataclasses.asdict(self)
