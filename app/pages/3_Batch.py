"""Run a land-cover GeoTIFF through tiled inference and download the georeferenced result."""

import streamlit as st

from seg2sat.serving import app_support as sup
from seg2sat.serving import app_ui as ui

st.set_page_config(page_title="Seg2Sat - Batch", layout="wide")
st.title("Batch: a GeoTIFF in, a georeferenced aerial GeoTIFF out")
cfg = ui.config()
limit = int(cfg.app.batch_max_pixels)
st.caption(f"Up to {limit:,} pixels here; larger rasters: `seg2sat infer input=...` (any size).")
upload = st.file_uploader("Land-cover GeoTIFF (FLAIR codes or colour hint)", type=["tif", "tiff"], key="batch_upload")
sampling = ui.sampling_controls("batch")
if upload is not None:
    up = ui.friendly(sup.read_upload, upload.name, upload.getvalue(), max_bytes=int(cfg.app.max_upload_mb) * 2**20,
                     max_pixels=limit)
    if up is not None:
        st.write(f"{up.codes.shape[1]} x {up.codes.shape[0]} px, CRS {up.crs}")
        if st.button("Generate", type="primary", key="batch_go"):
            loaded = ui.require_model()
            settings = ui.friendly(ui.settings, loaded, sampling) if loaded is not None else None
            if settings is not None:
                with ui.device_slot("batch"), st.spinner("Generating (tiled)..."):
                    result = ui.friendly(sup.run_batch, cfg, up, loaded, settings)
                if result is not None:
                    st.session_state["batch_result"] = result
if "batch_result" in st.session_state:
    data, sidecar = st.session_state["batch_result"]
    st.success(f"{sidecar['size'][0]} x {sidecar['size'][1]} px, {sidecar['windows']} windows, "
               f"{sidecar['seconds']} s; CRS {sidecar['crs']}")
    st.json({k: sidecar[k] for k in ("prompt", "seed", "steps", "guidance_scale", "controlnet_scale", "tile",
                                      "overlap", "work_resolution")})
    st.download_button("Download GeoTIFF", data, "seg2sat-batch.tif", "image/tiff", key="batch_dl")
