"""Seg2Sat: draw your aerial image. Entry page (`seg2sat app`)."""

import streamlit as st

from seg2sat.labels import NUM_CLASSES
from seg2sat.serving import app_ui as ui

st.set_page_config(page_title="Seg2Sat", layout="wide")
st.title("Seg2Sat: land cover in, aerial image out")
st.markdown(
    "Draw a land-cover map (**Draw**), repaint part of a real aerial image (**Edit**), or run a "
    f"whole GeoTIFF (**Batch**). **Model** shows what is loaded. The colours are the {NUM_CLASSES} FLAIR classes:"
)
cfg = ui.config()
loaded = ui.require_model()
if loaded is not None:
    st.success(f"Model ready: `{cfg.model_path}` on {loaded.pipe.unet.device} ({loaded.tile} px tiles).")
st.markdown(ui.legend_markdown(), unsafe_allow_html=True)
