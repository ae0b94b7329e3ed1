"""Hydra configuration: where `conf/` is, and composing a stage's config outside `@hydra.main`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig

from seg2sat.errors import Seg2SatError

# conf/ sits at the repository root (the install is editable: `pip install -e .`).
CONF_DIR: Path = Path(__file__).resolve().parent.parent / "conf"
# Where `seg2sat app` hands its resolved config to the Streamlit pages (a file path).
APP_CONFIG_ENV = "SEG2SAT_APP_CONFIG"


def conf_dir() -> Path:
    """The `conf/` folder; a clear error when the package was installed without it."""
    if not (CONF_DIR / "paths").is_dir():
        raise Seg2SatError(
            f"{CONF_DIR}: Hydra configs not found; install Seg2Sat from a clone with `pip install -e .`"
        )
    return CONF_DIR


def compose(config_name: str, overrides: Sequence[str] = ()) -> DictConfig:
    """Compose `conf/<config_name>.yaml` with Hydra overrides (what tests and the app use)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():  # inside @hydra.main (whose search path is conf/)
        return hydra_compose(config_name=config_name, overrides=list(overrides))
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        return hydra_compose(config_name=config_name, overrides=list(overrides))
