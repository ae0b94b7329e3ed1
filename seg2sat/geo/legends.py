"""Other land-cover products through a legend: FLAIR codes from NLCD, CORINE, OSO, OCS GE, ...

A `Legend` maps another scheme's class values to FLAIR codes (`conf/legend/*.yaml`: source value
-> FLAIR code or class name). `legend="auto"` recognises the product of a file from its colour
table, its values and its location (`seg2sat.geo.recognise`); without a legend, a raster that is
recognisably another product is refused rather than read as FLAIR codes.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import OmegaConf

from seg2sat.config import CONF_DIR
from seg2sat.errors import LegendError
from seg2sat.labels import BY_CODE, OTHER_CODE, OUTSIDE_LEGEND, code_of, describe_counts, in_legend

log = logging.getLogger(__name__)

LEGEND_DIR: Path = CONF_DIR / "legend"
# The products `detect_legend` knows: the legends shipped in LEGEND_DIR (a test keeps the two equal).
KNOWN_LEGENDS: tuple[str, ...] = ("corine", "corine_grid", "dynamic_world", "nc_landsat96", "nlcd", "ocsge", "oso",
                                  "worldcover")
AUTO = "auto"  # legend="auto": recognise the product of each file
_HEX = re.compile(r"#[0-9a-fA-F]{6}")
_LEGEND_NAME = re.compile(r"[A-Za-z0-9_-]+")

@dataclass(frozen=True)
class Legend:
    """A mapping from another land-cover scheme to FLAIR codes."""

    name: str
    mapping: dict[float, int]  # source value -> FLAIR code
    labels: dict[str, float]  # text label (lower case) -> source value, for vector columns
    nodata: float | None = None
    colors: dict[float, str] = field(default_factory=dict)  # source value -> the product's "#rrggbb"
    detect_values: bool = True  # may `detect_legend` recognise the product from a raster's values alone
    extent: tuple[float, float, float, float] | None = None  # west, south, east, north (degrees); None: global

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> Legend:
        """From a `conf/legend/*.yaml` mapping; FLAIR codes may be given by name.

        Keys: `name`, `map` (source value -> FLAIR code or class name) or `recode` (`legend`:
        another legend's name, `values`: source value -> that legend's value), and optional
        `nodata`, `colors` (source value -> "#rrggbb"), `labels` (text -> source value),
        `detect_values` (false: only a colour table identifies the product) and `extent` (the
        product's coverage, [west, south, east, north] in degrees, to tell apart products whose
        codes overlap).

        Raises:
            LegendError: naming the legend and the bad entry.
        """
        name = str(cfg.get("name", "legend"))
        if cfg.get("recode") is not None:
            if cfg.get("map"):
                raise LegendError(f"legend {name}: give `map` or `recode`, not both")
            mapping, colors, labels = _recoded(name, cfg["recode"])
        else:
            mapping = _parse_map(name, cfg.get("map"))
            colors = _parse_colors(name, cfg.get("colors"), mapping)
            labels = _parse_labels(name, cfg.get("labels"), mapping)
        nodata = cfg.get("nodata")
        return cls(name=name, mapping=mapping, labels=labels, nodata=None if nodata is None else float(nodata),
                   colors=colors, detect_values=bool(cfg.get("detect_values", True)),
                   extent=_parse_extent(name, cfg.get("extent")))


def _parse_map(name: str, raw: Mapping[Any, Any] | None) -> dict[float, int]:
    mapping: dict[float, int] = {}
    for src, dst in dict(raw or {}).items():
        try:
            code = code_of(str(dst)) if isinstance(dst, str) else int(dst)
        except KeyError as exc:
            raise LegendError(f"legend {name}: target {dst!r} of {src!r}: {exc.args[0]}") from None
        if code not in BY_CODE:
            raise LegendError(f"legend {name}: target {dst!r} of {src!r} is not a FLAIR code")
        mapping[float(src)] = code
    if not mapping:
        raise LegendError(f"legend {name}: empty `map`")
    return mapping


def _parse_colors(name: str, raw: Mapping[Any, Any] | None, mapping: Mapping[float, int]) -> dict[float, str]:
    colors: dict[float, str] = {}
    for src, hex_ in dict(raw or {}).items():
        if float(src) not in mapping:
            raise LegendError(f"legend {name}: colour of {src!r}, a value that `map` does not list")
        if not isinstance(hex_, str) or not _HEX.fullmatch(hex_):
            raise LegendError(f"legend {name}: colour {hex_!r} of {src!r} is not \"#rrggbb\"")
        colors[float(src)] = hex_.lower()
    return colors


def _parse_labels(name: str, raw: Mapping[Any, Any] | None, mapping: Mapping[float, int]) -> dict[str, float]:
    labels = {str(k).strip().lower(): float(v) for k, v in dict(raw or {}).items()}
    for label, value in labels.items():
        if value not in mapping:
            raise LegendError(f"legend {name}: label {label!r} points to {value:g}, a value that `map` does not list")
    return labels


def _parse_extent(name: str, raw: Any) -> tuple[float, float, float, float] | None:
    if raw is None:
        return None
    try:
        west, south, east, north = (float(v) for v in raw)
    except (TypeError, ValueError):
        raise LegendError(f"legend {name}: extent {raw!r} is not [west, south, east, north]") from None
    if not (-180 <= west < east <= 180 and -90 <= south < north <= 90):
        raise LegendError(f"legend {name}: extent {raw!r} is not [west, south, east, north] in degrees")
    return west, south, east, north


def _recoded(name: str, recode: Mapping[str, Any]) -> tuple[dict[float, int], dict[float, str], dict[str, float]]:
    """Map, colours and labels of a legend whose values stand for another legend's values.

    The CORINE raster stores grid codes 1..44 for the CLC codes 111..523: recoding keeps the
    class mapping (and its judgement calls) in one file.
    """
    base = load_named_legend(str(recode.get("legend")))
    values = {float(k): float(v) for k, v in dict(recode.get("values") or {}).items()}
    missing = sorted(v for v in values.values() if v not in base.mapping)
    if missing:
        raise LegendError(f"legend {name}: recoded values {', '.join(f'{v:g}' for v in missing)} "
                          f"are not in legend {base.name}")
    if not values:
        raise LegendError(f"legend {name}: empty `recode.values`")
    back = {v: k for k, v in values.items()}
    mapping = {k: base.mapping[v] for k, v in values.items()}
    colors = {k: base.colors[v] for k, v in values.items() if v in base.colors}
    labels = {label: back[v] for label, v in base.labels.items() if v in back}
    return mapping, colors, labels


# ---------------------------------------------------------------------------------------------
# Known legends
# ---------------------------------------------------------------------------------------------


def load_named_legend(name: str) -> Legend:
    """`conf/legend/NAME.yaml` as a Legend, e.g. `load_named_legend("nlcd")`.

    Raises:
        LegendError: no such legend; the message lists the known ones.
    """
    if not _LEGEND_NAME.fullmatch(name):
        raise LegendError(f"legend {name!r} is not a legend name; known: {', '.join(KNOWN_LEGENDS)}, or auto")
    return _load_legend_file(LEGEND_DIR / f"{name}.yaml")


@functools.lru_cache(maxsize=64)
def _load_legend_file(path: Path) -> Legend:
    if not path.is_file():
        raise LegendError(f"{path}: no such legend; known: {', '.join(KNOWN_LEGENDS)}, or auto")
    return Legend.from_config(OmegaConf.to_container(OmegaConf.load(path), resolve=True))


# ---------------------------------------------------------------------------------------------
# Value -> code
# ---------------------------------------------------------------------------------------------


def map_values(values: np.ndarray, valid: np.ndarray, legend: Legend | None, source: Path,
               unknown_to_other: bool = False) -> np.ndarray:
    """Source class values -> FLAIR codes (uint8); unknown values are an error with counts."""
    out = np.full(values.shape, OTHER_CODE, np.uint8)
    v = values[valid]
    if v.dtype.kind == "f":
        if not np.isfinite(v).all():
            raise LegendError(f"{source}: {int((~np.isfinite(v)).sum())} NaN/inf class values outside nodata")
        frac = v != np.round(v)
        if frac.any():
            raise LegendError(f"{source}: {int(frac.sum())} class values are not whole numbers "
                              f"({describe_counts(v[frac])}); a class raster must hold integer codes")
    if legend is None:
        known = in_legend(v)
        mapped = np.where(known, v, OTHER_CODE).astype(np.uint8)
    else:
        lut_src = np.array(sorted(legend.mapping), np.float64)
        lut_dst = np.array([legend.mapping[k] for k in lut_src], np.uint8)
        idx = np.clip(np.searchsorted(lut_src, v.astype(np.float64)), 0, len(lut_src) - 1)
        known = lut_src[idx] == v
        mapped = np.where(known, lut_dst[idx], OTHER_CODE).astype(np.uint8)
    if not known.all():
        what = f"not in legend {legend.name}" if legend else OUTSIDE_LEGEND
        msg = f"{source}: {int((~known).sum())} pixels hold class values {what} ({describe_counts(v[~known])})"
        if not unknown_to_other:
            raise LegendError(msg + "; pass legend=<name> (or legend=auto), or unknown_to_other=true to map them to 'other'")
    out[valid] = mapped
    return out


def load_legend(group: Mapping[str, Any] | None, file: str | None = None) -> Legend | str | None:
    """The legend chosen as a config group (`legend=nlcd`), a YAML file (`legend_file=...`), or "auto".

    With `legend=auto` each input's product is recognised by `recognise.resolve_legend`.
    """
    if file:
        path = Path(file)
        if not path.exists():
            raise LegendError(f"{path}: legend file not found (legend_file=)")
        return Legend.from_config(OmegaConf.to_container(OmegaConf.load(path), resolve=True))
    if not group:
        return None
    if str(group.get("name", "")).lower() == AUTO:
        return AUTO
    raw = OmegaConf.to_container(group, resolve=True) if OmegaConf.is_config(group) else dict(group)
    return Legend.from_config(raw)
