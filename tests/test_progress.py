"""Machine-readable progress: `--progress=json` lines a program can parse, bars off; the QGIS runner reads them."""

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
from affine import Affine

from seg2sat import progress
from seg2sat.config import CONF_DIR
from seg2sat.geo.geotiff import write_geotiff
from seg2sat.geo.raster import FLAIR_CRS

sys.path.insert(0, str(CONF_DIR.parent / "qgis_plugin"))
from seg2sat_qgis import runner  # noqa: E402  (the plugin's runner imports nothing from QGIS)

REPO = CONF_DIR.parent


def test_report_prints_json_only_in_json_mode(monkeypatch, capsys):
    monkeypatch.delenv(progress.PROGRESS_ENV, raising=False)
    progress.report(1, 2, "half")
    assert capsys.readouterr().err == ""
    monkeypatch.setenv(progress.PROGRESS_ENV, "json")
    monkeypatch.setitem(progress._last, "t", 0.0)
    progress.report(1, 4, "a quarter")
    progress.report(2, 4, "dropped: too soon after the last one")
    progress.report(4, 4, "done")  # the last one is always printed
    lines = capsys.readouterr().err.splitlines()
    assert [json.loads(line) for line in lines] == [
        {"event": "progress", "fraction": 0.25, "message": "a quarter"},
        {"event": "progress", "fraction": 1.0, "message": "done"}]


def test_runner_reads_progress_and_errors():
    assert runner.progress_of(progress.line(0.5, "x")) == (0.5, "x")
    assert runner.progress_of("files:  50%|#####| " + progress.line(0.25, "y")) == (0.25, "y")  # after a bar
    assert runner.progress_of('{"event": "other"}') is None and runner.progress_of("plain text") is None
    assert runner.error_of("seg2sat infer: error: /a.tif: file not found") == "/a.tif: file not found"
    assert runner.error_of("seg2sat: unknown command") is None
    assert runner.failure(["[2026-01-01 10:00:00][x][INFO] - hi", "In 'infer': Could not find 'legend/nope'",
                           "", "Available options in 'legend':", "\tauto",
                           "Set the environment variable HYDRA_FULL_ERROR=1 for a complete stack trace."]
                          ) == "In 'infer': Could not find 'legend/nope'"
    assert runner.failure(["Traceback (most recent call last):", '  File "x", line 1',
                           "ModuleNotFoundError: No module named 'seg2sat'"]) == \
        "ModuleNotFoundError: No module named 'seg2sat'"


@pytest.mark.parametrize("value", ["/tmp/a b/x.tif", "it's", "C:\\dir\\", "a,b=[c]", "x=1 y"])
def test_runner_quotes_values_as_hydra_reads_them(value):
    from hydra.core.override_parser.overrides_parser import OverridesParser

    override = OverridesParser.create().parse_override(runner.overrides({"input": value})[0])
    assert override.value() == value


def test_runner_refuses_a_bad_key_and_an_empty_command():
    with pytest.raises(runner.CliError, match="is not a configuration key"):
        runner.overrides({"a b": 1})
    with pytest.raises(runner.CliError, match="the Seg2Sat command is empty"):
        runner.split_command("  ")


def _command():
    return f"env PYTHONPATH={REPO} {sys.executable} -m seg2sat.cli"


@pytest.fixture
def small_map(tmp_path):
    codes = np.full((1, 96, 96), 6, np.uint8)
    codes[0, :, 40:] = 11
    return write_geotiff(tmp_path / "map.tif", codes, FLAIR_CRS, Affine(0.2, 0, 1000, 0, -0.2, 2000))


def test_cli_progress_json_through_the_runner(small_map, tmp_path):
    seen, other = [], []
    runner.run_cli(_command(), "infer", {"input": str(small_map), "output_dir": str(tmp_path / "out"),
                                        "model_path": "tiny-random", "sampling.steps": 2, "preview": False},
                   on_progress=lambda f, m: seen.append((f, m)), on_line=other.append, cwd=tmp_path)
    fractions = [f for f, _ in seen]
    assert len(seen) >= 2 and fractions == sorted(fractions) and fractions[-1] == 1.0
    assert seen[-1][1] == "map.tif: done" and (tmp_path / "out" / "map.tif").exists()
    assert not any("%|" in line for line in other)  # no tqdm bar in JSON mode


def test_runner_relays_the_cli_error_line(tmp_path):
    with pytest.raises(runner.CliError, match=r"^.*missing.tif: input not found \(input=\)$"):
        runner.run_cli(_command(), "infer", {"input": str(tmp_path / "missing.tif")}, cwd=tmp_path)
    with pytest.raises(runner.CliError, match="cannot be run .* Processing > Options > Providers > Seg2Sat"):
        runner.run_cli(str(tmp_path / "no-such-seg2sat"), "infer", {}, cwd=tmp_path)


def test_runner_cancel_stops_the_process(small_map, tmp_path):
    t0 = time.monotonic()
    started = []

    def canceled():
        return bool(started)

    with pytest.raises(runner.CliCanceled, match="canceled"):
        runner.run_cli(_command(), "infer", {"input": str(small_map), "output_dir": str(tmp_path / "out"),
                                            "model_path": "tiny-random", "sampling.steps": 50},
                       on_progress=lambda f, m: started.append(f), is_canceled=canceled, cwd=tmp_path)
    assert time.monotonic() - t0 < 120 and not (tmp_path / "out" / "map.tif.json").exists()


def test_cli_flag_without_the_runner(small_map, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "seg2sat.cli", "infer", "--progress=json", f"input={small_map}",
                           f"output_dir={tmp_path / 'o'}", "model_path=tiny-random", "sampling.steps=2",
                           "preview=false"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    events = [json.loads(line) for line in proc.stderr.splitlines() if line.startswith('{"event"')]
    assert events and events[-1] == {"event": "progress", "fraction": 1.0, "message": "map.tif: done"}
