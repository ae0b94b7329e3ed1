"""`seg2sat export`: checkpoint -> model folder (see docs/architecture.md for the layout)."""

from __future__ import annotations

from omegaconf import DictConfig

from seg2sat.training.export import ExportResult, export_model


def run(cfg: DictConfig) -> ExportResult:
    """Export a checkpoint (or a plain ControlNet folder) as a Seg2Sat model folder."""
    return export_model(cfg)
