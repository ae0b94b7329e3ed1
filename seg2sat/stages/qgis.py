"""`seg2sat qgis <action>`: the QGIS plugin (install, zip), legend styles, a drawing layer, the plugin's defaults.

`defaults` prints the defaults of the plugin's parameters as one JSON line: what the plugin
reads when it has no `defaults.json` beside it.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from omegaconf import DictConfig

from seg2sat.errors import ConfigError
from seg2sat.geo.qgis import install_plugin, plugin_defaults, zip_plugin
from seg2sat.geo.styles import FLAIR, write_drawing_layer, write_styles

log = logging.getLogger(__name__)
ACTIONS = ("install", "zip", "styles", "layer", "defaults")


def _output(cfg: DictConfig, default: str) -> Path:
    return Path(str(cfg.output)) if cfg.get("output") else Path(default)


def run(cfg: DictConfig) -> list[Path]:
    """Do `cfg.action`; returns the files or folders written."""
    action = str(cfg.action)
    if action == "install":
        written = [install_plugin(cfg.plugins_dir, cfg.qgis_dir, str(cfg.profile))]
        print(f"qgis: installed {written[0]}; restart QGIS, the algorithms are in the Processing toolbox > Seg2Sat")
    elif action == "zip":
        written = [zip_plugin(_output(cfg, "seg2sat_qgis.zip"))]
        print(f"qgis: {written[0]} (QGIS: Plugins > Manage and Install Plugins > Install from ZIP)")
    elif action == "styles":
        written = write_styles(_output(cfg, "styles"))
        print(f"qgis: {len(written)} style files in {written[0].parent}")
    elif action == "layer":
        legend = str(cfg.legend.name) if cfg.get("legend") else FLAIR  # the group, as infer reads it
        written = [write_drawing_layer(_output(cfg, "landcover.gpkg"), legend, str(cfg.crs),
                                       overwrite=bool(cfg.overwrite))]
        print(f"qgis: {written[0]} (styled by {written[0].with_suffix('.qml').name})")
    elif action == "defaults":
        written = []
        print(json.dumps(plugin_defaults()), flush=True)
    else:
        raise ConfigError(f"action={action}: one of {', '.join(ACTIONS)}")
    return written
