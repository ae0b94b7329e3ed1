"""One sampling contract for `infer`, `mosaic`, the app and evaluation.

The settings of a generation (steps, guidance, ControlNet scale, negative prompt, seed, tile,
overlap, batches) come from one config group, `conf/sampling/`, and are built in one place,
`Sampling.from_config`, so the same map and seed give the same pixels whether they come through
`seg2sat infer`, a mosaic block, the app's Draw, Edit or Batch page, or a benchmark. Values left
null fall back to what the model recommends (its `seg2sat.json`), then to Stable Diffusion's
usual ones. The prompt has its own typed settings, `PromptSpec` (the `prompt` group): a null
template is the one the model was trained with.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from seg2sat import prompts
from seg2sat.errors import ConfigError
from seg2sat.generation.models import LoadedModel
from seg2sat.geo.places import place_on_grid

# Sampling when neither the config nor the model folder says otherwise: Stable Diffusion's usual.
# `conf/sampling/default.yaml` leaves these null, so a model's own recommendation comes first.
DEFAULT_SAMPLING: dict[str, float] = {"steps": 20, "guidance_scale": 7.5, "controlnet_scale": 1.0}
# Window size when neither the config nor a loaded model gives one: Stable Diffusion's 512 px.
DEFAULT_TILE = 512
# Sizes (grids, tiles, overlaps) are multiples of this: Stable Diffusion's VAE factor, which is
# also a multiple of the tiny base's factor 4. The latent grid uses the pipeline's own factor.
VAE_FACTOR = 8
_FIELDS = ("steps", "guidance_scale", "controlnet_scale", "negative_prompt", "seed", "tile", "overlap", "batch_size",
           "decode_batch_size")


def recommended_sampling(model: LoadedModel | None) -> dict[str, float]:
    """Steps, guidance and ControlNet scale a model recommends (`sampling` in its seg2sat.json).

    The tiny demo model follows its map best without classifier-free guidance and with a
    stronger ControlNet (docs/fidelity.md); Stable Diffusion models keep SD's usual settings.
    """
    recommended = (model.info.get("sampling") if model is not None else None) or {}
    out = {k: float(recommended.get(k) if recommended.get(k) is not None else v) for k, v in DEFAULT_SAMPLING.items()}
    out["steps"] = int(out["steps"])
    return out


@dataclass(frozen=True)
class Sampling:
    """The settings of one tiled generation; `kwargs()` feeds `tiling.generate_tiled`."""

    steps: int = int(DEFAULT_SAMPLING["steps"])
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
            raise ConfigError(f"sampling.steps={self.steps}: must be >= 1")
        if self.tile % VAE_FACTOR or self.overlap % VAE_FACTOR:
            raise ConfigError(f"sampling.tile={self.tile}, sampling.overlap={self.overlap}: must be multiples of "
                              f"{VAE_FACTOR}")
        if not 0 <= self.overlap < self.tile:
            raise ConfigError(f"sampling.overlap={self.overlap}: must be in [0, sampling.tile={self.tile})")
        if self.batch_size < 1 or self.decode_batch_size < 1:
            raise ConfigError(f"sampling.batch_size={self.batch_size}, sampling.decode_batch_size="
                              f"{self.decode_batch_size}: must be >= 1")

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], model: LoadedModel | None = None, **overrides: Any) -> Sampling:
        """Settings from a `sampling` group; nulls take the model's recommendation.

        `overrides` (e.g. the app's widgets) replace config values; the overlap defaults to a
        quarter of the tile, rounded down to the VAE factor, as the tiling needs.
        """
        recommended = recommended_sampling(model)
        merged = {k: cfg.get(k) for k in _FIELDS}
        merged.update({k: v for k, v in overrides.items() if v is not None})

        def pick(key: str) -> Any:
            return recommended[key] if merged[key] is None else merged[key]

        tile = int(merged["tile"] or (model.tile if model is not None else DEFAULT_TILE))
        overlap = int(merged["overlap"]) if merged["overlap"] is not None else tile // 4
        return cls(
            steps=int(pick("steps")),
            guidance_scale=float(pick("guidance_scale")),
            controlnet_scale=float(pick("controlnet_scale")),
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


@dataclass(frozen=True)
class PromptSpec:
    """How a map's prompt is made: a fixed `text`, or `template` filled with its place and classes."""

    text: str | None = None
    template: str = prompts.DEFAULT_TEMPLATE
    place: str = prompts.DEFAULT_PLACE
    style: str | None = None

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], model: LoadedModel | None = None, **overrides: Any) -> PromptSpec:
        """Settings from a `prompt` group; a null template is the model's own (else the default one).

        A model trained on captions of another template is prompted the way it was trained.
        """
        merged = {k: cfg.get(k) for k in ("text", "template", "place", "style")}
        merged.update({k: v for k, v in overrides.items() if v not in (None, "")})  # an empty widget: the config's
        template = merged["template"] or (model.caption_template if model is not None else None)
        return cls(text=str(merged["text"]) if merged["text"] else None,
                   template=str(template or prompts.DEFAULT_TEMPLATE),
                   place=str(merged["place"] or prompts.DEFAULT_PLACE),
                   style=str(merged["style"]) if merged["style"] else None)

    def for_codes(self, codes: np.ndarray, valid: np.ndarray | None = None, place: str | None = None,
                  season: str | None = None) -> str:
        """The prompt of a map: the fixed text, or the caption of its class shares at `place` (in `season`)."""
        return prompts.prompt_for(codes, valid, text=self.text, template=self.template, place=place or self.place,
                                  style=self.style, season=season)

    def for_grid(self, codes: np.ndarray, valid: np.ndarray | None, crs: Any, transform: Any) -> str:
        """The prompt of a map on a grid: the place is the grid's real one unless the spec names one."""
        place = self.place if self.text else place_on_grid(self.place, crs, transform, codes.shape[1], codes.shape[0])
        return self.for_codes(codes, valid, place)
