"""`seg2sat app`: start the Streamlit app with this config (the pages read it back)."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from seg2sat.config import APP_CONFIG_ENV, CONF_DIR
from seg2sat.errors import Seg2SatError

APP_DIR = CONF_DIR.parent / "app"


def command(cfg: DictConfig) -> list[str]:
    """The `streamlit run` command line."""
    return [sys.executable, "-m", "streamlit", "run", str(APP_DIR / "Home.py"),
            "--server.headless", "true", "--server.address", str(cfg.app.address),
            "--server.port", str(cfg.app.port), "--browser.gatherUsageStats", "false",
            "--server.maxUploadSize", str(int(cfg.app.max_upload_mb))]


def run(cfg: DictConfig) -> int:
    """Write the resolved config where the app finds it, then run Streamlit until stopped."""
    if not (APP_DIR / "Home.py").exists():
        raise Seg2SatError(f"{APP_DIR}: the app's pages are missing (install from a clone with `pip install -e .`)")
    fd, name = tempfile.mkstemp(prefix="seg2sat-app-", suffix=".yaml")
    with os.fdopen(fd, "w") as f:
        f.write(OmegaConf.to_yaml(cfg, resolve=True))
    print(f"seg2sat app: http://{cfg.app.address}:{cfg.app.port}  (config {name})", flush=True)
    try:
        return subprocess.call(command(cfg), env={**os.environ, APP_CONFIG_ENV: name})
    finally:
        Path(name).unlink(missing_ok=True)
