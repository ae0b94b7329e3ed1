"""The real app in a real headless Chromium: draw with the mouse, generate, download a PNG.

Run with `python -m pytest -m e2e` (needs Debian's `chromium`; `.ci/run` installs it). It saves
a screenshot of every page to a temp folder; the README's screenshots are refreshed only on
purpose, with the trained demo model:

    SEG2SAT_SCREENSHOTS=docs/screenshots SEG2SAT_E2E_MODEL=data/models/demo \
        python -m pytest -m e2e -k draw_generate_download
"""

import contextlib
import io
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf
from PIL import Image

from seg2sat.config import APP_CONFIG_ENV, CONF_DIR, compose
from seg2sat.labels import BY_CODE

pytestmark = pytest.mark.e2e
ROOT = CONF_DIR.parent


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def _serve(tmp_path: Path, overrides: list[str]) -> Iterator[str]:
    """`streamlit run` the app with these config overrides; yields its URL."""
    cfg = compose("app", [f"paths.root_dir={tmp_path}", *overrides])
    conf = tmp_path / "app.yaml"
    conf.write_text(OmegaConf.to_yaml(cfg, resolve=True))
    port = _port()
    from seg2sat.stages.app import command

    cfg.app.port = port
    t0 = time.time()
    proc = subprocess.Popen(command(cfg), env={**os.environ, APP_CONFIG_ENV: str(conf)}, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):
            try:
                if urllib.request.urlopen(f"{url}/_stcore/health", timeout=1).read() == b"ok":
                    break
            except OSError:
                time.sleep(0.2)
        else:
            raise RuntimeError("the app did not start")
        print(f"app start-up: {time.time() - t0:.1f} s")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=20)


@pytest.fixture
def app_url(tmp_path):
    """The real app on the tiny random model (or SEG2SAT_E2E_MODEL); its URL."""
    # SEG2SAT_E2E_MODEL=data/models/demo makes the screenshots with the trained demo model,
    # which samples with its own recommended settings (its seg2sat.json).
    model = os.environ.get("SEG2SAT_E2E_MODEL", "tiny-random")
    overrides = ["model_path=tiny-random", "sampling.steps=10", "sampling.guidance_scale=3"] if model == "tiny-random" \
        else [f"model_path={Path(model).resolve()}"]
    with _serve(tmp_path, overrides) as url:
        yield url


@pytest.fixture
def browser(tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("Debian's chromium is not installed (apt-get install -y --no-install-recommends chromium)")
    sys.path.insert(0, str(Path(__file__).parent))
    from cdp import Browser

    b = Browser(chromium, tmp_path / "profile", _port())
    yield b
    b.close()


def _fetch_image(url: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(urllib.request.urlopen(url, timeout=10).read())).convert("RGB"))


