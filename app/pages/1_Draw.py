"""Draw a land-cover map and generate its aerial image."""

import numpy as np
import streamlit as st

from seg2sat.serving import app_support as sup
from seg2sat.serving import app_ui as ui

st.set_page_config(page_title="Seg2Sat - Draw", layout="wide")
st.title("Draw your aerial image")
cfg = ui.config()
size = int(cfg.app.canvas_size)
rows = sup.legend_rows()

with st.sidebar:
    cls = st.selectbox("Class", rows, index=sup.legend_index("herbaceous vegetation"), format_func=lambda r: f"{r['code']} {r['name']}", key="draw_class")
    st.markdown(f"<span style='display:inline-block;width:2em;height:1em;background:{cls['color']}'></span> "
                f"`{cls['color']}`", unsafe_allow_html=True)
    brush = st.slider("Brush size", 1, 60, 16, key="draw_brush")
    tool = st.radio("Tool", ["freedraw", "line", "rect", "polygon"], horizontal=True, key="draw_tool")
    start = st.radio("Start from", ["blank", "village", "river", "upload"], key="draw_start")
    upload = st.file_uploader("Map (colour-hint PNG or FLAIR MSK GeoTIFF)", type=["png", "tif", "tiff"],
                              key="draw_upload") if start == "upload" else None
    prompt_opts = ui.prompt_controls("draw")
    sampling = ui.sampling_controls("draw")

# 1. The base map: blank, a template, or an upload.
base_upload = None
if start == "upload" and upload is not None:
    base_upload = ui.friendly(sup.read_upload, upload.name, upload.getvalue(),
                              max_bytes=int(cfg.app.max_upload_mb) * 2**20,
                              max_pixels=int(cfg.app.max_upload_pixels))
if base_upload is not None:
    base = ui.friendly(sup.upload_to_codes, base_upload, size)
else:
    base = sup.template_codes("fields" if start in ("blank", "upload") else start, size)
if base is None:
    st.stop()

# 2. The canvas (strokes over the base map). Tests set `test_strokes` instead of drawing.
left, right = st.columns(2)
with left:
    st.caption("Your map (undo, redo and clear are in the canvas toolbar)")
    strokes = st.session_state.get("test_strokes")
    if strokes is None:
        from streamlit_drawable_canvas import st_canvas

        result = st_canvas(fill_color=cls["color"], stroke_width=brush, stroke_color=cls["color"],
                           background_image=sup.png_bytes(sup.codes_to_hint(base)), height=size, width=size,
                           drawing_mode=tool, return_image_data=True, key=f"canvas_{start}")
        strokes = result.image_data
codes, hint, changed = sup.compose_drawing(base, strokes)

# 3. Generate.
if st.button("Generate", type="primary", key="generate"):
    loaded = ui.require_model()
    if loaded is not None:
        prompt = sup.make_prompt(codes, cfg, **prompt_opts, upload=base_upload, model=loaded)
        settings = ui.friendly(ui.settings, loaded, sampling)
        out = None
        if settings is not None:
            with ui.device_slot("draw"):
                out = ui.friendly(sup.generate, loaded, codes, prompt, settings, progress=ui.progress_bar("Generating"))
        if out is not None:
            out["hint"] = hint
            out["georef"] = (base_upload.crs, base_upload.transform, base_upload.codes.shape[::-1]) \
                if base_upload is not None and base_upload.georeferenced else None
            st.session_state.setdefault("history", []).insert(0, out)

history = st.session_state.get("history", [])
with right:
    if history:
        last = history[0]
        st.image(last["image"], caption=f"{last['prompt']} (seed {last['seed']}, {last['seconds']} s)",
                 use_container_width=True)
        st.download_button("Download PNG", sup.png_bytes(last["image"]), "seg2sat.png", "image/png",
                           key="dl_png")
        if last["georef"] is not None:
            crs, transform, shape = last["georef"]
            st.download_button("Download GeoTIFF", sup.geotiff_bytes(last["image"], crs, transform, shape),
                               "seg2sat.tif", "image/tiff", key="dl_tif")
    else:
        st.info("Draw, then press Generate.")
st.caption(f"Cleaned map sent to the model ({changed} stroke pixels snapped to legend colours):")
st.image(hint, width=min(size, 256))
if len(history) > 1:
    st.subheader("History")
    cols = st.columns(4)
    for i, item in enumerate(history[1:9]):
        cols[i % 4].image(np.concatenate([item["hint"], item["image"]], axis=1), caption=f"seed {item['seed']}")
