"""Everything the Streamlit app does, as plain functions (the `app/` pages only lay out widgets).

- the app's config (`conf/app.yaml`, or the file `seg2sat app` hands over);
- safe upload decoding: bounded bytes and pixels checked from the header before decoding,
  only whitelisted suffixes, read through a private temp file deleted at once, friendly
  `UploadError`s;
- canvas strokes composited over a base map and snapped to the legend;
- generation with progress, GeoTIFF bytes when the map was georeferenced, regional edits,
  batch runs in a temp folder removed before they return; safe to call from several sessions
  at once on one shared pipeline (see `seg2sat.serving.device_queue`).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from affine import Affine
from omegaconf import DictConfig, OmegaConf
from PIL import Image

from seg2sat.config import APP_CONFIG_ENV
from seg2sat.errors import Seg2SatError
from seg2sat.generation.models import LoadedModel
from seg2sat.generation.sampling import PromptSpec, Sampling
from seg2sat.geo.raster import FLAIR_CRS, GEOTIFF_SUFFIXES, IMAGE_ERRORS, PLAIN_IMAGE_SUFFIXES
from seg2sat.hints import codes_to_hint, snap_hint
from seg2sat.labels import CLASSES, CODES, OTHER_CODE, code_of
from seg2sat.prompts import STYLES

_DEMO_LOCK = threading.Lock()  # one demo build per server (the lock file covers other servers)


class UploadError(Seg2SatError):
    """An upload the app refuses; the message is shown to the user as is."""


def app_config() -> DictConfig:
    """The app's config: the file `seg2sat app` wrote, else `conf/app.yaml` composed."""
    from seg2sat.config import compose

    path = os.environ.get(APP_CONFIG_ENV)
    if path and Path(path).exists():
        return OmegaConf.load(path)
    return compose("app", [])


def legend_rows() -> list[dict[str, Any]]:
    """Code, name and hex colour of every FLAIR class (the palette)."""
    return [{"code": c.code, "name": c.name, "color": c.hex} for c in CLASSES]


def legend_index(name: str) -> int:
    """Position of a class in `legend_rows()` (a widget's default), by name."""
    return CODES.index(code_of(name))


def style_names() -> list[str]:
    """The style presets."""
    return list(STYLES)


# ---------------------------------------------------------------------------------------------
# Uploads
# ---------------------------------------------------------------------------------------------


@dataclass
class Upload:
    """A decoded upload: RGB(A) pixels or codes, and georeferencing when it had some."""

    name: str
    rgb: np.ndarray | None = None  # (H, W, 3|4) uint8
    codes: np.ndarray | None = None  # (H, W) uint8 FLAIR codes
    valid: np.ndarray | None = None
    crs: Any = None
    transform: Affine | None = None
    data: bytes | None = None  # the GeoTIFF's bytes, for the stages that read files (Batch)
    suffix: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def georeferenced(self) -> bool:
        """True when the upload carried a CRS and a transform."""
        return self.crs is not None and self.transform is not None


def _suffix(name: str, allowed: tuple[str, ...]) -> str:
    suffix = Path(name or "").suffix.lower()
    if suffix not in allowed:
        raise UploadError(f"{Path(name).name or 'upload'}: unsupported file type {suffix or '(none)'}; "
                          f"use {', '.join(allowed)}")
    return suffix


@contextlib.contextmanager
def _private_copy(data: bytes, suffix: str) -> Iterator[Path]:
    """The bytes in a temp file named by us (never the user's file name), deleted on exit.

    Streamlit reruns a page on every interaction: a copy per rerun that outlived it would fill
    the disk of a shared server.
    """
    with tempfile.TemporaryDirectory(prefix="seg2sat-upload-") as tmp:
        path = Path(tmp) / f"upload{suffix}"
        path.write_bytes(data)
        yield path


