"""The QGIS plugin as files: zipped for "Install from ZIP", or installed into a QGIS profile.

The plugin's source is `qgis_plugin/seg2sat_qgis/` at the repository root (QGIS's Python runs it,
never this package's). Packaging adds what the source cannot hold:
- `cli.json`: the command that runs this environment's CLI (`<this python> -m seg2sat.cli`), the
  default of the provider's "Seg2Sat command" setting, so an installed plugin runs as installed;
- `defaults.json`: the defaults of the plugin's parameters, read from the stages' own configs
  (`plugin_defaults`, also printed by `seg2sat qgis defaults`), so the plugin holds no copy;
- `styles/`: the QML and SLD styles of every legend (`seg2sat.geo.styles`), generated now.
Installing copies the plugin into `<profile>/python/plugins/` and enables it in the profile's
`QGIS3.ini`; a folder is replaced only whole (atomic).
"""

from __future__ import annotations

import json
import os
import platform
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any

from seg2sat.atomic import atomic_dir, atomic_path
from seg2sat.config import CONF_DIR
from seg2sat.errors import ConfigError
from seg2sat.geo.styles import write_styles

PLUGIN_NAME = "seg2sat_qgis"
PLUGIN_SRC: Path = CONF_DIR.parent / "qgis_plugin" / PLUGIN_NAME
SOURCE_SUFFIXES = (".py", ".txt", ".md", ".png", ".svg")
INI_SECTION = "[PythonPlugins]"
DEFAULTS_JSON = "defaults.json"  # the plugin reads it (qgis_plugin/seg2sat_qgis/runner.py: load_defaults)
# The configuration keys whose defaults the plugin's parameters show, by stage (its config).
PLUGIN_DEFAULT_KEYS: dict[str, tuple[str, ...]] = {
    "infer": ("sampling.seed", "edit.margin"),
    "mosaic": ("work_resolution", "block", "halo"),
    "synthesize": ("target.n_tiles",),
    "qgis": ("crs",),
}


def cli_command() -> str:
    """The command line that runs this environment's Seg2Sat CLI (quoted for a shell)."""
    import shlex

    return shlex.join([sys.executable, "-m", "seg2sat.cli"])


def plugin_defaults() -> dict[str, dict[str, Any]]:
    """`{stage: {key: default}}` for the plugin's parameters, from `conf/<stage>.yaml` as the CLI composes it."""
    from omegaconf import OmegaConf

    from seg2sat.config import compose

    return {stage: {key: OmegaConf.select(compose(stage), key) for key in keys}
            for stage, keys in PLUGIN_DEFAULT_KEYS.items()}


def plugin_files(command: str | None = None) -> dict[str, bytes]:
    """Every file of the packaged plugin: path inside the plugin folder -> content.

    Raises:
        ConfigError: the plugin source is missing (an install without the repository).
    """
    if not (PLUGIN_SRC / "metadata.txt").is_file():
        raise ConfigError(f"{PLUGIN_SRC}: the QGIS plugin source is missing; install Seg2Sat from a clone")
    files = {p.relative_to(PLUGIN_SRC).as_posix(): p.read_bytes() for p in sorted(PLUGIN_SRC.rglob("*"))
             if p.is_file() and p.suffix in SOURCE_SUFFIXES and "__pycache__" not in p.parts}
    files["cli.json"] = (json.dumps({"command": command or cli_command()}, indent=2) + "\n").encode()
    files[DEFAULTS_JSON] = (json.dumps(plugin_defaults(), indent=2) + "\n").encode()
    with tempfile.TemporaryDirectory() as tmp:
        for style in write_styles(tmp):
            files[f"styles/{style.name}"] = style.read_bytes()
    return files


def zip_plugin(path: str | Path, command: str | None = None) -> Path:
    """The plugin as a zip whose top folder is `seg2sat_qgis/` (what QGIS's installer expects)."""
    path = Path(path)
    if path.suffix.lower() != ".zip":
        raise ConfigError(f"output={path}: the plugin archive is a .zip")
    with atomic_path(path) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in plugin_files(command).items():
            archive.writestr(f"{PLUGIN_NAME}/{name}", data)
    return path


def qgis_settings_dir() -> Path:
    """QGIS 3's settings folder on this system (where its profiles live)."""
    home = Path.home()
    system = platform.system()
    if system == "Windows":
        return Path(os.environ.get("APPDATA", home / "AppData" / "Roaming")) / "QGIS" / "QGIS3"
    if system == "Darwin":
        return home / "Library" / "Application Support" / "QGIS" / "QGIS3"
    return home / ".local" / "share" / "QGIS" / "QGIS3"


def _enable(ini: Path) -> None:
    """`seg2sat_qgis=true` under [PythonPlugins] of a profile's QGIS3.ini (kept line by line)."""
    lines = ini.read_text(encoding="utf-8").splitlines() if ini.exists() else []
    lines = [ln for ln in lines if not ln.startswith(f"{PLUGIN_NAME}=")]
    if INI_SECTION in lines:
        lines.insert(lines.index(INI_SECTION) + 1, f"{PLUGIN_NAME}=true")
    else:
        lines += ["", INI_SECTION, f"{PLUGIN_NAME}=true"]
    ini.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(ini) as tmp:
        tmp.write_text("\n".join(lines).lstrip("\n") + "\n", encoding="utf-8")


def install_plugin(plugins_dir: str | Path | None = None, qgis_dir: str | Path | None = None,
                   profile: str = "default", command: str | None = None) -> Path:
    """Install (or replace) the plugin; returns its folder.

    With `plugins_dir`, the plugin goes there and nothing else changes. Otherwise it goes into
    the profile's `python/plugins/` and the profile's QGIS3.ini enables it.

    Raises:
        ConfigError: the profile does not exist (QGIS never started with it) and no `plugins_dir`.
    """
    if plugins_dir is None:
        profile_dir = Path(qgis_dir or qgis_settings_dir()) / "profiles" / profile
        if not profile_dir.is_dir():
            raise ConfigError(f"{profile_dir}: no QGIS profile {profile!r} here; start QGIS once, or pass "
                              "qgis_dir= or plugins_dir=")
        target = profile_dir / "python" / "plugins" / PLUGIN_NAME
        _enable(profile_dir / "QGIS" / "QGIS3.ini")
    else:
        target = Path(plugins_dir) / PLUGIN_NAME
    with atomic_dir(target, overwrite=True) as tmp:
        for name, data in plugin_files(command).items():
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp / name).write_bytes(data)
    return target
