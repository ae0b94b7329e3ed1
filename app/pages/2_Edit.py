"""Repaint part of a real aerial image with new land cover and regenerate only that part."""

import numpy as np
import streamlit as st

from seg2sat.serving import app_support as sup
from seg2sat.serving import app_ui as ui

st.set_page_config(page_title="Seg2Sat - Edit", layout="wide")
st.title("Edit an aerial image")
cfg = ui.config()
rows = sup.legend_rows()
with st.sidebar:
    cls = st.selectbox("New land cover", rows, index=sup.legend_index("water"), format_func=lambda r: f"{r['code']} {r['name']}",
                       key="edit_class")
    brush = st.slider("Brush size", 1, 60, 24, key="edit_brush")
    prompt_opts = ui.prompt_controls("edit")
    sampling = ui.sampling_controls("edit")

upload = st.file_uploader("Aerial image (PNG or GeoTIFF)", type=["png", "jpg", "jpeg", "tif", "tiff"],
                          key="edit_upload")
if upload is None:
    st.info("Upload an aerial image, paint the new land cover over part of it, then Regenerate.")
    st.stop()
image = ui.friendly(sup.read_upload, upload.name, upload.getvalue(), max_bytes=int(cfg.app.max_upload_mb) * 2**20,
                    max_pixels=int(cfg.app.max_upload_pixels), kind="image")
if image is None:
    st.stop()
rgb = image.rgb[..., :3]
h, w = rgb.shape[:2]

strokes = st.session_state.get("test_edit_strokes")
if strokes is None:
    from streamlit_drawable_canvas import st_canvas

    scale = min(1.0, 512 / max(h, w))
    result = st_canvas(stroke_width=brush, stroke_color=cls["color"], background_image=sup.png_bytes(rgb),
                       height=int(h * scale), width=int(w * scale), return_image_data=True, key="edit_canvas")
    strokes = result.image_data
codes, painted = sup.paint_over(strokes, (h, w))

if st.button("Regenerate the painted area", type="primary", key="regenerate"):
    loaded = ui.require_model()
    if loaded is not None and codes is None:
        st.error("Paint over part of the image first.")
    elif loaded is not None:
        prompt = sup.make_prompt(codes, cfg, **prompt_opts, upload=image, model=loaded, valid=painted)
        settings = ui.friendly(ui.settings, loaded, sampling)
        new = None
        if settings is not None:
            with ui.device_slot("edit"):
                new = ui.friendly(sup.edit, loaded, rgb, codes, painted, prompt, settings,
                                  margin=int(cfg.edit.margin), progress=ui.progress_bar("Regenerating"))
        if new is not None:
            st.session_state["edit_result"] = new
            st.session_state["edit_prompt"] = prompt
            st.session_state["edit_changed"] = int((new != rgb).any(-1).sum())

new = st.session_state.get("edit_result")
if new is not None and new.shape == rgb.shape:
    st.image(np.concatenate([rgb, new], axis=1), caption=f"before | after ({st.session_state['edit_changed']} "
             f"pixels changed; the rest is untouched): {st.session_state['edit_prompt']}", use_container_width=True)
    st.download_button("Download PNG", sup.png_bytes(new), "seg2sat-edit.png", "image/png", key="edit_png")
    if image.georeferenced:
        st.download_button("Download GeoTIFF", sup.geotiff_bytes(new, image.crs, image.transform),
                           "seg2sat-edit.tif", "image/tiff", key="edit_tif")