def read_upload(name: str, data: bytes, *, max_bytes: int, max_pixels: int, kind: str = "map") -> Upload:
    """Decode an upload, refusing oversized, unreadable or unsupported files.

    `kind="map"`: a colour-hint PNG or a FLAIR MSK / colour-hint GeoTIFF; `kind="image"`: an
    aerial image (PNG or GeoTIFF).
    """
    label = Path(name or "upload").name
    if len(data) == 0:
        raise UploadError(f"{label}: the file is empty")
    if len(data) > max_bytes:
        raise UploadError(f"{label}: {len(data) / 2**20:.1f} MB is over the {max_bytes / 2**20:.0f} MB limit")
    suffix = _suffix(label, PLAIN_IMAGE_SUFFIXES + GEOTIFF_SUFFIXES)
    if suffix in GEOTIFF_SUFFIXES:
        return _read_geotiff(label, data, suffix, max_pixels, kind)
    try:
        with Image.open(io.BytesIO(data)) as im:
            w, h = im.size  # from the header: nothing decoded yet
            if w * h > max_pixels:
                raise UploadError(f"{label}: {w}x{h} pixels is over the {max_pixels:,} pixel limit")
            im.load()
            rgb = np.asarray(im.convert("RGBA" if im.mode in ("RGBA", "LA", "P") else "RGB"))
    except UploadError:
        raise
    except (*IMAGE_ERRORS, Image.DecompressionBombError) as exc:
        raise UploadError(f"{label}: not a readable image ({type(exc).__name__})") from exc
    return Upload(name=label, rgb=rgb)


def _read_geotiff(label: str, data: bytes, suffix: str, max_pixels: int, kind: str) -> Upload:
    try:
        with _private_copy(data, suffix) as path:
            upload = _decode_geotiff(label, path, max_pixels, kind)
    except UploadError:
        raise
    except Seg2SatError as exc:
        raise UploadError(f"{label}: {str(exc).split(': ', 1)[-1]}") from exc
    except Exception as exc:  # rasterio raises several types for broken files
        raise UploadError(f"{label}: not a readable GeoTIFF ({type(exc).__name__})") from exc
    upload.data, upload.suffix = data, suffix
    return upload


def _decode_geotiff(label: str, path: Path, max_pixels: int, kind: str) -> Upload:
    import rasterio

    from seg2sat.geo.landcover import read_landcover_raster
    from seg2sat.geo.raster import read_raster

    with rasterio.open(path) as src:
        if src.width * src.height > max_pixels:
            raise UploadError(f"{label}: {src.width}x{src.height} pixels is over the {max_pixels:,} pixel limit")
        count, dtype = src.count, src.dtypes[0]
    if kind == "image":
        if count < 3 or dtype != "uint8":
            raise UploadError(f"{label}: an aerial image needs 3 uint8 bands (got {count} of {dtype})")
        r = read_raster(path, require_crs=False)
        return Upload(name=label, rgb=np.moveaxis(r.array[:3], 0, -1), crs=r.crs, transform=r.transform)
    lc = read_landcover_raster(path, snap=count in (3, 4), allow_no_crs=True)
    return Upload(name=label, codes=lc.codes, valid=lc.valid, crs=lc.crs, transform=lc.transform)


def upload_to_codes(upload: Upload, size: int | None = None) -> np.ndarray:
    """An uploaded map as codes (snapping a colour hint), optionally resized (nearest) to a square."""
    from seg2sat.geo.landcover import nearest_resize

    codes = upload.codes if upload.codes is not None else snap_hint(upload.rgb).codes
    return nearest_resize(codes, size, size) if size else codes


# ---------------------------------------------------------------------------------------------
# Canvas
# ---------------------------------------------------------------------------------------------


