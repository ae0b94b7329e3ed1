"""A minimal Chrome DevTools Protocol client over `websockets` (no browser download, no driver)."""

from __future__ import annotations

import base64
import json
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

from websockets.sync.client import connect

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--window-size=1400,1000"]
# querySelectorAll that also looks inside shadow roots (where components render).
DEEP = """(sel) => { const out = []; const walk = (root) => { out.push(...root.querySelectorAll(sel));
  for (const el of root.querySelectorAll('*')) if (el.shadowRoot) walk(el.shadowRoot); }; walk(document); return out; }"""


class Browser:
    """Headless Chromium with one page, driven over CDP."""

    def __init__(self, chromium: str, profile: Path, port: int) -> None:
        self.proc = subprocess.Popen([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
                                      f"--remote-debugging-port={port}", "about:blank"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        targets = None
        for _ in range(100):
            try:
                targets = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=2))
                break
            except OSError:
                time.sleep(0.2)
        if not targets:
            self.close()
            raise RuntimeError("chromium did not open its DevTools port")
        page = next(t for t in targets if t["type"] == "page")
        self.ws = connect(page["webSocketDebuggerUrl"], max_size=64 * 2**20)
        self._id = 0
        self.call("Page.enable")

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        """Send a command and wait for its answer (events in between are dropped)."""
        self._id += 1
        self.ws.send(json.dumps({"id": self._id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv(timeout=120))
            if msg.get("id") == self._id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})

    def js(self, expression: str) -> Any:
        """Evaluate JavaScript in the page and return its (JSON) value."""
        res = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        return res.get("result", {}).get("value")

    def wait(self, expression: str, timeout: float = 60.0) -> Any:
        """Poll until `expression` is truthy."""
        end = time.time() + timeout
        while time.time() < end:
            value = self.js(expression)
            if value:
                return value
            time.sleep(0.3)
        raise TimeoutError(f"timed out waiting for: {expression}")

    def rect(self, selector: str, text: str | None = None) -> dict[str, float] | None:
        """Bounding box of the first element matching `selector` (and containing `text`), deep."""
        cond = f"e.innerText && e.innerText.includes({json.dumps(text)})" if text else "true"
        return self.js(f"(() => {{ const e = ({DEEP})({json.dumps(selector)}).find(e => {cond}); if (!e) return null;"
                       " e.scrollIntoView({block: 'center'}); const r = e.getBoundingClientRect();"
                       " return {x: r.x, y: r.y, w: r.width, h: r.height}; })()")

    def mouse(self, kind: str, x: float, y: float, buttons: int = 1) -> None:
        """One mouse event at (x, y)."""
        self.call("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", buttons=buttons, clickCount=1)

    def click(self, selector: str, text: str | None = None) -> None:
        """Click the middle of an element."""
        r = self.rect(selector, text)
        if r is None:
            raise LookupError(f"no {selector} with text {text!r}")
        x, y = r["x"] + r["w"] / 2, r["y"] + r["h"] / 2
        self.mouse("mousePressed", x, y)
        self.mouse("mouseReleased", x, y, buttons=0)

    def drag(self, points: list[tuple[float, float]]) -> None:
        """Press at the first point, move through the others, release."""
        self.mouse("mousePressed", *points[0])
        for p in points[1:]:
            self.mouse("mouseMoved", *p)
        self.mouse("mouseReleased", *points[-1], buttons=0)

    def screenshot(self, path: Path) -> Path:
        """PNG of the viewport."""
        data = self.call("Page.captureScreenshot", format="png")["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.png")
        tmp.write_bytes(base64.b64decode(data))
        tmp.replace(path)
        return path

    def close(self) -> None:
        """Stop the browser."""
        try:
            self.ws.close()
        except Exception:  # noqa: BLE001 - closing a dead socket
            pass
        self.proc.terminate()
        self.proc.wait(timeout=10)
