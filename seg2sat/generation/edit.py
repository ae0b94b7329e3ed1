"""Regional edit: repaint the part of an aerial image a new land-cover map covers; the rest stays identical.

The new map is placed on the image's pixel grid (same CRS and pixel size, aligned), limited
to `edit.region`, regenerated there (`seg2sat.generation.tiling.regional_edit`) and blended in
over `edit.margin` pixels; the result is written on the input image's grid.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
from rasterio.windows import Window as RioWindow

from seg2sat.errors import RasterError
from seg2sat.generation.files import FileJob, prompt_for, read_edit_image, versions, write_preview
from seg2sat.generation.models import LoadedModel
from seg2sat.generation.tiling import regional_edit
from seg2sat.geo.geotiff import open_geotiff_writer
from seg2sat.geo.landcover import LandCover, read_landcover
from seg2sat.geo.raster import RasterData


def region_on_grid(path: Path, image: RasterData, image_path: Path, column: str) -> np.ndarray:
    """The (H, W) mask of an `edit.region` raster or layer on the image's pixel grid.

    Vectors are reprojected to the image's CRS and burnt at its pixel size; a raster on another
    grid (CRS, pixel size or origin) is reprojected onto it with nearest-neighbour resampling,
    so a region is never misplaced by rounding. A region without a CRS is only accepted on an
    image without one.
    """
    from rasterio.warp import Resampling, reproject

    limit = read_landcover(path, column=column, vector_resolution=image.transform.a,
                           crs=image.crs.to_string() if image.crs else None, unknown_to_other=True)
    if (limit.crs is None) != (image.crs is None):
        raise RasterError(f"{path}: the region has {'no' if limit.crs is None else 'a'} CRS but {image_path} "
                          f"has {'one' if image.crs is not None else 'none'}; pass crs= for the one without")
    mask = np.zeros((image.height, image.width), np.uint8)
    if limit.crs is None:  # no CRS on either side: the pixel grids must match as they are
        if not math.isclose(limit.transform.a, image.transform.a, rel_tol=1e-6):
            raise RasterError(f"{path}: pixel size {limit.transform.a:g} differs from {image_path}'s "
                              f"{image.transform.a:g}, and neither has a CRS to reproject with")
    # Without CRS both grids are in the same (unknown) units: any one CRS on both sides makes the
    # warp a pure resampling between the two transforms.
    same = "EPSG:3857"
    reproject(limit.valid.astype(np.uint8), mask, src_transform=limit.transform, src_crs=limit.crs or same,
              dst_transform=image.transform, dst_crs=image.crs or same, resampling=Resampling.nearest)
    if not mask.any():
        raise RasterError(f"{path}: the edit region does not overlap {image_path}")
    return mask.astype(bool)


def _new_map_on_image(lc: LandCover, image: RasterData, src: Path, image_path: Path
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(region, codes, known) of the new map placed on the image's pixel grid (same CRS and size)."""
    if lc.crs != image.crs or not math.isclose(lc.resolution, image.transform.a, rel_tol=1e-6):
        raise RasterError(f"{src}: the new map must share {image_path}'s CRS and pixel size "
                          f"({image.crs}, {image.transform.a:g}); got {lc.crs}, {lc.resolution:g}")
    col_f, row_f = ~image.transform * (lc.transform.c, lc.transform.f)
    col0, row0 = round(col_f), round(row_f)
    if abs(col_f - col0) > 1e-3 or abs(row_f - row0) > 1e-3:
        raise RasterError(f"{src}: not aligned with {image_path}'s pixel grid (offset {col_f:.3f}, {row_f:.3f} px)")
    H, W = image.height, image.width
    r0, c0 = max(0, row0), max(0, col0)
    r1, c1 = min(H, row0 + lc.codes.shape[0]), min(W, col0 + lc.codes.shape[1])
    if r1 <= r0 or c1 <= c0:
        raise RasterError(f"{src}: does not overlap {image_path}")
    region = np.zeros((H, W), bool)
    codes = np.full((H, W), 0, np.uint8)
    region[r0:r1, c0:c1] = lc.valid[r0 - row0:r1 - row0, c0 - col0:c1 - col0]
    codes[r0:r1, c0:c1] = lc.codes[r0 - row0:r1 - row0, c0 - col0:c1 - col0]
    return region, codes, region.copy()


def edit_file(model: LoadedModel, job: FileJob, src: Path, paths: dict[str, Path]) -> dict[str, Any]:
    """Regenerate the area `src` (new land cover) covers in `edit.image`; the rest stays identical.

    Inside the region the image is replaced; over `edit.margin` pixels outside it the new
    content fades out (linear in the distance to the region); beyond, pixels are copied
    bit for bit. The new map must be on the image's grid (same CRS and pixel size, aligned).
    """
    image_path = job.edit.image
    image = read_edit_image(image_path, job.inputs.crs)
    lc = read_landcover(src, legend=job.legend, column=job.inputs.column, vector_resolution=image.transform.a,
                        snap=job.inputs.snap, crs=job.inputs.crs or (image.crs.to_string() if image.crs else None),
                        unknown_to_other=job.inputs.unknown_to_other)
    # 1. Place the new map on the image grid, limited to `edit.region`.
    region, codes, known = _new_map_on_image(lc, image, src, image_path)
    if job.edit.region:
        region &= region_on_grid(job.edit.region, image, image_path, job.inputs.column)
    if not region.any():
        raise RasterError(f"{src}: the edit region is empty")
    # 2. Regenerate the region and blend it into a copy of the image.
    prompt = prompt_for(job.prompt, LandCover(codes, known, image.crs, image.transform, src))
    rgb, box = regional_edit(model.pipe, np.moveaxis(image.array[:3], 0, -1), codes, known, region, prompt,
                             margin=job.edit.margin, **job.sampling.kwargs())
    out = image.array.copy()
    out[:3] = np.moveaxis(rgb, -1, 0)
    # 3. Write the edited image on the input image's grid, and its preview.
    with open_geotiff_writer(paths["tif"], image.width, image.height, out.shape[0], "uint8", image.crs,
                             image.transform, nodata=image.nodata, cog=job.output.cog,
                             tags={"seg2sat_prompt": prompt}) as writer:
        writer.write(out, RioWindow(0, 0, image.width, image.height))
    if job.output.preview:
        write_preview(paths["tif"], paths["preview"], job.output.preview_size)
    return {"input": str(src), "edit_image": str(image_path), "output": str(paths["tif"]), "model": model.source,
            "prompt": prompt, "scheduler": model.scheduler, **job.sampling.kwargs(), "margin": job.edit.margin,
            "region_pixels": int(region.sum()), "changed_box": [int(v) for v in box], "versions": versions()}
