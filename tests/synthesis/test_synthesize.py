"""`seg2sat synthesize`: a FLAIR-layout dataset that `prepare` reads back, aimed, filtered, resumable, deterministic."""

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import rasterio

from seg2sat.config import compose
from seg2sat.data.flair import METADATA_NAME
from seg2sat.errors import ConfigError, DatasetError, ModelError
from seg2sat.faults import FAULT_ENV
from seg2sat.geo.stac import item_path
from seg2sat.geo.styles import colormap
from seg2sat.labels import IGNORE_CODE, code_of
from seg2sat.stages import export, prepare, synthesize, train

REPO = Path(__file__).resolve().parent.parent.parent
FAST = ["sampling.steps=2", "sampling.batch_size=1", "diversity.maps=2", "diversity.seeds=2", "judge.steps=30",
        "judge.batch_size=4", "quality.threshold=0.0"]


@pytest.fixture(scope="module")
def model(prepared_tiny, tmp_path_factory):
    """A model exported after two training steps on the tiny prepared set (its maps barely steer it)."""
    root = tmp_path_factory.mktemp("synth_model")
    run = train.run(compose("train", [f"paths.root_dir={root}", f"prepared_dir={prepared_tiny}", "max_steps=2",
                                      "checkpointing_steps=2", "batch_size=4", "validation_steps=0",
                                      "model.random_weights=true"]))
    return export.run(compose("export", [f"paths.root_dir={root}", f"run_dir={run.run_dir}",
                                         f"output_dir={root / 'model'}"])).model_dir


def _cfg(out, model, prepared, *overrides):
    return compose("synthesize", [f"paths.root_dir={out.parent}", f"paths.prepared_dir={prepared}",
                                  f"model_path={model}", f"output_dir={out}", "target.n_tiles=6", *FAST, *overrides])


def _bytes(out):
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*.tif"))}


def test_a_flair_layout_that_prepare_reads_back(model, prepared_tiny, tmp_path):
    out = tmp_path / "synthetic"
    result = synthesize.run(_cfg(out, model, prepared_tiny, "target.classes={greenhouse: 0.05}"))
    assert result.report["accepted"] == 6 and result.report["dropped"] == 0
    # 1. FLAIR-1's layout, IMG (3 bands) and MSK on one grid, georeferenced as their map
    imgs = sorted(out.glob("flair_aerial_train/*/*/img/IMG_*.tif"))
    msks = sorted(out.glob("flair_labels_train/*/*/msk/MSK_*.tif"))
    assert len(imgs) == len(msks) == 6
    for img, msk in zip(imgs, msks, strict=True):
        with rasterio.open(img) as a, rasterio.open(msk) as b:
            assert a.count == 3 and a.dtypes[0] == "uint8" and b.count == 1
            assert a.crs == b.crs and a.crs.to_epsg() == 2154 and a.transform == b.transform
            assert a.shape == b.shape == (64, 64)
            assert b.colormap(1)[code_of("greenhouse")] == colormap()[code_of("greenhouse")]
        item = json.loads(item_path(img).read_text())  # a STAC Item per pair: image, mask, provenance
        assert item["id"] == img.stem and item["collection"] == f"seg2sat-{out.name}"
        assert item["assets"]["mask"]["roles"] == ["data", "labels"] and item["assets"]["mask"]["href"].endswith(
            msk.name) and item["properties"]["seg2sat:model"] == str(model)
    links = json.loads((out / "collection.json").read_text())["links"]
    assert sorted(ln["href"].rsplit("/", 1)[1] for ln in links if ln["rel"] == "item") == sorted(
        item_path(i).name for i in imgs)
    # 2. FLAIR's metadata JSON, declaring the bands, with score, seed and source
    meta = json.loads((out / METADATA_NAME).read_text())
    first = meta[f"IMG_{result.plans[0].id}"]
    assert first["bands"] == ["red", "green", "blue"] and first["synthetic"] and first["source"].startswith("prepared:")
    assert set(first) >= {"domain", "zone", "score", "seed", "prompt", "patch_centroid_x"}
    records = [json.loads(line) for line in (out / "synthesis.jsonl").read_text().splitlines()]
    assert [r["id"] for r in records] == [p.id for p in result.plans]
    # 3. `seg2sat prepare` reads it as it reads FLAIR
    back = prepare.run(compose("prepare", [f"paths.root_dir={tmp_path}", f"data_root={out}",
                                           f"output_dir={tmp_path / 'prepared_back'}"]))
    assert back.n_tiles == 6 and back.n_failed == 0
    # 4. trust off (the default): every pixel keeps its label, no ignore code declared
    assert not any((rasterio.open(m).read(1) == IGNORE_CODE).any() for m in msks)
    assert all("ignore_code" not in v for v in meta.values()) and result.report["trust"] is None
    captions = [json.loads(line)["caption"] for line in back.manifest_path.read_text().splitlines()]
    assert all(c.startswith("Aerial view of ") for c in captions)


