"""Streamlit glue shared by the app's pages: cached config and model, status, legend, errors.

Only layout and caching live here; the work is in `seg2sat.serving.app_support`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import streamlit as st

from seg2sat.errors import Seg2SatError
from seg2sat.generation.models import LoadedModel, peek_model
from seg2sat.generation.sampling import Sampling
from seg2sat.serving import app_support as sup
from seg2sat.serving.device_queue import DeviceQueue, QueueStatus


@st.cache_resource(show_spinner=False)
def config() -> Any:
    """The app config, read once per server."""
    return sup.app_config()


@st.cache_resource(show_spinner=False)
def device_queue() -> DeviceQueue:
    """The one queue in front of the device, shared by every session of this server."""
    return DeviceQueue(int(config().app.max_concurrent))


@contextlib.contextmanager
def device_slot(label: str) -> Iterator[None]:
    """Wait for a free slot on the device, showing the position in line; run the body in it.

    Pressing Cancel (or any other widget) stops this script run while it waits, which takes
    the request out of the line (`DeviceQueue.slot`).
    """
    info, cancel = st.empty(), st.empty()
    shown = False

    def on_wait(status: QueueStatus) -> None:
        nonlocal shown
        eta = f", about {status.eta_s:.0f} s" if status.eta_s is not None else ""
        info.info(f"Waiting for the device: position {status.position} in line "
                  f"({status.running} generation(s) running{eta}).")
        if not shown:
            cancel.button("Cancel", key=f"cancel_{label}")
            shown = True

    with device_queue().slot(on_wait=on_wait):
        info.empty()
        cancel.empty()
        yield


@st.cache_resource(show_spinner="Loading the model...")
def model() -> LoadedModel:
    """The model with its info, loaded once per server and shared by every session."""
    return sup.load_model(config())


def require_model() -> LoadedModel | None:
    """The model, or a message (and the button that builds the demo model) when it is missing."""
    cfg = config()
    if sup.demo_model_missing(cfg):
        st.warning(f"No model at `{cfg.model_path}` yet. Build the embedded demo model here (about 13 minutes "
                   "on CPU), or run `seg2sat demo` in a terminal.")
        if st.button("Build the demo model", key="build_demo"):
            with st.status("Building the demo model: sample data, prepare, train, export...", expanded=True):
                bar = st.progress(0.0, text="working (see the terminal for details)")
                sup.build_demo_model(cfg)
                bar.progress(1.0, text="done")
            model.clear()
            st.rerun()
        return None
    try:
        return model()
    except Seg2SatError as exc:
        st.error(str(exc))
        return None


def settings(loaded: LoadedModel | None, overrides: dict[str, Any]) -> Sampling:
    """`infer`'s settings for this config and model, with the page's widget values."""
    return Sampling.from_config(config().sampling, loaded, **overrides)


def progress_bar(label: str) -> Callable[[int, int], None]:
    """A progress callback drawing a Streamlit progress bar."""
    bar = st.progress(0.0, text=label)

    def update(done: int, total: int) -> None:
        bar.progress(min(1.0, done / max(1, total)), text=f"{label} {done}/{total}")

    return update


def friendly(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run `fn`; show a Seg2Sat error as a message instead of a traceback (None then)."""
    try:
        return fn(*args, **kwargs)
    except Seg2SatError as exc:
        st.error(str(exc))
        return None


def legend_markdown() -> str:
    """The palette as coloured swatches."""
    return "  \n".join(f"<span style='display:inline-block;width:1em;height:1em;background:{r['color']};"
                       f"border:1px solid #888'></span> {r['code']} {r['name']}" for r in sup.legend_rows())


def sampling_controls(prefix: str) -> dict[str, Any]:
    """Seed, steps, guidance and ControlNet scale widgets, starting at `infer`'s settings."""
    cfg = config()
    # The model's recommendation is in its seg2sat.json: no need to load weights to draw widgets.
    peeked = None
    with contextlib.suppress(Seg2SatError):  # require_model shows the error where it matters
        peeked = peek_model(str(cfg.model_path))
    base = settings(peeked, {})
    with st.expander("Sampling", expanded=False):
        return {
            "seed": st.number_input("Seed", 0, 2**31 - 1, base.seed, key=f"{prefix}_seed"),
            "steps": st.slider("Steps", 1, 50, base.steps, key=f"{prefix}_steps"),
            "guidance_scale": st.slider("Guidance", 1.0, 15.0, base.guidance_scale, key=f"{prefix}_guidance"),
            "controlnet_scale": st.slider("ControlNet scale", 0.0, 4.0, base.controlnet_scale, key=f"{prefix}_cn"),
        }


def prompt_controls(prefix: str) -> dict[str, Any]:
    """Place and style presets (and an optional full prompt)."""
    cfg = config()
    return {
        "place": st.text_input("Place", str(cfg.prompt.place), key=f"{prefix}_place"),
        "style": st.selectbox("Style", sup.style_names(), key=f"{prefix}_style"),
        "text": st.text_input("Full prompt (optional, replaces the automatic one)", "", key=f"{prefix}_text"),
    }
