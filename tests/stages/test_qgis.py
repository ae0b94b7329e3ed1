"""`seg2sat qgis`: the plugin zipped and installed with this environment's command, styles, a drawing layer."""

import json
import shlex
import sys
import zipfile

import pytest

from seg2sat.cli import _action
from seg2sat.config import CONF_DIR, compose
from seg2sat.errors import ConfigError
from seg2sat.geo import qgis
from seg2sat.geo.styles import STYLE_LEGENDS
from seg2sat.stages import qgis as stage

sys.path.insert(0, str(CONF_DIR.parent / "qgis_plugin"))
from seg2sat_qgis import runner  # noqa: E402  (the plugin's runner imports nothing from QGIS)


def test_a_bare_word_after_the_command_is_the_action():
    assert _action(["install", "profile=work"]) == ["action=install", "profile=work"]
    assert _action(["input=x.tif"]) == ["input=x.tif"] and _action(["--cfg", "job"]) == ["--cfg", "job"]


def test_zip_holds_the_plugin_its_command_and_every_style(stage_cfg, tmp_path):
    (out,) = stage.run(stage_cfg("qgis", "action=zip", f"output={tmp_path / 'p.zip'}"))
    names = zipfile.ZipFile(out).namelist()
    assert {"seg2sat_qgis/__init__.py", "seg2sat_qgis/metadata.txt", "seg2sat_qgis/provider.py",
            "seg2sat_qgis/algorithms.py", "seg2sat_qgis/runner.py", "seg2sat_qgis/cli.json"} <= set(names)
    assert {f"seg2sat_qgis/styles/{n}.qml" for n in STYLE_LEGENDS} <= set(names)
    assert json.loads(zipfile.ZipFile(out).read("seg2sat_qgis/defaults.json")) == qgis.plugin_defaults()
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
    with pytest.raises(ConfigError, match="action=nope: one of install, zip, styles, layer, defaults"):
        stage.run(stage_cfg("qgis", "action=nope"))
    with pytest.raises(ConfigError, match="the plugin archive is a .zip"):
        qgis.zip_plugin(tmp_path / "p.tar")


def test_styles_and_layer_actions(stage_cfg, tmp_path):
    written = stage.run(stage_cfg("qgis", "action=styles", f"output={tmp_path / 's'}"))
    assert len(written) == 4 * len(STYLE_LEGENDS)
    (layer,) = stage.run(stage_cfg("qgis", "action=layer", "legend=oso", f"output={tmp_path / 'd.gpkg'}"))
    assert layer.exists() and "23 " in (tmp_path / "d.qml").read_text()  # OSO's classes


def test_the_plugins_defaults_are_the_stages_configs(stage_cfg, capsys):
    defaults = qgis.plugin_defaults()
    assert defaults["synthesize"] == {"target.n_tiles": compose("synthesize").target.n_tiles}
    mosaic = compose("mosaic")
    assert defaults["mosaic"] == {"work_resolution": mosaic.work_resolution, "block": mosaic.block, "halo": mosaic.halo}
    assert defaults["infer"]["edit.margin"] == compose("infer").edit.margin and defaults["qgis"] == {"crs": "EPSG:2154"}
    assert stage.run(stage_cfg("qgis", "action=defaults")) == []
    assert json.loads(capsys.readouterr().out.splitlines()[-1]) == defaults  # `seg2sat qgis defaults`


def test_the_plugin_reads_its_defaults_beside_it_else_from_the_cli(tmp_path):
    (tmp_path / "defaults.json").write_text('{"mosaic": {"block": 7}}')
    assert runner.load_defaults(tmp_path, "/nonexistent/seg2sat") == {"mosaic": {"block": 7}}
    bare = tmp_path / "bare"  # a plugin folder copied from the source: no defaults.json, the CLI answers
    bare.mkdir()
    assert runner.load_defaults(bare, shlex.join([sys.executable, "-m", "seg2sat.cli"])) == qgis.plugin_defaults()
    assert runner.load_defaults(bare, "/nonexistent/seg2sat") == {}  # no answer: no default shown


def test_errors_name_the_users_layer():
    names = {"/tmp/seg2sat-ab12/out.tif": "layer 'bad' (/data/bad.tif)", "/tmp/seg2sat-ab12/out.tif.aux": "aux"}
    message = "/tmp/seg2sat-ab12/out.tif: 6 bands of uint8; a class raster has one band"
    assert runner.name_layers(message, names) == "layer 'bad' (/data/bad.tif): 6 bands of uint8; a class raster has one band"
    assert runner.name_layers("/tmp/seg2sat-ab12/out.tif.aux: x", names) == "aux: x"  # the longer path first
