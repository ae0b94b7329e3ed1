"""Which model is loaded, where it runs, and its model card."""

import streamlit as st

from seg2sat.serving import app_support as sup
from seg2sat.serving import app_ui as ui

st.set_page_config(page_title="Seg2Sat - Model", layout="wide")
st.title("Model")
cfg = ui.config()
loaded = ui.require_model()
if loaded is not None:
    info = sup.model_summary(loaded, cfg)
    st.table({"": ["model", "base", "device", "dtype", "tile (px)", "ControlNet parameters", "training steps"],
              "value": [info["model"], str(info["base"]), info["device"], info["dtype"], str(info["tile"]),
                        f"{info['controlnet_parameters']:,}", str(info["steps"])]})
    if info["fidelity"]:
        st.subheader("Measured mask fidelity (mIoU against the hint)")
        st.json(info["fidelity"])
    if info["card"]:
        st.subheader("Model card")
        st.markdown(info["card"])