def test_target_shares_are_reached_and_reported(model, prepared_tiny, tmp_path):
    out = tmp_path / "synthetic"
    result = synthesize.run(_cfg(out, model, prepared_tiny, "target.n_tiles=8",
                                 "target.classes={greenhouse: 0.05, swimming pool: 3}"))
    greenhouse, pool = code_of("greenhouse"), code_of("swimming pool")
    records = [json.loads(line) for line in (out / "synthesis.jsonl").read_text().splitlines()]
    edited = [r for r in records if r["source_kind"] == "edited"]
    assert len(edited) == 4
    for r in edited:
        with rasterio.open(out / r["mask"]) as src:
            codes = src.read(1)
        assert (codes == greenhouse).mean() >= 0.05, r["edits"]
    targets = {t["class"]: t for t in result.report["targets"]}
    assert targets["greenhouse"]["reached"] and targets["greenhouse"]["min_share_edited"] >= 0.05
    assert targets["swimming pool"]["reached"] and targets["swimming pool"]["tiles_holding"] >= 3
    asked = [p.id for p in result.plans if pool in p.needs]
    assert len(asked) == 3  # a count target goes to the first edited tiles
    for r in records:
        if r["id"] in asked:
            with rasterio.open(out / r["mask"]) as src:
                assert (src.read(1) == pool).any()
    made, real = result.report["classes"]["made"], result.report["classes"]["sources"]
    assert made["greenhouse"]["share"] > real["greenhouse"]["share"]


def test_the_filter_drops_the_pairs_of_a_model_that_ignores_its_map(model, prepared_tiny, tmp_path):
    """An (almost) untrained ControlNet makes images the judge does not read as their maps: all dropped."""
    from seg2sat.evaluation.judge import JudgeConfig, load_or_train_judge, split_arrays
    from seg2sat.evaluation.scores import segmentation_scores

    bar = 0.3
    # the judge of tests/evaluation/test_judge.py (cached once per session): it reads real images well
    strong = ["judge.widths=[16,32,32]", "judge.steps=150", "judge.batch_size=8", "judge.learning_rate=4e-3"]
    judge, _ = load_or_train_judge(prepared_tiny, JudgeConfig(widths=(16, 32, 32), steps=150, batch_size=8,
                                                              learning_rate=4e-3))
    _, images, codes = split_arrays(prepared_tiny, "train")
    real = [segmentation_scores([judge.classify(i)], [c])["miou"] for i, c in zip(images, codes, strict=True)]
    assert np.mean(np.array(real) >= bar) > 0.8  # the real images of these maps pass the same bar
    result = synthesize.run(_cfg(tmp_path / "synthetic", model, prepared_tiny, f"quality.threshold={bar}",
                                 "quality.retries=1", "diversity.maps=0", *strong))
    assert result.report["dropped"] == 6 and result.report["accepted"] == 0
    assert all(r["attempts"] == 2 for r in map(json.loads, (tmp_path / "synthetic" / "synthesis.jsonl")
                                                .read_text().splitlines()))
    assert not list((tmp_path / "synthetic").rglob("IMG_*.tif"))


def test_killed_and_resumed_equals_an_uninterrupted_run(model, prepared_tiny, tmp_path):
    full = tmp_path / "full"
    synthesize.run(_cfg(full, model, prepared_tiny, "diversity.maps=0"))
    killed = tmp_path / "killed"
    args = [f"paths.root_dir={tmp_path}", f"paths.prepared_dir={prepared_tiny}", f"model_path={model}",
            f"output_dir={killed}", "target.n_tiles=6", *FAST, "diversity.maps=0"]
    env = {**os.environ, "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1", FAULT_ENV: "kill@synthesize.tile:3"}
    run = subprocess.run([sys.executable, "-m", "seg2sat.cli", "synthesize", *args], env=env,
                         cwd=REPO, capture_output=True, text=True, timeout=600)
    assert run.returncode == -9, run.stderr[-1500:]
    assert len(list((killed / "tiles").glob("*.json"))) == 3 and not (killed / METADATA_NAME).exists()
    again = synthesize.run(_cfg(killed, model, prepared_tiny, "diversity.maps=0"))
    assert again.made_now == 3
    assert _bytes(killed) == _bytes(full)
    assert (killed / METADATA_NAME).read_bytes() == (full / METADATA_NAME).read_bytes()


