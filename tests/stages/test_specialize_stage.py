"""`seg2sat specialize` on the shipped tiny base: a new model folder that everything loads as it is."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch

import seg2sat
from seg2sat.data.synthetic import generate
from seg2sat.errors import DatasetError, ModelError, RasterError
from seg2sat.generation.models import MODEL_INFO, controlnet_from_unet
from seg2sat.geo.geotiff import write_geotiff
from seg2sat.geo.raster import FLAIR_CRS
from seg2sat.labels import CLASSES
from seg2sat.prompts import DEFAULT_TEMPLATE
from seg2sat.stages import infer, specialize

TINY_BASE = Path(seg2sat.__file__).parent / "assets" / "tiny-base"
FAST = ["train.steps=2", "train.batch_size=2", "train.learning_rate=1e-2", "train.lr_warmup_steps=0"]


def _model_folder(dest: Path, base: str = "base") -> Path:
    """A model folder as `seg2sat export` lays it out: the tiny base in base/, an (untrained) ControlNet."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    if base == "base":
        shutil.copytree(TINY_BASE, dest / "base")
    unet = UNet2DConditionModel.from_pretrained(TINY_BASE, subfolder="unet")
    vae = AutoencoderKL.from_pretrained(TINY_BASE, subfolder="vae")
    torch.manual_seed(0)
    controlnet_from_unet(unet, vae).save_pretrained(dest / "controlnet", safe_serialization=True)
    info = {"format": "seg2sat-model", "version": 1, "name": dest.name, "base_model": base, "controlnet": "controlnet",
            "resolution": 64, "prediction_type": "epsilon", "caption_template": DEFAULT_TEMPLATE,
            "legend": [{"code": c.code, "name": c.name, "color": c.hex} for c in CLASSES],
            "sampling": {"steps": 2, "guidance_scale": 1.0, "controlnet_scale": 1.0}, "fidelity": {"miou": 0.5}}
    (dest / MODEL_INFO).write_text(json.dumps(info))
    return dest


@pytest.fixture(scope="module")
def place(tmp_path_factory):
    """A model folder and a FLAIR tree whose domain D013_2020 is the place."""
    root = tmp_path_factory.mktemp("specialize")
    generate(root / "flair", ["D064_2021", "D013_2020"], 3, 64, seed=0)
    return _model_folder(root / "model"), root / "flair"


@pytest.fixture(scope="module")
def specialized(place, tmp_path_factory):
    model, flair = place
    out = tmp_path_factory.mktemp("out") / "model-d013"
    from seg2sat.config import compose

    cfg = compose("specialize", [f"paths.root_dir={out.parent}", f"model_path={model}", f"images={flair}",
                                 "domain=D013_2020", f"output_dir={out}", "device=cpu", *FAST])
    return specialize.run(cfg), model


def test_new_folder_has_a_new_unet_and_the_same_controlnet(specialized):
    result, model = specialized
    out = result.model_dir
    assert result.images == 3 and result.steps == 2 and len(result.losses) == 2
    cn = "controlnet/diffusion_pytorch_model.safetensors"
    assert (out / cn).read_bytes() == (model / cn).read_bytes()
    unet = "unet/diffusion_pytorch_model.safetensors"
    assert (out / "base" / unet).read_bytes() != (model / "base" / unet).read_bytes()
    vae = "vae/diffusion_pytorch_model.safetensors"
    assert (out / "base" / vae).stat().st_size == (model / "base" / vae).stat().st_size
    info = json.loads((out / MODEL_INFO).read_text())
    assert info["base_model"] == "base" and info["name"] == "model-d013" and info["fidelity"] is None
    record = info["specialized"]
    assert record["domain"] == "D013_2020" and record["num_images"] == 3 and record["from_model"] == str(model)
    assert record["settings"]["method"] == "lora" and record["from_fidelity"] == {"miou": 0.5}
    assert not any(p.name.startswith(".tmp") for p in out.parent.iterdir())


def test_the_folder_loads_in_stock_diffusers(specialized):
    from diffusers import (
        ControlNetModel,
        StableDiffusionControlNetPipeline,
        UniPCMultistepScheduler,
    )

    out = specialized[0].model_dir
    cn = ControlNetModel.from_pretrained(out / "controlnet", use_safetensors=True)
    pipe = StableDiffusionControlNetPipeline.from_pretrained(out / "base", controlnet=cn, safety_checker=None,
                                                             feature_extractor=None, requires_safety_checker=False)
    pipe.scheduler = UniPCMultistepScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    hint = torch.rand(1, 3, 64, 64)
    image = pipe("Aerial view of France. forest", image=hint, num_inference_steps=2, guidance_scale=1.0,
                 output_type="np", generator=torch.Generator().manual_seed(0)).images[0]
    assert image.shape == (64, 64, 3) and image.std() > 0.01


def test_infer_loads_it_and_keeps_the_georeferencing(specialized, stage_cfg, geotiff, tmp_path):
    out = specialized[0].model_dir
    codes = np.full((64, 64), 6, np.uint8)
    codes[:, 32:] = 11
    src = geotiff(tmp_path / "map.tif", codes[None])
    result = infer.run(stage_cfg("infer", f"input={src}", f"model_path={out}", f"output_dir={tmp_path / 'inf'}",
                                 "device=cpu", "sampling.steps=2", "preview=false", "cog=false"))
    with rasterio.open(result.outputs[0]) as got, rasterio.open(src) as ref:
        assert got.crs == ref.crs and got.transform == ref.transform and got.count == 3
        assert got.read().std() > 1


def test_bad_images_fail_before_any_model_loads(stage_cfg, tmp_path):
    # The model folder names a base that does not exist: reaching the load would be a ModelError.
    model = tmp_path / "model"
    model.mkdir()
    (model / MODEL_INFO).write_text(json.dumps({"base_model": "/nowhere/base", "resolution": 64}))
    (tmp_path / "empty").mkdir()

    def cfg(images, *more):
        return stage_cfg("specialize", f"model_path={model}", f"images={images}", f"output_dir={tmp_path / 'o'}", *more)

    with pytest.raises(DatasetError, match=r"empty: no images found"):
        specialize.run(cfg(tmp_path / "empty"))
    with pytest.raises(DatasetError, match=r"missing: images folder not found"):
        specialize.run(cfg(tmp_path / "missing"))
    write_geotiff(tmp_path / "rgb" / "a.tif", np.zeros((3, 32, 32), np.uint8), FLAIR_CRS,
                  rasterio.transform.from_origin(0, 32, 1, 1))
    with pytest.raises(RasterError, match=r"a.tif: 32x32 px; the model's tiles are 64x64"):
        specialize.run(cfg(tmp_path / "rgb"))
    write_geotiff(tmp_path / "two" / "b.tif", np.zeros((2, 64, 64), np.uint8), FLAIR_CRS,
                  rasterio.transform.from_origin(0, 64, 1, 1))
    with pytest.raises(RasterError, match=r"b.tif: 2 band\(s\)"):
        specialize.run(cfg(tmp_path / "two"))
    (tmp_path / "o").mkdir()
    with pytest.raises(ModelError, match=r"o: already exists \(pass overwrite=true"):
        specialize.run(cfg(tmp_path / "two"))
