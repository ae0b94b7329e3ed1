"""Every config composes, every group option composes with the stage that uses it."""

import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from seg2sat.cli import COMMANDS
from seg2sat.config import CONF_DIR, compose

TOP = sorted(p.stem for p in CONF_DIR.glob("*.yaml"))
# group -> the stage config that selects it
GROUP_STAGE = {"model": "train", "logger": "train", "paths": "prepare"}


def test_every_command_has_a_config():
    configs = {config for config, _, _ in COMMANDS.values()}
    assert configs <= set(TOP), f"missing: {configs - set(TOP)}"


@pytest.mark.parametrize("name", TOP)
def test_top_level_config_composes_and_resolves(name, tmp_path):
    cfg = compose(name, [f"paths.root_dir={tmp_path}"])
    resolved = OmegaConf.to_container(cfg, resolve=True)
    assert resolved["paths"]["data_dir"] == f"{tmp_path}/data"


@pytest.mark.parametrize(
    ("group", "option"),
    [(g, p.stem) for g in GROUP_STAGE for p in sorted((CONF_DIR / g).glob("*.yaml"))],
)
def test_group_option_composes(group, option):
    cfg = compose(GROUP_STAGE[group], [f"{group}={option}"])
    OmegaConf.to_container(cfg[group], resolve=True)  # every interpolation resolves
    # the selected option is what the stage sees, unchanged
    file = OmegaConf.load(CONF_DIR / group / f"{option}.yaml")
    assert OmegaConf.to_container(cfg[group]) == OmegaConf.to_container(file)


def test_cli_help_and_unknown_command():
    out = subprocess.run([sys.executable, "-m", "seg2sat.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    for command in ("sample-data", "prepare", "train", "export", "infer", "app", "course", "demo"):
        assert f"  {command} " in out.stdout
    bad = subprocess.run([sys.executable, "-m", "seg2sat.cli", "frobnicate"], capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown command 'frobnicate'" in bad.stderr


def test_cli_prints_composed_config_with_overrides(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "seg2sat.cli", "prepare", "--cfg", "job", f"paths.root_dir={tmp_path}"],
        capture_output=True, text=True, cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    cfg = OmegaConf.create(out.stdout)
    assert cfg.paths.root_dir == str(tmp_path)


@pytest.mark.parametrize("path", sorted((CONF_DIR / "accelerate").glob("*.yaml")), ids=lambda p: p.stem)
def test_accelerate_configs_load(path):
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.utils import DistributedType

    cfg = load_config_from_file(str(path))
    assert cfg.distributed_type in set(DistributedType)
    assert cfg.num_processes >= 1 and cfg.num_machines >= 1
    assert cfg.mixed_precision in ("no", "fp16", "bf16")
