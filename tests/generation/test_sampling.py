"""One sampling contract: settings built from the config in one place, nulls from the model."""

import pytest

from seg2sat.config import compose
from seg2sat.errors import ConfigError
from seg2sat.generation.models import LoadedModel
from seg2sat.generation.sampling import Sampling


def _model(tile=64, sampling=None):
    return LoadedModel(pipe=None, tile=tile, info={"sampling": sampling} if sampling else {}, source="m")


def test_nulls_take_the_model_recommendation_then_sd_defaults():
    cfg = compose("infer", ["input=x.tif"]).sampling  # steps / guidance / ControlNet scale / tile / overlap: null
    s = Sampling.from_config(cfg, _model(64, {"guidance_scale": 1.0, "controlnet_scale": 3.0}))
    assert (s.guidance_scale, s.controlnet_scale, s.tile, s.overlap) == (1.0, 3.0, 64, 16)
    assert s.negative_prompt == "blurry, distorted, low quality, text, watermark"
    assert (s.steps, s.seed, s.batch_size, s.decode_batch_size) == (20, 0, 4, 2)
    plain = Sampling.from_config(cfg, _model(512))
    assert (plain.guidance_scale, plain.controlnet_scale, plain.overlap) == (7.5, 1.0, 128)
    # a model that records its fewest faithful steps is sampled with them when the config leaves steps null
    assert Sampling.from_config(cfg, _model(64, {"steps": 4})).steps == 4


def test_config_values_and_overrides_win():
    cfg = compose("infer", ["input=x.tif", "sampling.guidance_scale=2.5", "sampling.tile=72", "sampling.steps=7",
                            "sampling.seed=5"]).sampling
    s = Sampling.from_config(cfg, _model(64, {"guidance_scale": 1.0}), seed=9, controlnet_scale=None)
    assert (s.guidance_scale, s.steps, s.seed, s.tile) == (2.5, 7, 9, 72)
    assert s.overlap == 16  # a quarter of 72 is 18: rounded down to the VAE factor
    assert s.replace(steps=3).kwargs()["steps"] == 3 and s.kwargs()["tile"] == 72


@pytest.mark.parametrize(("changes", "message"), [
    ({"steps": 0}, "sampling.steps=0: must be >= 1"),
    ({"tile": 60}, "sampling.tile=60, sampling.overlap=16: must be multiples of 8"),
    ({"overlap": 64}, r"sampling.overlap=64: must be in \[0, sampling.tile=64\)"),
    ({"batch_size": 0}, "sampling.batch_size=0, sampling.decode_batch_size=2: must be >= 1"),
])
def test_impossible_settings_are_refused(changes, message):
    with pytest.raises(ConfigError, match=message):
        Sampling(tile=64, overlap=16).replace(**changes)
