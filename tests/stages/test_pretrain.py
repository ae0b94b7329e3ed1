"""`seg2sat pretrain`: the tiny base's own data, both phases, a loadable diffusers folder."""

import json

import pytest

from seg2sat.generation.models import load_components
from seg2sat.generation.tiny import vae_factor
from seg2sat.stages import pretrain
from seg2sat.training.tiny_base import EVAL_TIMESTEPS, PRETRAIN_RECORD


def test_pretrain_writes_a_base_with_its_curves(stage_cfg, tmp_path):
    out = tmp_path / "base"
    result = pretrain.run(stage_cfg(
        "pretrain", f"output_dir={out}", "sample_data.domains=[D033_2020,D029_2021]",
        "sample_data.tiles_per_domain=4", "settings.vae_steps=4", "settings.unet_steps=4",
        "settings.batch_size=2", "settings.log_every=2"))
    assert result.folder == out and (out / "model_index.json").exists()
    record = json.loads((out / PRETRAIN_RECORD).read_text())
    assert record["train_images"] == 4 and record["val_images"] == 4  # D029_2021 is held out
    assert [p["step"] for p in record["vae_curve"]] == [2, 4]
    assert [p["step"] for p in record["unet_curve"]] == [2, 4]
    assert set(record["unet_curve"][-1]["val_loss_at_t"]) == {str(t) for t in EVAL_TIMESTEPS}
    assert record["settings"]["vae_steps"] == 4
    comps = load_components({"name": "tiny", "pretrained_dir": str(out)})
    assert comps.base == str(out) and vae_factor(comps.vae) == 4
    # the latent scale was set from the data (unit variance), not left at the default
    assert comps.vae.config.scaling_factor != pytest.approx(0.18215)
    assert not list(tmp_path.glob(".tmp-*"))
