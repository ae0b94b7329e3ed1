"""The command line as a GIS user meets it: one-line errors, checks before loading, batches that survive."""

import json
import os
import re
import subprocess
import sys
import warnings
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from PIL import Image

from seg2sat.geo.geotiff import write_geotiff
from seg2sat.geo.raster import FLAIR_CRS
from seg2sat.hints import codes_to_hint

GRID = Affine(0.2, 0, 1000, 0, -0.2, 2000)
FAST = ["model_path=tiny-random", "sampling.steps=2", "preview=false"]


@pytest.fixture
def seg2sat(monkeypatch, capsys):
    """`seg2sat ...` as a user runs it, in this process (the subprocess route is
    `test_root_scripts_...`); returns (exit status, stdout, stderr)."""
    from seg2sat.cli import QUIET_ENV, main

    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    for key, value in QUIET_ENV.items():  # main() sets them; keep them to this test
        monkeypatch.setenv(key, os.environ.get(key, value))

    def run(*args, cwd):
        monkeypatch.chdir(cwd)
        monkeypatch.setattr(sys, "argv", list(sys.argv))
        capsys.readouterr()
        with warnings.catch_warnings():
            try:
                rc = main(list(args))
            except SystemExit as exc:
                rc = exc.code
        out, err = capsys.readouterr()
        return rc, out, err

    return run


def _map(path, value=6, shape=(64, 96)):
    codes = np.full((1, *shape), value, np.uint8)
    codes[0, 20:40] = 5
    return write_geotiff(path, codes, FLAIR_CRS, GRID)


def _rotated(path):
    with rasterio.open(path, "w", driver="GTiff", width=32, height=32, count=1, dtype="uint8", crs=FLAIR_CRS,
                       transform=Affine(0.2, 0.05, 1000, 0.05, -0.2, 2000)) as dst:
        dst.write(np.full((1, 32, 32), 5, np.uint8))


@pytest.mark.parametrize(("make", "problem"), [
    (lambda p: p.write_bytes(b""), "empty file (0 bytes)"),
    (lambda p: p.write_text("not a raster"), "not a readable raster"),
    (lambda p: write_geotiff(p, np.full((1, 64, 64), 42, np.uint8), FLAIR_CRS, GRID),
     "4096 pixels hold class values outside the FLAIR legend"),
    (lambda p: _rotated(p), "rotated or sheared geotransform (b=0.05, d=0.05) is not supported; warp it north-up"),
    (lambda p: write_geotiff(p, np.full((1, 32, 32), np.nan, np.float32), FLAIR_CRS, GRID),
     "1024 NaN/inf class values outside nodata"),
    (lambda p: write_geotiff(p, np.random.default_rng(0).random((5, 32, 32)).astype(np.float32), FLAIR_CRS, GRID),
     "5 bands of float32; a class raster has one band (or 3/4 uint8 bands for a colour hint)"),
])
def test_a_bad_input_is_one_line_and_exit_2_before_any_model_loads(seg2sat, tmp_path, make, problem):
    bad = tmp_path / "bad.tif"
    make(bad)
    # The model folder does not exist: had it been loaded first, the error would be about it.
    rc, out, err = seg2sat("infer", f"input={bad}", f"model_path={tmp_path / 'no-model'}",
                           f"output_dir={tmp_path / 'out'}", cwd=tmp_path)
    assert rc == 2
    assert err.strip().splitlines() == [err.strip()], err  # one line, no traceback, no library notices
    assert err.startswith(f"seg2sat infer: error: {bad}: ") and problem in err
    assert not (tmp_path / "out").exists()


def test_missing_input_and_debug_traceback(seg2sat, tmp_path):
    rc, _, err = seg2sat("infer", "input=nowhere.tif", *FAST, cwd=tmp_path)
    assert (rc, err.strip()) == (2, "seg2sat infer: error: nowhere.tif: input not found (input=)")
    rc, _, err = seg2sat("infer", "input=nowhere.tif", "--debug", *FAST, cwd=tmp_path)
    assert rc != 0 and "Traceback" in err and "Seg2SatError: nowhere.tif: input not found" in err


REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(("script", "args", "message"), [
    ("infer.py", ["input=nowhere.tif", *FAST], "seg2sat infer: error: nowhere.tif: input not found (input=)"),
    ("train.py", ["model=sdxl"], "seg2sat train: error: model preset 'sdxl' cannot be trained by this loop yet"),
])
def test_root_scripts_give_the_cli_one_line_errors_and_exit_codes(seg2sat, tmp_path, script, args, message):
    """`python infer.py ...` is `seg2sat infer ...`: same one-line error, same exit status."""
    env = {**os.environ, "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1"}
    env.pop("HYDRA_FULL_ERROR", None)
    direct = subprocess.run([sys.executable, str(REPO / script), *args], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=300)
    rc, _, err = seg2sat(script.removesuffix(".py"), *args, cwd=tmp_path)
    assert (direct.returncode, rc) == (2, 2)
    assert direct.stderr.strip() == err.strip()
    assert err.strip().startswith(message) and "Traceback" not in direct.stderr