# Ray clusters of 1 and 2 workers (tens of seconds): in CI's `-m slow` run, not the default one.
@pytest.mark.slow
def test_one_and_two_ray_workers_write_the_same_bytes(model, prepared_tiny, tmp_path, one_thread):
    ray = pytest.importorskip("ray", reason="the ray extra is not installed")
    temp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")
    ray.init(num_cpus=2, _temp_dir=temp, include_dashboard=False, log_to_driver=False)
    try:
        outs = {}
        for n in (1, 2):
            outs[n] = tmp_path / f"w{n}"
            synthesize.run(_cfg(outs[n], model, prepared_tiny, "engine=ray", f"ray.workers={n}", "diversity.maps=0"))
    finally:
        ray.shutdown()
        shutil.rmtree(temp, ignore_errors=True)
    # Ray gives each worker one CPU and so one torch thread; the local run matches it (`one_thread`:
    # another thread count sums in another order and can move a pixel by one level).
    local = tmp_path / "local"
    synthesize.run(_cfg(local, model, prepared_tiny, "diversity.maps=0"))
    assert _bytes(outs[1]) == _bytes(outs[2]) == _bytes(local) and len(_bytes(local)) == 12


def test_trust_writes_untrusted_pixels_as_the_ignore_code_and_prepare_reads_them(model, prepared_tiny, tmp_path):
    """FreeMask-style: with a strict factor some pixels are ignored; the images, and every other pixel, are unchanged."""
    from seg2sat.data.dataset import load_rgb
    from seg2sat.hints import hint_to_codes

    plain = synthesize.run(_cfg(tmp_path / "plain", model, prepared_tiny, "diversity.maps=0", "target.n_tiles=3"))
    out = tmp_path / "trusted"
    trusted = synthesize.run(_cfg(out, model, prepared_tiny, "diversity.maps=0", "target.n_tiles=3",
                                  "trust.enabled=true", "trust.factor=0.5"))
    assert _bytes(out).keys() == _bytes(tmp_path / "plain").keys()
    meta = json.loads((out / METADATA_NAME).read_text())
    total = 0
    for r in (json.loads(line) for line in (out / "synthesis.jsonl").read_text().splitlines()):
        with rasterio.open(out / r["mask"]) as a, rasterio.open(tmp_path / "plain" / r["mask"]) as b:
            mask, map_ = a.read(1), b.read(1)
        assert (out / r["image"]).read_bytes() == (tmp_path / "plain" / r["image"]).read_bytes()
        ignored = mask == IGNORE_CODE
        assert np.array_equal(mask[~ignored], map_[~ignored])  # kept pixels keep their label
        assert meta[f"IMG_{r['id']}"]["ignore_code"] == IGNORE_CODE  # declared in FLAIR's metadata
        assert meta[f"IMG_{r['id']}"]["ignored_pixels"] == r["ignored"] == int(ignored.sum())
        total += int(ignored.sum())
    assert total > 0 and trusted.report["trust"]["ignored_pixels"] == total
    # (this 2-step model barely follows its maps: most of its pixels are untrusted)
    assert 0 < trusted.report["trust"]["ignored_share"] <= 1 and plain.report["trust"] is None
    # `prepare` reads the code: ignored pixels are nodata (valid 0), the hint stays a legend hint
    back = prepare.run(compose("prepare", [f"paths.root_dir={tmp_path}", f"data_root={out}",
                                           f"output_dir={tmp_path / 'prepared_back'}"]))
    records = [json.loads(line) for line in back.manifest_path.read_text().splitlines()]
    assert sum(r["nodata_pixels"] for r in records) == total
    for r in records:
        with rasterio.open(next(out.rglob(f"MSK_{r['id']}.tif"))) as src:
            mask = src.read(1)
        hint = hint_to_codes(load_rgb(back.prepared_dir / r["hint"]))
        kept = mask != IGNORE_CODE
        assert np.array_equal(hint[kept], mask[kept])
        if r["valid"]:
            assert np.array_equal(load_rgb(back.prepared_dir / r["valid"])[..., 0] > 0, kept)
        else:
            assert kept.all()


