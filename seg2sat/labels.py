"""The FLAIR land-cover legend: code, name and colour of each class.

This module is the only place where class names and colours live. The colour hint the
ControlNet sees, the app's palette, the captions and the README table all read it.
The colours are those the public Seg2Sat ControlNet was trained on.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from seg2sat.errors import LegendError


@dataclass(frozen=True)
class LandCoverClass:
    """One FLAIR class."""

    code: int
    name: str
    hex: str

    @property
    def rgb(self) -> tuple[int, int, int]:
        """The colour as an (R, G, B) tuple of ints in 0..255."""
        h = self.hex.lstrip("#")
        return (int(h[0:2], 16), int(h[2:4], 16), int(h[4:6], 16))


CLASSES: tuple[LandCoverClass, ...] = (
    LandCoverClass(1, "building", "#db0e9a"),
    LandCoverClass(2, "pervious surface", "#938e7b"),
    LandCoverClass(3, "impervious surface", "#f80c00"),
    LandCoverClass(4, "bare soil", "#a97101"),
    LandCoverClass(5, "water", "#1553ae"),
    LandCoverClass(6, "coniferous", "#194a26"),
    LandCoverClass(7, "deciduous", "#46e483"),
    LandCoverClass(8, "brushwood", "#f3a60d"),
    LandCoverClass(9, "vineyard", "#660082"),
    LandCoverClass(10, "herbaceous vegetation", "#55ff00"),
    LandCoverClass(11, "agricultural land", "#fff30d"),
    LandCoverClass(12, "plowed land", "#e4df7c"),
    LandCoverClass(13, "swimming pool", "#3de6eb"),
    LandCoverClass(14, "snow", "#ffffff"),
    LandCoverClass(15, "clear cut", "#8ab3a0"),
    LandCoverClass(16, "mixed", "#6b714f"),
    LandCoverClass(17, "ligneous", "#c5dc42"),
    LandCoverClass(18, "greenhouse", "#9999ff"),
    LandCoverClass(19, "other", "#000000"),
)

NUM_CLASSES: int = len(CLASSES)
CODES: tuple[int, ...] = tuple(c.code for c in CLASSES)
MIN_CODE, MAX_CODE = min(CODES), max(CODES)
BY_CODE: dict[int, LandCoverClass] = {c.code: c for c in CLASSES}
BY_NAME: dict[str, LandCoverClass] = {c.name: c for c in CLASSES}
OTHER_CODE: int = BY_NAME["other"].code  # nodata and merged rare classes become "other"
NAMES: tuple[str, ...] = tuple(c.name for c in CLASSES)
# The legend's codes are the whole numbers MIN_CODE..MAX_CODE (a test checks they have no
# gap), so "is a code" is two comparisons instead of a set lookup per pixel.
OUTSIDE_LEGEND: str = f"outside the FLAIR legend {MIN_CODE}..{MAX_CODE}"

# A mask pixel whose label is not to be trusted (a generated pixel the judge does not read as its
# class, seg2sat.synthesis.trust): left out of every loss (`ignore_index`) and every score. 255,
# the usual ignore label of segmentation toolkits, is far from any code and indexes no PALETTE
# row, so an ignored pixel can never silently turn into a class colour. A dataset whose masks hold
# it declares it in its metadata (`"ignore_code"`, seg2sat.data.flair).
IGNORE_CODE: int = 255

# PALETTE[code] is the colour of `code`; row 0 is not a class (FLAIR codes start at 1) and is
# black only so that `PALETTE[mask]` is one vectorised lookup. Validate codes before using it.
PALETTE: np.ndarray = np.zeros((MAX_CODE + 1, 3), dtype=np.uint8)
for _c in CLASSES:
    PALETTE[_c.code] = _c.rgb
PALETTE.setflags(write=False)

# The 13-class setting of the FLAIR-1 challenge: codes 13..19 are too rare to learn and are
# merged into "other". MERGE13_TO_LEGEND keeps the result inside the 19-code legend (so its
# colour hint is valid); MERGE13_TO_1_13 gives the compact 1..13 numbering used by models.
MERGE13_THRESHOLD: int = 12
MERGE13_TO_LEGEND: np.ndarray = np.array(
    [0, *range(1, MERGE13_THRESHOLD + 1), *[OTHER_CODE] * (MAX_CODE - MERGE13_THRESHOLD)],
    dtype=np.uint8,
)
MERGE13_TO_1_13: np.ndarray = np.array(
    [0, *range(1, MERGE13_THRESHOLD + 1), *[MERGE13_THRESHOLD + 1] * (MAX_CODE - MERGE13_THRESHOLD)],
    dtype=np.uint8,
)


def class_name(code: int) -> str:
    """Name of a FLAIR code; raises KeyError naming the code when it is not in the legend."""
    try:
        return BY_CODE[int(code)].name
    except KeyError:
        raise KeyError(f"code {code} is not in the FLAIR legend (valid: {MIN_CODE}..{MAX_CODE})") from None


def code_of(name: str) -> int:
    """Code of a class name (case-insensitive)."""
    cls = BY_NAME.get(name.strip().lower())
    if cls is None:
        raise KeyError(f"{name!r} is not a FLAIR class name; known: {', '.join(NAMES)}")
    return cls.code


def in_legend(values: np.ndarray | float) -> np.ndarray:
    """True where a value is a FLAIR code: a whole number in MIN_CODE..MAX_CODE.

    Works on any numeric array (a float raster's 5.0 is code 5, its 5.5 is not a code).
    """
    values = np.asarray(values)
    ok = (values >= MIN_CODE) & (values <= MAX_CODE)
    if values.dtype.kind == "f":
        ok &= values == np.round(values)
    return ok


def describe_counts(values: np.ndarray, limit: int = 10) -> str:
    """`"v: n px, ..."` for the `limit` most frequent distinct values (ties by value)."""
    uniq, counts = np.unique(np.asarray(values), return_counts=True)
    order = np.argsort(-counts, kind="stable")[:limit]
    return ", ".join(f"{uniq[i]:g}: {counts[i]} px" for i in order)


def check_codes(codes: np.ndarray, source: str | Path | None = None) -> np.ndarray:
    """Return `codes` unchanged when every value is a FLAIR code; raise LegendError otherwise.

    Args:
        codes: an integer array of class codes (any shape).
        source: the file or input the codes come from, named in the error.

    Raises:
        LegendError: non-integer dtype, or values outside MIN_CODE..MAX_CODE (listed with
            their pixel counts, most frequent first).
    """
    codes = np.asarray(codes)
    where = f"{source}: " if source is not None else ""
    if codes.dtype.kind not in "ui":
        raise LegendError(f"{where}class codes must be integers, got dtype {codes.dtype}")
    bad = ~in_legend(codes)
    if bad.any():
        raise LegendError(f"{where}codes {OUTSIDE_LEGEND} ({describe_counts(codes[bad])})")
    return codes


def merge13(codes: np.ndarray, compact: bool = False) -> np.ndarray:
    """Merge codes > 12 into "other": legend code 19, or 13 when `compact`."""
    lut = MERGE13_TO_1_13 if compact else MERGE13_TO_LEGEND
    return lut[codes]


def class_shares(codes: np.ndarray, valid: np.ndarray | None = None) -> dict[str, float]:
    """Share of each class present in `codes` (only `valid` pixels), largest first."""
    values = codes[valid] if valid is not None else codes.ravel()
    if values.size == 0:
        return {}
    counts = np.bincount(values.astype(np.int64, copy=False), minlength=MAX_CODE + 1)
    total = float(counts[1:].sum())
    if total == 0:
        return {}
    shares = {BY_CODE[c].name: counts[c] / total for c in CODES if counts[c] > 0}
    return dict(sorted(shares.items(), key=lambda kv: (-kv[1], BY_NAME[kv[0]].code)))


def legend_markdown() -> str:
    """A Markdown table of the legend (used in the README and model cards)."""
    rows = ["| code | class | colour |", "| ---: | --- | --- |"]
    rows += [f"| {c.code} | {c.name} | `{c.hex}` |" for c in CLASSES]
    return "\n".join(rows)


# FLAIR-HUB's AERIAL_LABEL-COSIA masks are 0-based and ordered differently from FLAIR-1 (the
# order and names of IGNF/FLAIR-HUB configs/train/config_supervision.yaml, the colours of its
# README; torchgeo's FLAIRHUB dataset lists the same). Read as FLAIR-1 codes they would turn
# buildings (0) into nothing and deciduous (12) into plowed land, so every FLAIR-HUB mask goes
# through this one table. "undefined" (18) has no FLAIR-1 class: it becomes nodata.
@dataclass(frozen=True)
class CosiaClass:
    """One FLAIR-HUB (COSIA) class and the FLAIR-1 code it maps to (None: nodata)."""

    cosia: int
    name: str
    hex: str
    flair: int | None


FLAIRHUB_CLASSES: tuple[CosiaClass, ...] = (
    CosiaClass(0, "building", "#db0e9a", 1),
    CosiaClass(1, "greenhouse", "#9999ff", 18),
    CosiaClass(2, "swimming pool", "#3de6eb", 13),
    CosiaClass(3, "impervious surface", "#f80c00", 3),
    CosiaClass(4, "pervious surface", "#938e7b", 2),
    CosiaClass(5, "bare soil", "#a97101", 4),
    CosiaClass(6, "water", "#1553ae", 5),
    CosiaClass(7, "snow", "#ffffff", 14),
    CosiaClass(8, "herbaceous vegetation", "#55ff00", 10),
    CosiaClass(9, "agricultural land", "#fff30d", 11),
    CosiaClass(10, "plowed land", "#e4df7c", 12),
    CosiaClass(11, "vineyard", "#660082", 9),
    CosiaClass(12, "deciduous", "#46e483", 7),
    CosiaClass(13, "coniferous", "#194a26", 6),
    CosiaClass(14, "brushwood", "#f3a60d", 8),
    CosiaClass(15, "clear cut", "#8ab3a0", 15),
    CosiaClass(16, "ligneous", "#c5dc42", 17),
    CosiaClass(17, "mixed", "#6b714f", 16),
    CosiaClass(18, "undefined", "#000000", None),
)
# FLAIRHUB_TO_LEGEND[cosia] is the FLAIR-1 code; nodata ("undefined") rows hold OTHER_CODE, the
# value the project gives nodata pixels, and FLAIRHUB_VALID says which rows are real classes.
FLAIRHUB_TO_LEGEND: np.ndarray = np.array(
    [c.flair if c.flair is not None else OTHER_CODE for c in FLAIRHUB_CLASSES], dtype=np.uint8)
FLAIRHUB_VALID: np.ndarray = np.array([c.flair is not None for c in FLAIRHUB_CLASSES], dtype=bool)
FLAIRHUB_TO_LEGEND.setflags(write=False)
FLAIRHUB_VALID.setflags(write=False)


def remap_flairhub(codes: np.ndarray, source: str | Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """FLAIR-HUB COSIA codes (0..18) -> (FLAIR-1 codes, valid mask).

    "undefined" pixels are nodata: `valid` is False there and their code is OTHER_CODE, as
    for nodata everywhere else in the project (see seg2sat.geo.landcover.LandCover).

    Raises:
        LegendError: non-integer codes, or values outside 0..18 (listed with their counts).
    """
    codes = np.asarray(codes)
    where = f"{source}: " if source is not None else ""
    if codes.dtype.kind not in "ui":
        raise LegendError(f"{where}FLAIR-HUB codes must be integers, got dtype {codes.dtype}")
    bad = codes >= len(FLAIRHUB_CLASSES)
    if codes.dtype.kind == "i":
        bad |= codes < 0
    if bad.any():
        raise LegendError(f"{where}codes outside the FLAIR-HUB legend 0..{len(FLAIRHUB_CLASSES) - 1} "
                          f"({describe_counts(codes[bad])})")
    return FLAIRHUB_TO_LEGEND[codes], FLAIRHUB_VALID[codes]