@pytest.fixture
def shots(tmp_path) -> Path:
    """Where screenshots go: a temp folder, or SEG2SAT_SCREENSHOTS (e.g. docs/screenshots)."""
    folder = Path(os.environ.get("SEG2SAT_SCREENSHOTS") or tmp_path / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def test_draw_generate_download(app_url, browser, shots, tmp_path):
    # 1. Every page renders; screenshots for the README.
    for page, ready in [("", "Model ready"), ("Edit", "Upload an aerial image"), ("Batch", "Land-cover GeoTIFF"),
                        ("Model", "ControlNet parameters")]:
        browser.call("Page.navigate", url=f"{app_url}/{page}")
        browser.wait(f"document.body.innerText.includes({ready!r})", timeout=120)
        time.sleep(1.0)
        browser.screenshot(shots / f"{(page or 'home').lower()}.png")
    # 2. Draw: the canvas is found by size (it may live in a shadow root), then a stroke.
    browser.call("Page.navigate", url=f"{app_url}/Draw")
    browser.wait("document.body.innerText.includes('Draw, then press Generate')", timeout=120)
    canvas = browser.wait(f"(() => {{ const c = ({__import__('cdp').DEEP})('canvas').filter(c => "
                          "c.getBoundingClientRect().width > 100); if (!c.length) return null;"
                          " const r = c[c.length - 1].getBoundingClientRect(); return {x: r.x, y: r.y, w: r.width, h: r.height}; })()",
                          timeout=60)
    x0, y0 = canvas["x"] + 30, canvas["y"] + canvas["h"] / 2
    t_draw = time.time()
    browser.drag([(x0 + i * 8, y0 + (i % 3)) for i in range(25)])
    # the stroke reached Python: the cleaned map now holds the class colour
    green = BY_CODE[10].rgb
    browser.wait("document.body.innerText.includes('stroke pixels snapped')", timeout=60)
    time.sleep(2.0)
    # 3. Generate and wait for the image (the right column's img) and the download button.
    browser.click("button", "Generate")
    browser.wait("document.body.innerText.includes('Download PNG')", timeout=180)
    first_image_s = time.time() - t_draw
    srcs = browser.js(f"({__import__('cdp').DEEP})('img').map(i => i.src).filter(s => s.includes('/media/'))")
    images = [_fetch_image(s) for s in srcs]
    hints = [im for im in images if (np.abs(im.astype(int) - green).sum(-1) == 0).any()]
    assert hints, "the drawn stroke (herbaceous green) is not in the cleaned map"
    generated = [im for im in images if im.std() > 5 and not any(im is h for h in hints)]
    assert generated, "no generated image on the page"
    browser.screenshot(shots / "draw.png")
    for name in ("home", "edit", "batch", "model", "draw"):
        with Image.open(shots / f"{name}.png") as shot:
            assert shot.format == "PNG" and shot.width >= 800, name
    # 4. Download the PNG through the browser.
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    browser.call("Browser.setDownloadBehavior", behavior="allow", downloadPath=str(downloads))
    browser.click("button", "Download PNG")
    for _ in range(100):
        files = [p for p in downloads.iterdir() if p.suffix == ".png"]
        if files:
            break
        time.sleep(0.2)
    png = Image.open(files[0])
    png.load()
    assert png.format == "PNG" and png.size == (256, 256)
    assert np.asarray(png.convert("RGB")).std() > 5
    print(f"time from first stroke to the image on screen: {first_image_s:.1f} s")


def test_three_sessions_at_once_each_get_their_image_and_see_the_queue(tmp_path):
    """Three users press Generate within a second on a server that runs one generation at a time."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("Debian's chromium is not installed (apt-get install -y --no-install-recommends chromium)")
    sys.path.insert(0, str(Path(__file__).parent))
    from cdp import Browser

    with _serve(tmp_path, ["model_path=tiny-random", "sampling.steps=25", "sampling.guidance_scale=3", "app.max_concurrent=1"]) as url:
        tabs = [Browser(chromium, tmp_path / f"profile{i}", _port()) for i in range(3)]
        try:
            for tab in tabs:
                tab.call("Page.navigate", url=f"{url}/Draw")
            for tab in tabs:
                tab.wait("document.body.innerText.includes('Draw, then press Generate')", timeout=180)
            time.sleep(2.0)
            t0 = time.time()
            for tab in tabs:
                tab.click("button", "Generate")
            done, queued, errors = [None] * 3, set(), []
            while time.time() - t0 < 300 and None in done:
                for i, tab in enumerate(tabs):
                    text = tab.js("document.body.innerText") or ""
                    if "Waiting for the device: position" in text:
                        queued.add(i)
                    if "Traceback" in text or "Exception" in text:
                        errors.append((i, text[:300]))
                    if done[i] is None and "Download PNG" in text:
                        done[i] = time.time() - t0
                time.sleep(0.2)
        finally:
            for tab in tabs:
                tab.close()
    assert None not in done, f"sessions without an image after 300 s: {done}"
    assert not errors, errors
    assert queued, "no session saw its position in the queue"
    print(f"three sessions: images after {[round(d, 1) for d in done]} s; sessions that waited: {sorted(queued)}")