def test_prepare_gives_an_ignored_pixel_the_class_of_the_nearest_kept_one():
    """Never the ignore code, never a made-up class: the hint shows the class around; a tile all ignored is "other"."""
    from seg2sat.data.prepare import fill_ignored
    from seg2sat.labels import OTHER_CODE

    codes = np.array([[1, 1, IGNORE_CODE, IGNORE_CODE, 5, 5], [1, 1, 1, 5, 5, 5]], np.uint8)
    assert fill_ignored(codes).tolist() == [[1, 1, 1, 5, 5, 5], [1, 1, 1, 5, 5, 5]]
    assert fill_ignored(np.full((2, 2), IGNORE_CODE, np.uint8)).tolist() == [[OTHER_CODE] * 2] * 2
    kept = codes[1:]
    assert fill_ignored(kept) is kept  # nothing ignored: the codes as they are


def test_the_dry_run_says_how_many_distinct_maps_and_how_often_each_is_rendered(model, prepared_tiny, tmp_path):
    """40 tiles from the 16 training maps: each map is rendered 2 or 3 times, and the dry run says so."""
    result = synthesize.run(_cfg(tmp_path / "out", model, prepared_tiny, "check=true", "target.n_tiles=40",
                                 f"sources=[{{kind: prepared, path: {prepared_tiny}}}]"))
    assert "16 distinct in the sources; the tiles render 16 of them, up to 3x each (mean 2.5x)" in result.table
    assert "16 maps rendered more than once" in result.table
    assert "trust     off" in result.table and not (tmp_path / "out").exists()
    # hardness-aware re-sampling: the maps of the hardest classes under the judge are drawn more often
    hard = synthesize.run(_cfg(tmp_path / "out", model, prepared_tiny, "check=true", "target.n_tiles=40",
                               f"sources=[{{kind: prepared, path: {prepared_tiny}}}]", "trust.resample=true"))
    assert "maps drawn by hardness" in hard.table and not (tmp_path / "out").exists()
    assert [p.item for p in hard.plans] != [p.item for p in result.plans]


def test_map_reuse_counts_identical_windows_once_and_hardness_draws_hard_maps():
    from affine import Affine

    from seg2sat.synthesis.plan import make_plan, map_reuse
    from seg2sat.synthesis.sources import MaskItem
    from seg2sat.synthesis.spec import SourceSpec, SynthesisSpec, Target

    def item(code):
        return MaskItem(np.full((4, 4), code, np.uint8), np.ones((4, 4), bool), "EPSG:2154", Affine.identity(), "x")

    items = [[item(6), item(6), item(6), item(1), item(5)]]  # three windows of one uniform forest
    spec = SynthesisSpec(target=Target(n_tiles=12), sources=(SourceSpec("landcover", REPO),))
    plan = make_plan(spec, items)
    reuse = map_reuse(plan, items)
    assert reuse["distinct_in_sources"] == 3 and reuse["used"] == 3 and reuse["per_source"][0]["maps"] == 5
    forest = sum(p.item < 3 for p in plan)  # 12 tiles over 5 windows: each window 2 or 3 times
    assert forest >= 6 and reuse["max_reuse"] == forest and reuse["reused"] == 3
    hard = make_plan(spec, items, hardness=[[0.0, 0.0, 0.0, 1.0, 0.0]])
    assert {p.item for p in hard} == {3}


