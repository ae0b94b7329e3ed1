"""Exception classes. Every message names the file (or input) and the problem."""

from __future__ import annotations


class Seg2SatError(Exception):
    """Base class of all Seg2Sat errors: bad input, missing weights, inconsistent data.

    The command line prints its message as one line and exits with `exit_code`: 2 for bad
    input or configuration (the default), 1 for a run that failed part of its work.
    """

    exit_code: int = 2


class RasterError(Seg2SatError):
    """A raster cannot be used: unreadable, wrong bands/dtype, missing georeferencing, ..."""


class LegendError(Seg2SatError):
    """Class codes or hint colours outside the legend."""


class GeoreferenceError(RasterError):
    """Missing CRS/transform, rotated or sheared transform, or two rasters that do not align."""


class DatasetError(Seg2SatError):
    """A FLAIR tree or prepared dataset is missing files or inconsistent."""


class VectorError(Seg2SatError):
    """A vector layer cannot be rasterized: missing column, invalid or empty geometries."""


class ModelError(Seg2SatError):
    """Model weights missing, unreadable, or in a format we refuse (pickle, remote code)."""


class ConfigError(Seg2SatError, ValueError):
    """A setting that cannot work: out of range, inconsistent with another, or unknown."""


class TilingError(Seg2SatError, ValueError):
    """Tiled generation or its measures cannot run on these sizes, this overlap or this region.

    Sizes off the VAE grid, a grid smaller than the tile, an overlap out of range, an empty
    edit region, an image with no tile border to measure.
    """


class BatchError(Seg2SatError):
    """Some inputs of a batch failed (the others were written); `report` says which and why."""

    exit_code = 1

    def __init__(self, message: str, report: dict | None = None) -> None:
        super().__init__(message)
        self.report = report or {}


class WriteError(Seg2SatError):
    """An output could not be written whole (a read-only folder, an I/O error); nothing half-written is left.

    The message names the folder or file and what went wrong; the temp file is already removed.
    """


class DiskFullError(WriteError):
    """No space left (or clearly too little) in an output folder; the message says about how much is needed."""
