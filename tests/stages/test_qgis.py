"""`seg2sat qgis`: the plugin zipped and installed with this environment's command, styles, a drawing layer."""

import json
import sys
import zipfile

import pytest

from seg2sat.cli import _action
from seg2sat.errors import ConfigError
from seg2sat.geo import qgis
from seg2sat.geo.styles import STYLE_LEGENDS
from seg2sat.stages import qgis as stage


def test_a_bare_word_after_the_command_is_the_action():
    assert _action(["install", "profile=work"]) == ["action=install", "profile=work"]
    assert _action(["input=x.tif"]) == ["input=x.tif"] and _action(["--cfg", "job"]) == ["--cfg", "job"]


def test_zip_holds_the_plugin_its_command_and_every_style(stage_cfg, tmp_path):
    (out,) = stage.run(stage_cfg("qgis", "action=zip", f"output={tmp_path / 'p.zip'}"))
    names = zipfile.ZipFile(out).namelist()
    assert {"seg2sat_qgis/__init__.py", "seg2sat_qgis/metadata.txt", "seg2sat_qgis/provider.py",
            "seg2sat_qgis/algorithms.py", "seg2sat_qgis/runner.py", "seg2sat_qgis/cli.json"} <= set(names)
    assert {f"seg2sat_qgis/styles/{n}.qml" for n in STYLE_LEGENDS} <= set(names)
    command = json.loads(zipfile.ZipFile(out).read("seg2sat_qgis/cli.json"))["command"]
    assert command.startswith(sys.executable) and command.endswith("-m seg2sat.cli")
    assert not any("__pycache__" in n for n in names)


def test_install_into_a_profile_enables_the_plugin(stage_cfg, tmp_path):
    profile = tmp_path / "QGIS3" / "profiles" / "default"
    (profile / "QGIS").mkdir(parents=True)
    (profile / "QGIS" / "QGIS3.ini").write_text("[General]\nx=1\n\n[PythonPlugins]\nprocessing=true\n")
    (target,) = stage.run(stage_cfg("qgis", "action=install", f"qgis_dir={tmp_path / 'QGIS3'}"))
    assert target == profile / "python" / "plugins" / "seg2sat_qgis" and (target / "cli.json").exists()
    ini = (profile / "QGIS" / "QGIS3.ini").read_text().splitlines()
    assert ini[ini.index("[PythonPlugins]") + 1] == "seg2sat_qgis=true" and "processing=true" in ini
    stage.run(stage_cfg("qgis", "action=install", f"qgis_dir={tmp_path / 'QGIS3'}"))  # again: replaced, once
    assert (profile / "QGIS" / "QGIS3.ini").read_text().count("seg2sat_qgis=true") == 1


def test_install_without_a_profile_says_what_to_do(stage_cfg, tmp_path):
    with pytest.raises(ConfigError, match="no QGIS profile 'default' here; start QGIS once"):
        stage.run(stage_cfg("qgis", "action=install", f"qgis_dir={tmp_path}"))
    with pytest.raises(ConfigError, match="action=nope: one of install, zip, styles, layer"):
        stage.run(stage_cfg("qgis", "action=nope"))
    with pytest.raises(ConfigError, match="the plugin archive is a .zip"):
        qgis.zip_plugin(tmp_path / "p.tar")


def test_styles_and_layer_actions(stage_cfg, tmp_path):
    written = stage.run(stage_cfg("qgis", "action=styles", f"output={tmp_path / 's'}"))
    assert len(written) == 4 * len(STYLE_LEGENDS)
    (layer,) = stage.run(stage_cfg("qgis", "action=layer", "legend=oso", f"output={tmp_path / 'd.gpkg'}"))
    assert layer.exists() and "23 " in (tmp_path / "d.qml").read_text()  # OSO's classes