def test_a_batch_survives_a_bad_file_and_reports_it(seg2sat, tmp_path):
    maps = tmp_path / "maps"
    maps.mkdir()
    _map(maps / "a.tif")
    _map(maps / "b.tif", value=11)
    (maps / "notes.tif").write_text("hello")
    out = tmp_path / "out"
    rc, _, err = seg2sat("infer", f"input={maps}", f"output_dir={out}", *FAST, cwd=tmp_path)
    assert rc == 1
    last = err.strip().splitlines()[-1]
    assert last.startswith("seg2sat infer: error: 2 done, 0 skipped (already finished), 1 failed of 3 inputs; "
                           f"first: {maps / 'notes.tif'}: not a readable raster")
    assert sorted(p.name for p in out.iterdir()) == ["a.stac.json", "a.tif", "a.tif.json", "b.stac.json", "b.tif",
                                                     "b.tif.json", "collection.json", "report.json"]
    report = json.loads((out / "report.json").read_text())
    assert report["done"] == [str(out / "a.tif"), str(out / "b.tif")] and report["inputs"] == 3
    assert list(report["failed"]) == [str(maps / "notes.tif")]
    with rasterio.open(out / "a.tif") as src:
        assert src.crs == FLAIR_CRS and src.transform == GRID and (src.width, src.height) == (96, 64)
    sidecar = json.loads((out / "a.tif.json").read_text())
    assert sidecar["versions"]["seg2sat"] == version("seg2sat")
    # A rerun skips what is finished and fails again on the same file only.
    rc, _, err = seg2sat("infer", f"input={maps}", f"output_dir={out}", *FAST, cwd=tmp_path)
    assert rc == 1 and "0 done, 2 skipped (already finished), 1 failed of 3 inputs" in err


def test_dry_run_prints_a_table_and_writes_nothing(seg2sat, tmp_path):
    maps = tmp_path / "maps"
    maps.mkdir()
    _map(maps / "a.tif", shape=(64, 160))
    out = tmp_path / "out"
    rc, stdout, err = seg2sat("infer", f"input={maps}", f"output_dir={out}", "--dry-run", *FAST, cwd=tmp_path)
    assert rc == 0, err
    header, row = [line for line in stdout.splitlines() if line.startswith(("file", "a.tif"))]
    assert header.split()[:4] == ["file", "size", "(px)", "CRS"]
    assert row.split()[:5] == ["a.tif", "160x64", "EPSG:2154", "0.2", "coniferous,"]
    # windows of 64 px with a 16 px overlap over 160 px; no earlier run here to time them by
    assert re.search(r"\s3\s+unknown \(no earlier run here\)$", row), row
    assert not out.exists()
    (maps / "broken.tif").write_bytes(b"")
    rc, stdout, err = seg2sat("infer", f"input={maps}", f"output_dir={out}", "--dry-run", *FAST, cwd=tmp_path)
    assert rc == 1 and f"FAILED: {maps / 'broken.tif'}: empty file (0 bytes)" in stdout
    assert err.strip().splitlines()[-1] == "seg2sat infer: error: 1 of 2 inputs would fail (listed above)"


def test_edit_a_plain_photo_from_the_command_line(seg2sat, tmp_path):
    rng = np.random.default_rng(0)
    photo = rng.integers(0, 255, (64, 96, 3), dtype=np.uint8)
    Image.fromarray(photo).save(tmp_path / "photo.png")
    # A plain map shares the photo's local grid from its bottom-left corner: this 24 x 32 lake
    # covers rows 40..64 and columns 0..32 of the photo.
    Image.fromarray(codes_to_hint(np.full((24, 32), 5, np.uint8))).save(tmp_path / "lake.png")
    out = tmp_path / "out"
    rc, _, err = seg2sat("infer", "input=lake.png", "edit.image=photo.png", "crs=EPSG:2154", "edit.margin=4",
                         f"output_dir={out}", *FAST, cwd=tmp_path)
    assert rc == 0, err
    with rasterio.open(out / "lake.tif") as src:
        new = np.moveaxis(src.read(), 0, -1)
        assert src.crs == FLAIR_CRS and src.transform == Affine(0.2, 0, 0, 0, -0.2, 64 * 0.2)
    np.testing.assert_array_equal(new[:36], photo[:36])  # beyond the 4 px margin: untouched
    np.testing.assert_array_equal(new[:, 36:], photo[:, 36:])
    assert np.abs(new[40:, :32].astype(int) - photo[40:, :32]).mean() > 20
    rc, _, err = seg2sat("infer", "input=lake.png", "edit.image=photo.png", f"output_dir={tmp_path / 'o2'}", *FAST,
                         cwd=tmp_path)
    assert rc == 2 and "pass crs=" in err and len(err.strip().splitlines()) == 1


