"""Specialising the tiny base's UNet on a place's images: what changes, exact resume, bad inputs."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import seg2sat
from seg2sat.data.synthetic import generate
from seg2sat.errors import ConfigError, DatasetError, RasterError
from seg2sat.generation.models import load_components
from seg2sat.geo.geotiff import write_geotiff
from seg2sat.geo.raster import FLAIR_CRS, local_transform
from seg2sat.training.specialize import (
    SpecializeSettings,
    find_place_images,
    read_place_images,
    specialize_unet,
)

TINY_BASE = Path(seg2sat.__file__).parent / "assets" / "tiny-base"
FAST = {"steps": 2, "batch_size": 2, "learning_rate": 1e-2, "lr_warmup_steps": 0, "checkpointing_steps": 1}


@pytest.fixture(scope="module")
def place(tmp_path_factory):
    """A FLAIR tree of two domains (3 tiles each, 64 px); the place is D013_2020."""
    root = tmp_path_factory.mktemp("place")
    generate(root, ["D064_2021", "D013_2020"], 3, 64, seed=0)
    return root


def _comps():
    return load_components({"name": "specialize", "base": str(TINY_BASE)})


def test_place_images_come_from_one_domain_and_never_masks(place):
    paths = find_place_images(place, "D013_2020")
    assert len(paths) == 3 and all(p.name.startswith("IMG_") and "D013_2020" in p.parts for p in paths)
    images = read_place_images(place, 64, "D013_2020")
    assert images.pixels.shape == (3, 64, 64, 3) and images.pixels.dtype == np.uint8
    assert len(find_place_images(place)) == 6


def test_lora_changes_the_unet_is_fused_and_resume_is_exact(place, tmp_path):
    images = read_place_images(place, 64, "D013_2020").pixels
    before = {k: v.clone() for k, v in _comps().unet.state_dict().items()}
    # 1. Uninterrupted: 2 steps.
    full = specialize_unet(_comps(), images, SpecializeSettings(**FAST), tmp_path / "a")
    after = full.unet.state_dict()
    assert set(after) == set(before)  # fused: a plain UNet, no LoRA weights left
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert any(".resnets.0.conv1.weight" in k for k in changed) and any(".to_q.weight" in k for k in changed)
    assert "conv_in.weight" not in changed and not any(k.endswith(".bias") and "to_q" in k for k in changed)
    assert sorted(p.name for p in (tmp_path / "a" / "checkpoints").iterdir()) == ["checkpoint-1", "checkpoint-2"]

    # 2. Killed after the first step (its checkpoint written), then resumed: the same weights.
    def kill(done, total):
        if done == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        specialize_unet(_comps(), images, SpecializeSettings(**FAST), tmp_path / "b", progress=kill)
    resumed = specialize_unet(_comps(), images, SpecializeSettings(**FAST), tmp_path / "b", resume="latest")
    assert resumed.resumed_from == 1
    for k, v in resumed.unet.state_dict().items():
        torch.testing.assert_close(v, after[k], rtol=0, atol=1e-6)


def test_full_fine_tune_moves_every_layer(place, tmp_path):
    images = read_place_images(place, 64, "D013_2020").pixels
    before = {k: v.clone() for k, v in _comps().unet.state_dict().items()}
    got = specialize_unet(_comps(), images, SpecializeSettings(**{**FAST, "method": "full", "steps": 1}), tmp_path)
    assert not torch.equal(before["conv_in.weight"], got.unet.state_dict()["conv_in.weight"])


def test_resume_refuses_a_checkpoint_of_another_method(place, tmp_path):
    images = read_place_images(place, 64, "D013_2020").pixels
    specialize_unet(_comps(), images, SpecializeSettings(**{**FAST, "steps": 1}), tmp_path)
    with pytest.raises(ConfigError, match=r"checkpoint-1: saved with other trainable weights"):
        specialize_unet(_comps(), images, SpecializeSettings(**{**FAST, "method": "full"}), tmp_path, resume="latest")


def test_bad_image_folders_are_one_line_errors(tmp_path):
    with pytest.raises(DatasetError, match=r"nowhere: images folder not found"):
        read_place_images(tmp_path / "nowhere", 64)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match=r"empty: no images found"):
        read_place_images(tmp_path / "empty", 64)
    (tmp_path / "big").mkdir()
    Image.fromarray(np.zeros((128, 128, 3), np.uint8)).save(tmp_path / "big" / "a.png")
    with pytest.raises(RasterError, match=r"a.png: 128x128 px; the model's tiles are 64x64"):
        read_place_images(tmp_path / "big", 64)
    one = tmp_path / "one" / "mask.tif"
    write_geotiff(one, np.zeros((1, 64, 64), np.uint8), FLAIR_CRS, local_transform(64))
    with pytest.raises(RasterError, match=r"mask.tif: 1 band\(s\); expected an image with R, G, B first"):
        read_place_images(one.parent, 64)


def test_a_domain_without_images_and_bad_settings_are_refused(place):
    with pytest.raises(DatasetError, match=r"no images of domain D029_2021 found"):
        find_place_images(place, "D029_2021")
    with pytest.raises(ConfigError, match=r"train.method='dora': choose one of lora, full"):
        SpecializeSettings(method="dora")
    with pytest.raises(ConfigError, match=r"train: unknown key\(s\) lr"):
        SpecializeSettings.from_config({"lr": 1})
