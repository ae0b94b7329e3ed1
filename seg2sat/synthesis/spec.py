"""What `seg2sat synthesize` makes, typed once from its config: the target, the sources, the quality bar.

- `Target`: how many tiles, and per class either a minimum share of each edited tile (a value
  below 1, e.g. `greenhouse: 0.05`) or a number of tiles that must hold the class (1 or more);
- `SourceSpec`: where maps come from (`prepared`: a prepared dataset's maps re-rendered;
  `edited`: the same maps edited to reach the target; `landcover`: rasters or vector layers of
  another product or place, through the legends, cut into patches);
- `Quality`: the re-segmentation score a pair must reach and how many seeds it may try.
Every problem is a one-line error naming the setting, raised before any model loads.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from seg2sat.errors import ConfigError
from seg2sat.labels import BY_CODE, NAMES, code_of

SOURCE_KINDS = ("prepared", "edited", "landcover")
DEFAULT_SHARE = 0.05  # a class named without a value (`target.classes=[building, water]`)


@dataclass(frozen=True)
class ClassTarget:
    """One class to make more of: a minimum share of each edited tile, or a number of tiles."""

    code: int
    share: float | None = None
    tiles: int | None = None

    @property
    def name(self) -> str:
        """The class name."""
        return BY_CODE[self.code].name


@dataclass(frozen=True)
class Target:
    """How many tiles, and the classes the set must hold more of."""

    n_tiles: int
    classes: tuple[ClassTarget, ...] = ()

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> Target:
        """From `target.n_tiles` and `target.classes`.

        `classes`: {class name: share < 1 or tile count >= 1}, or a list of names, each a share of
        `DEFAULT_SHARE`.
        """
        n = int(cfg.get("n_tiles") or 0)
        if n < 1:
            raise ConfigError(f"target.n_tiles={cfg.get('n_tiles')}: must be >= 1")
        classes, wanted = [], cfg.get("classes") or {}
        if not isinstance(wanted, Mapping):
            wanted = dict.fromkeys((str(name) for name in wanted), DEFAULT_SHARE)
        for name, value in dict(wanted).items():
            try:
                code = code_of(str(name))
            except KeyError:
                raise ConfigError(f"target.classes: {name!r} is not a FLAIR class name; known: {', '.join(NAMES)}") \
                    from None
            value = float(value)
            if value <= 0:
                raise ConfigError(f"target.classes.{name}={value:g}: give a share in (0, 1) or a tile count >= 1")
            classes.append(ClassTarget(code, share=value) if value < 1 else ClassTarget(code, tiles=int(value)))
        return cls(n_tiles=n, classes=tuple(classes))


@dataclass(frozen=True)
class SourceSpec:
    """One mask source, as configured."""

    kind: str
    path: Path
    split: str | None = "train"  # prepared/edited: the split whose maps are used (null: all)
    legend: str | None = "auto"  # landcover: a legend name, auto, or null for FLAIR codes
    column: str = "class"  # landcover vector layers: the class column
    min_valid: float = 0.9  # landcover: patches with less valid land cover are skipped

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], index: int) -> SourceSpec:
        """From one entry of `sources` (refused when its kind or path is wrong)."""
        kind = str(cfg.get("kind", ""))
        if kind not in SOURCE_KINDS:
            raise ConfigError(f"sources[{index}].kind={kind!r}: choose one of {', '.join(SOURCE_KINDS)}")
        if not cfg.get("path"):
            raise ConfigError(f"sources[{index}] ({kind}): needs a path")
        path = Path(str(cfg["path"]))
        if not path.exists():
            raise ConfigError(f"sources[{index}] ({kind}): {path} not found")
        return cls(kind=kind, path=path, split=cfg.get("split", "train"), legend=cfg.get("legend", "auto"),
                   column=str(cfg.get("column", "class")), min_valid=float(cfg.get("min_valid", 0.9)))


@dataclass(frozen=True)
class Quality:
    """The bar a generated pair must pass: its re-segmented mIoU against its own map."""

    threshold: float = 0.0
    retries: int = 2  # other seeds tried before a pair is dropped


@dataclass(frozen=True)
class Variety:
    """What changes between renderings of a map besides its seed."""

    styles: tuple[str | None, ...] = (None,)
    seasons: tuple[str | None, ...] = (None,)


@dataclass(frozen=True)
class SynthesisSpec:
    """The whole run: what to make, from what, how well, how varied, and the run seed."""

    target: Target
    sources: tuple[SourceSpec, ...]
    quality: Quality = field(default_factory=Quality)
    variety: Variety = field(default_factory=Variety)
    seed: int = 0
    id_start: int = 90_000_000  # synthetic tile ids: far from FLAIR's six digits

    @classmethod
    def from_config(cls, cfg: Any) -> SynthesisSpec:
        """From a `synthesize` config (`conf/synthesize.yaml`)."""
        sources = tuple(SourceSpec.from_config(s, i) for i, s in enumerate(cfg.get("sources") or []))
        if not sources:
            raise ConfigError("sources: give at least one mask source (kind: prepared | edited | landcover)")
        target = Target.from_config(cfg.target)
        if target.classes and not any(s.kind == "edited" for s in sources):
            raise ConfigError("target.classes needs an edited source (kind: edited) to add the classes to maps")
        quality, variety = cfg.get("quality") or {}, cfg.get("variety") or {}
        return cls(target=target, sources=sources,
                   quality=Quality(float(quality.get("threshold", 0.0)), int(quality.get("retries", 2))),
                   variety=Variety(tuple(variety.get("styles") or [None]), tuple(variety.get("seasons") or [None])),
                   seed=int((cfg.get("sampling") or {}).get("seed") or 0))