def test_a_foreign_product_is_refused_without_legend_and_recognised_with_auto(seg2sat, tmp_path):
    # US NLCD codes (open water, deciduous forest, cultivated crops) in its CONUS Albers grid.
    codes = np.full((1, 64, 64), 41, np.uint8)
    codes[0, :20] = 11
    codes[0, :, 40:] = 82
    nlcd = write_geotiff(tmp_path / "nlcd.tif", codes, "EPSG:5070", Affine(30, 0, -1_000_000, 0, -30, 2_000_000))
    rc, _, err = seg2sat("infer", f"input={nlcd}", "work_resolution=null", f"output_dir={tmp_path / 'o'}", *FAST,
                         cwd=tmp_path)
    assert rc == 2 and len(err.strip().splitlines()) == 1
    assert "are not FLAIR codes; they look like nlcd; pass legend=nlcd (or legend=auto)" in err
    assert not (tmp_path / "o").exists()  # refused before anything was written (or loaded)
    rc, _, err = seg2sat("infer", f"input={nlcd}", "legend=auto", "work_resolution=null",
                         f"output_dir={tmp_path / 'o'}", *FAST, cwd=tmp_path)
    assert rc == 0, err
    sidecar = json.loads((tmp_path / "o" / "nlcd.tif.json").read_text())
    # the raster's own place (its centre in the offline gazetteer), not "France"
    assert sidecar["legend"] == "nlcd"
    assert sidecar["prompt"].startswith("Aerial view of Craig, Moffat County, Colorado, United States. ")
    assert {"water", "deciduous", "agricultural land"} <= set(sidecar["prompt"].split(". ", 1)[1].split(", "))


@pytest.mark.parametrize(("args", "message"), [
    (["infer", "steps=2"], "seg2sat infer: error: steps=2: no such option; did you mean sampling.steps=2? "
                           "(`seg2sat infer --cfg job` lists every option)"),
    (["infer", "sampling.stepz=4"], "seg2sat infer: error: sampling.stepz=4: no such option; did you mean "
                                    "sampling.steps=4? (`seg2sat infer --cfg job` lists every option)"),
    (["train", "model=sd3"], "seg2sat train: error: model=sd3: no such choice; available: sd15, sd21_base, sdxl, tiny"),
])
def test_an_unknown_or_moved_key_is_one_line_naming_the_closest(seg2sat, tmp_path, args, message):
    rc, out, err = seg2sat(*args, cwd=tmp_path)
    assert (rc, err.strip()) == (2, message)


@pytest.mark.parametrize(("stage", "override", "key", "value"), [
    ("search", "query=forêt de feuillus au bord de l'eau", "query", "forêt de feuillus au bord de l'eau"),
    ("search", "query=fields, a river", "query", "fields, a river"),  # a comma is no sweep here
    ("infer", 'prompt.text=the "old" mill', "text", 'the "old" mill'),
    ("infer", "prompt.place=Côte-d'Or", "place", "Côte-d'Or"),
    ("search", "query='already quoted'", "query", "already quoted"),
])
def test_free_text_takes_apostrophes_and_quotes_as_a_shell_user_types_them(seg2sat, tmp_path, stage, override,
                                                                             key, value):
    import yaml

    rc, out, err = seg2sat(stage, override, "--cfg", "job", cwd=tmp_path)
    assert rc == 0, err
    cfg = yaml.safe_load(out)
    assert (cfg["prompt"] if stage == "infer" else cfg)[key] == value


def _suggested_keys() -> set[tuple[str, str]]:
    """(module, key) for every `key=` that a raised project error tells the user to pass."""
    import ast

    found = set()
    for path in (REPO / "seg2sat").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not (isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call)):
                continue
            name = getattr(node.exc.func, "id", getattr(node.exc.func, "attr", ""))
            if name in dir(__builtins__) or not name.endswith("Error"):  # Python's own errors: not the CLI's
                continue
            text = " ".join(c.value for c in ast.walk(node.exc) if isinstance(c, ast.Constant) and isinstance(c.value, str))
            found |= {(path.name, k) for k in re.findall(r"(?<![\w.=-])([a-z][a-z_]+(?:\.[a-z_]+)*)=(?!=)", text)}
    return found


def test_every_option_an_error_suggests_exists():
    from omegaconf import OmegaConf

    from seg2sat.cli import COMMANDS, _leaf_keys
    from seg2sat.config import compose, conf_dir

    keys = {group.name for group in conf_dir().iterdir() if group.is_dir()}  # `legend=auto`: a group's choice
    for option in conf_dir().glob("*/*.yaml"):  # the keys of choices a stage does not make by default
        keys |= {f"{option.parent.name}.{k}" for k in _leaf_keys(OmegaConf.to_container(OmegaConf.load(option)))}
    for config_name, _, _ in COMMANDS.values():
        cfg = OmegaConf.to_container(compose(config_name), resolve=False)
        keys |= set(_leaf_keys(cfg)) | {k for k, v in cfg.items() if isinstance(v, dict)}
    suggested = _suggested_keys()
    assert ("landcover.py", "crs") in suggested and len(suggested) > 15  # the scan sees the messages
    assert sorted(f"{module}: {key}=" for module, key in suggested if key not in keys) == []
