"""Which tiny base a training run gets: the shipped one by default, random weights only when asked."""

import json

import pytest
import torch
from safetensors.torch import load_file

from seg2sat.config import compose
from seg2sat.errors import ModelError
from seg2sat.generation.models import EMBEDDED_TINY_BASE, MODEL_INFO, load_components
from seg2sat.stages import export, train


def _shipped_unet() -> dict[str, torch.Tensor]:
    return load_file(str(EMBEDDED_TINY_BASE / "unet" / "diffusion_pytorch_model.safetensors"))


def test_tiny_preset_without_a_folder_loads_the_shipped_base(tmp_path):
    # paths.models_dir/tiny-base does not exist here: the shipped base, not random weights
    comps = load_components(compose("train", [f"paths.root_dir={tmp_path}"]).model)
    assert comps.base == str(EMBEDDED_TINY_BASE)
    shipped = _shipped_unet()
    loaded = comps.unet.state_dict()
    assert all(torch.equal(loaded[k], shipped[k]) for k in shipped)


def test_the_demo_passes_the_shipped_base_and_gets_it_as_before(tmp_path):
    # `seg2sat demo` names the folder (model.pretrained_dir=<shipped base>): same base string, same weights
    cfg = compose("train", [f"paths.root_dir={tmp_path}", f"model.pretrained_dir={EMBEDDED_TINY_BASE}"])
    comps = load_components(cfg.model)
    assert comps.base == str(EMBEDDED_TINY_BASE)
    shipped = _shipped_unet()
    assert all(torch.equal(comps.unet.state_dict()[k], shipped[k]) for k in shipped)


def test_a_named_folder_that_holds_no_base_is_a_one_line_error(tmp_path):
    cfg = compose("train", [f"paths.root_dir={tmp_path}", f"model.pretrained_dir={tmp_path / 'nowhere'}"])
    with pytest.raises(ModelError, match=r"nowhere: no tiny base here \(no model_index.json\)"):
        load_components(cfg.model)


def test_random_weights_only_when_asked_for(tmp_path):
    cfg = compose("train", [f"paths.root_dir={tmp_path}", "model.random_weights=true", "model.seed=3"])
    comps = load_components(cfg.model)
    assert comps.base == "tiny-random-3"
    assert not torch.equal(comps.unet.state_dict()["conv_in.weight"], _shipped_unet()["conv_in.weight"])


@pytest.mark.parametrize("random_weights", [False, True])
def test_the_exported_model_names_the_base_it_was_trained_on(train_cfg, stage_cfg, tmp_path, random_weights):
    # no latent cache: the shared prepared data keeps the one cache (of the random base) other tests expect
    run = train.run(train_cfg("max_steps=1", "cache_latents=false", f"model.random_weights={str(random_weights).lower()}"))
    out = export.run(stage_cfg("export", f"run_dir={run.run_dir}", f"output_dir={tmp_path / 'm'}")).model_dir
    info = json.loads((out / MODEL_INFO).read_text())
    assert info["base_model"] == "base"  # the copy inside the folder, as before
    assert info["trained_on_base"] == ("tiny-random-0" if random_weights else str(EMBEDDED_TINY_BASE))
    assert f"trained on `{info['trained_on_base']}`" in (out / "README.md").read_text()