@pytest.mark.parametrize(("overrides", "error", "message"), [
    (["target.classes={greenhous: 0.05}"], ConfigError, r"target.classes: 'greenhous' is not a FLAIR class name"),
    (["target.classes={snow: 0.05}"], ConfigError, r"no source can reach 'snow'"),
    (["sources=[{kind: prepared, path: /nowhere}]"], ConfigError, r"sources\[0\] \(prepared\): /nowhere not found"),
    (["sources=[{kind: prepared, path: PREPARED, split: test}]"], DatasetError, r"sources\[0\] .*no maps \(split 'test'"),
    (["model_path=NOCN"], ModelError, r"no ControlNet here"),
    (["trust.enabled=true", "judge_data=null"], ConfigError, r"trust: per-pixel trust and hardness need a judge"),
    (["trust.factor=0"], ConfigError, r"trust.factor=0: a loss ratio, must be > 0"),
])
def test_bad_inputs_are_one_line_errors_before_any_generation(prepared_tiny, tmp_path, overrides, error, message,
                                                              monkeypatch):
    def no_model(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(synthesize, "build_renderer", no_model)
    (tmp_path / "nocn").mkdir()
    overrides = [o.replace("PREPARED", str(prepared_tiny)).replace("NOCN", str(tmp_path / "nocn")) for o in overrides]
    with pytest.raises(error, match=message):
        synthesize.run(_cfg(tmp_path / "out", "tiny-random", prepared_tiny, *overrides))
    assert not (tmp_path / "out").exists()


def test_land_cover_of_another_product_cut_into_patches(model, prepared_tiny, geo_samples, tmp_path):
    """The North Carolina raster through its legend: patches on its own grid, named by its own place."""
    out = tmp_path / "synthetic"
    src = geo_samples / "strata.tif"
    result = synthesize.run(_cfg(out, model, prepared_tiny, "target.n_tiles=3", "work_resolution=28.5",
                                 f"sources=[{{kind: landcover, path: {src}, legend: nc_landsat96}}]",
                                 "diversity.maps=0"))
    assert result.report["accepted"] == 3
    records = [json.loads(line) for line in (out / "synthesis.jsonl").read_text().splitlines()]
    with rasterio.open(src) as ref:
        for r in records:
            assert r["source"].startswith("landcover:strata.tif:") and "North Carolina" in r["prompt"]
            with rasterio.open(out / r["image"]) as img:
                assert img.crs == ref.crs and img.res == pytest.approx((28.5, 28.5))
                row, col = (int(v) for v in r["source"].rsplit(":", 1)[1].split(","))
                assert img.transform.c == pytest.approx(ref.transform.c + col * 28.5, abs=1e-3)
                assert img.transform.f == pytest.approx(ref.transform.f - row * 28.5, abs=1e-3)


def test_without_a_judge_every_pair_is_kept_unjudged(model, prepared_tiny, geo_samples, tmp_path):
    """judge_data=null (land cover with no real images): the first seed of every tile, no score."""
    src = geo_samples / "strata.tif"
    args = ["target.n_tiles=2", "work_resolution=null", "diversity.maps=2",
            f"sources=[{{kind: landcover, path: {src}, legend: nc_landsat96}}]"]
    judged = synthesize.run(_cfg(tmp_path / "judged", model, prepared_tiny, *args))
    unjudged = synthesize.run(_cfg(tmp_path / "unjudged", model, prepared_tiny, *args, "judge_data=null"))
    assert unjudged.report["accepted"] == 2 and unjudged.report["score"] is None
    assert unjudged.report["diversity"] is None and judged.report["diversity"]["maps"] == 2
    assert judged.report["score"]["min"] >= 0.0  # threshold 0: the judged run also keeps its first seeds
    assert _bytes(tmp_path / "unjudged") == _bytes(tmp_path / "judged")
    with rasterio.open(next((tmp_path / "unjudged").rglob("IMG_*.tif"))) as img, rasterio.open(src) as ref:
        assert img.res == ref.res and img.crs == ref.crs  # work_resolution=null: the raster's own grid


def test_maps_of_a_merge13_dataset_declare_their_legend(tmp_path):
    """`segment` refuses to mix legends; a synthetic set made from merged maps says it is merged."""
    from seg2sat.evaluation.segmenter import MERGED_LEGEND
    from seg2sat.synthesis.dataset import metadata
    from seg2sat.synthesis.spec import SourceSpec, SynthesisSpec, Target

    merged, plain = tmp_path / "merged", tmp_path / "plain"
    for folder, flag in ((merged, "true"), (plain, "false")):
        folder.mkdir()
        (folder / "prepare_config.yaml").write_text(f"merge13: {flag}\n")
    spec = SynthesisSpec(target=Target(n_tiles=1), sources=(SourceSpec("prepared", merged),))
    assert synthesize._legend(spec) == MERGED_LEGEND
    assert synthesize._legend(SynthesisSpec(target=Target(n_tiles=1), sources=(SourceSpec("edited", plain),))) is None
    record = {"id": "90000000", "state": "accepted", "transform": [1, 0, 0, 0, -1, 0], "size": [4, 4], "domain": "D",
              "zone": "Z", "date": None, "source": "prepared:1", "edits": [], "score": None, "seed": 0, "prompt": "",
              "style": None, "season": None}
    assert metadata([record], "m", MERGED_LEGEND)["IMG_90000000"]["legend"] == MERGED_LEGEND
    assert "legend" not in metadata([record], "m")["IMG_90000000"]
