"""The real place of a raster, offline: centre -> lon/lat -> nearest GeoNames city."""

import rasterio
from affine import Affine
from rasterio.crs import CRS

from seg2sat.geo.places import centre_lonlat, place_at, place_for, raster_place


def test_north_carolina_sample_is_in_north_carolina(geo_samples):
    with rasterio.open(geo_samples / "strata.tif") as src:
        lon, lat = centre_lonlat(src.crs, src.transform, src.width, src.height)
        place = raster_place(src.crs, src.transform, src.width, src.height)
        assert src.crs.to_epsg() == 3358
    assert -79.0 < lon < -78.4 and 35.5 < lat < 36.0  # Wake County, NC
    assert (place.state, place.country_code, place.in_france) == ("North Carolina", "US", False)
    assert "Raleigh" in place.city and place.name.endswith("North Carolina, United States")


def test_place_at_known_points():
    assert place_at(-78.64, 35.78).name == "Raleigh, Wake County, North Carolina, United States"
    mourenx = place_at(-0.615, 43.379)
    assert mourenx.in_france and mourenx.county == "Pyrénées-Atlantiques" and mourenx.country == "France"


def test_lambert93_tile_and_no_crs():
    t = Affine(0.2, 0, 407000.0, 0, -0.2, 6260000.0)  # the synthetic D064 anchor
    assert raster_place(CRS.from_epsg(2154), t, 64, 64).name == "Mourenx, Pyrénées-Atlantiques, Nouvelle-Aquitaine, France"
    assert raster_place(None, t, 64, 64) is None


def test_caption_place_prefers_metadata_then_department_then_location():
    crs, t = CRS.from_epsg(3358), Affine(28.5, 0, 630534.0, 0, -28.5, 228114.0)
    assert place_for({"display_name": "Mourenx, France"}, crs, t, 489, 443) == "Mourenx, France"
    assert place_for({"domain": "D064_2021"}, crs, t, 489, 443) == "Pyrénées-Atlantiques"
    assert place_for({}, crs, t, 489, 443).endswith("North Carolina, United States")
    assert place_for({}) == "France"  # nothing known at all: the default


def test_infer_prompt_names_the_rasters_real_place(geo_samples, tmp_path):
    import numpy as np

    from seg2sat.config import compose
    from seg2sat.generation.files import FileJob, prompt_for
    from seg2sat.geo.landcover import LandCover
    from seg2sat.geo.recognise import resolve_legend

    def spec(*overrides):
        return FileJob.from_config(compose("infer", [f"paths.root_dir={tmp_path}", f"input={src}", *overrides])).prompt

    src = geo_samples / "strata.tif"
    cfg = compose("infer", [f"paths.root_dir={tmp_path}", f"input={src}", "legend=nc_landsat96",
                            "work_resolution=null"])
    job = FileJob.from_config(cfg)
    _, work = job.inputs.read(src, resolve_legend(src, "nc_landsat96"))
    prompt = prompt_for(job.prompt, work)
    assert prompt.startswith("Aerial view of West Raleigh, Wake County, North Carolina, United States. ")
    assert "France" not in prompt
    # an explicit place wins; a French raster keeps the configured default "France"
    assert prompt_for(spec("prompt.place=Durham"), work).startswith(
        "Aerial view of Durham. ")
    french = LandCover(codes=np.full((8, 8), 5, np.uint8), valid=np.ones((8, 8), bool), crs=CRS.from_epsg(2154),
                       transform=Affine(0.2, 0, 407000.0, 0, -0.2, 6260000.0), path=tmp_path / "none.tif")
    assert prompt_for(job.prompt, french) == "Aerial view of France. water"
    assert prompt_for(spec("prompt.place=auto"), french) == "Aerial view of Mourenx, Pyrénées-Atlantiques, Nouvelle-Aquitaine, France. water"