def template_codes(name: str, size: int) -> np.ndarray:
    """Starting maps: blank fields, a village, a river valley."""
    fields, meadow, forest = code_of("agricultural land"), code_of("herbaceous vegetation"), code_of("deciduous")
    codes = np.full((size, size), fields, np.uint8)
    s = size
    if name == "village":
        codes[:, : s // 2] = meadow
        codes[s // 3: 2 * s // 3, s // 4: 3 * s // 4] = code_of("pervious surface")
        for i in range(4):
            y, x = s // 3 + (i // 2) * s // 6 + 4, s // 4 + (i % 2) * s // 4 + 4
            codes[y: y + s // 10, x: x + s // 8] = code_of("building")
        codes[s // 2 - 3: s // 2 + 3, :] = code_of("impervious surface")
    elif name == "river":
        codes[:] = forest
        yy, xx = np.mgrid[:s, :s]
        river = np.abs(xx - (s / 2 + s / 6 * np.sin(yy / s * 2 * np.pi))) < s / 14
        codes[river] = code_of("water")
        codes[:, : s // 5] = fields
    return codes


def compose_drawing(base: np.ndarray, strokes: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, int]:
    """Canvas strokes (RGBA, transparent where untouched) over a base map -> (codes, hint, snapped).

    Strokes are snapped to the legend (anti-aliased edges take their neighbours' class); the
    number of stroke pixels whose colour changed is returned for display.
    """
    hint = codes_to_hint(base)
    if strokes is None:
        return base, hint, 0
    strokes = np.asarray(strokes)
    if strokes.shape[:2] != base.shape:
        from seg2sat.geo.landcover import nearest_resize

        strokes = nearest_resize(strokes, *base.shape)
    painted = strokes[..., 3] > 0
    if not painted.any():
        return base, hint, 0
    merged = hint.copy()
    merged[painted] = strokes[painted, :3]
    snapped = snap_hint(merged)
    return snapped.codes, snapped.hint, snapped.changed


def paint_over(strokes: np.ndarray | None, shape: tuple[int, int]) -> tuple[np.ndarray | None, np.ndarray]:
    """Strokes painted over an (H, W) aerial image -> (codes of the new land cover, painted mask).

    The codes are `compose_drawing`'s (snapped to the legend) over "other", meaningful where
    painted; None when nothing is painted.
    """
    painted = np.zeros(shape, bool)
    if strokes is None:
        return None, painted
    strokes = np.asarray(strokes)
    if strokes.shape[:2] != tuple(shape):
        from seg2sat.geo.landcover import nearest_resize

        strokes = nearest_resize(strokes, *shape)
    painted = strokes[..., 3] > 0
    if not painted.any():
        return None, painted
    return compose_drawing(np.full(shape, OTHER_CODE, np.uint8), strokes)[0], painted


# ---------------------------------------------------------------------------------------------
# Generation
# ---------------------------------------------------------------------------------------------


def load_model(cfg: DictConfig) -> LoadedModel:
    """The configured model with its info; raises ModelError when it is missing."""
    from seg2sat.generation.models import load_configured

    return load_configured(cfg)


def demo_model_missing(cfg: DictConfig) -> bool:
    """True when the configured model is a local folder (not a hub id) that does not exist yet."""
    source = str(cfg.model_path)
    local = Path(source).is_absolute() or source.startswith((".", "~"))
    return local and not Path(source).expanduser().exists()


def build_demo_model(cfg: DictConfig) -> Path:
    """Run `seg2sat demo` with the app's paths (about 13 minutes on 2 CPU cores), once.

    Sessions (threads) and other app servers that press the button meanwhile wait on a lock
    file in the models folder, then find the model built and return at once.
    """
    import fcntl

    from seg2sat.config import compose
    from seg2sat.stages import demo

    paths = OmegaConf.to_container(cfg.paths, resolve=True)
    lock = Path(str(paths["models_dir"])) / ".demo-build.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    with _DEMO_LOCK, lock.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # released when the file is closed
        if not demo_model_missing(cfg):
            return Path(str(cfg.model_path))
        return demo.run(compose("demo", [f"paths.{k}={v}" for k, v in paths.items()])).model_dir


def make_prompt(codes: np.ndarray, cfg: DictConfig, place: str | None = None, style: str | None = None,
                text: str | None = None, upload: Upload | None = None, model: LoadedModel | None = None,
                valid: np.ndarray | None = None) -> str:
    """The prompt `infer` would make for this map, with the page's place, style or full text.

    The template is the config's, else the one `model` was trained with; on a georeferenced
    `upload` the place is the grid's real one, through `PromptSpec.for_grid` as in `infer`
    (the map may have been resized to the canvas: the grid is scaled to it). `valid`: the
    pixels the prompt describes (an edit's painted area), as `infer` reads a map's nodata.
    """
    spec = PromptSpec.from_config(cfg.prompt, model, place=place, style=style, text=text)
    crs, transform = None, None
    if upload is not None and upload.georeferenced:
        height, width = (upload.codes if upload.codes is not None else upload.rgb).shape[:2]
        crs = upload.crs
        transform = upload.transform * Affine.scale(width / codes.shape[1], height / codes.shape[0])
    return spec.for_grid(codes, valid, crs, transform)


def generate(model: LoadedModel, codes: np.ndarray, prompt: str, settings: Sampling,
             progress: Any = None) -> dict[str, Any]:
    """One image for a map of any size; returns the image, prompt, settings and seconds.

    `settings` come from `Sampling.from_config` as in `infer`, so the same map and seed give
    the same pixels here and there.
    """
    from seg2sat.generation.tiling import generate_image

    t0 = time.perf_counter()
    image = generate_image(model.pipe, codes, prompt, progress=progress, **settings.kwargs())
    return {"image": image, "prompt": prompt, **settings.kwargs(), "seconds": round(time.perf_counter() - t0, 2)}


def edit(model: LoadedModel, image: np.ndarray, codes: np.ndarray, painted: np.ndarray, prompt: str,
         settings: Sampling, *, margin: int, progress: Any = None) -> np.ndarray:
    """Regenerate the painted part of an aerial image (the rest stays bit-identical).

    `margin` is `infer`'s `edit.margin` (the app config composes infer's), so an edit gives the
    same pixels here and with `seg2sat infer edit.image=...`.
    """
    from seg2sat.generation.tiling import regional_edit

    if not painted.any():
        raise UploadError("paint over part of the image first")
    new, _ = regional_edit(model.pipe, image[..., :3], codes, painted, painted, prompt, margin=margin,
                           progress=progress, **settings.kwargs())
    return new


def png_bytes(image: np.ndarray) -> bytes:
    """An (H, W, 3) uint8 image as PNG bytes."""
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def geotiff_bytes(image: np.ndarray, crs: Any, transform: Affine, size: tuple[int, int] | None = None) -> bytes:
    """The image as a GeoTIFF on the upload's grid (resized back to `size` (w, h) if the map was)."""
    from seg2sat.geo.geotiff import write_geotiff

    if size and (image.shape[1], image.shape[0]) != size:
        image = np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR))
    with tempfile.TemporaryDirectory() as tmp:
        path = write_geotiff(Path(tmp) / "out.tif", np.moveaxis(image, -1, 0), crs, transform)
        return path.read_bytes()


def run_batch(cfg: DictConfig, upload: Upload, model: LoadedModel, settings: Sampling | None = None,
              progress: Any = None) -> tuple[bytes, dict[str, Any]]:
    """Tiled inference (the `infer` stage) on an uploaded GeoTIFF with the shared model.

    `settings` (the page's widgets, through `Sampling.from_config`) replace the config's
    `sampling` group, the only one `infer` reads; None keeps the config's. Returns the output
    GeoTIFF's bytes and its sidecar; the work folder (input copy, output) is deleted before
    returning, so no run leaves anything on disk.
    """
    from seg2sat.stages import infer

    if upload.data is None:
        raise UploadError(f"{upload.name}: batch generation takes a GeoTIFF")
    with tempfile.TemporaryDirectory(prefix="seg2sat-batch-") as tmp:
        src = Path(tmp) / f"input{upload.suffix}"
        src.write_bytes(upload.data)
        run_cfg = OmegaConf.merge(cfg, {
            "input": str(src), "output_dir": str(Path(tmp) / "out"), "overwrite": True, "preview": False,
            "cog": False, "crs": None if upload.crs is not None else FLAIR_CRS.to_string()},
            {"sampling": settings.kwargs()} if settings is not None else {})
        tif = infer.run(run_cfg, model=model).outputs[0]
        return tif.read_bytes(), json.loads(Path(f"{tif}.json").read_text())


def hit_pictures(record: dict[str, Any], code_map: np.ndarray | None, root: Path | None) -> dict[str, np.ndarray]:
    """What the Search page shows of a hit: a dataset tile's image and map, or a demo scene's map."""
    if root is None:
        return {"map": codes_to_hint(code_map)}
    from seg2sat.data.dataset import load_rgb

    return {"image": load_rgb(root / record["image"]), "map": load_rgb(root / record["hint"])}


def model_summary(model: LoadedModel, cfg: DictConfig) -> dict[str, Any]:
    """What the Model page shows: source, base, device, dtype, tile, card, measured fidelity."""
    from seg2sat.generation.models import count_parameters

    folder = Path(model.source)
    card = (folder / "README.md").read_text() if (folder / "README.md").exists() else ""
    pipe = model.pipe
    return {"model": model.source, "base": model.info.get("base_model") or cfg.get("base_model"),
            "device": str(pipe.unet.device), "dtype": str(pipe.unet.dtype).replace("torch.", ""),
            "tile": model.tile, "controlnet_parameters": count_parameters(pipe.controlnet),
            "steps": model.info.get("steps"), "fidelity": model.info.get("fidelity"), "card": card}
