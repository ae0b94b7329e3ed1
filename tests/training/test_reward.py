"""Reward fine-tuning: the gradient reaches only the ControlNet, the reward falls, its model is not the judge."""

import numpy as np
import pytest
import torch

from seg2sat.errors import ConfigError
from seg2sat.evaluation.judge import JudgeConfig, load_or_train_judge, split_arrays, train_judge
from seg2sat.generation.models import EMBEDDED_TINY_BASE, Components, load_components
from seg2sat.generation.tiny import build_tiny_components, controlnet_from_unet
from seg2sat.hints import codes_to_hint
from seg2sat.labels import CODES
from seg2sat.training.objective import diffusion_forward
from seg2sat.training.reward import (
    REWARD_SEGMENTER,
    Reward,
    RewardConfig,
    codes_of_hint,
    predicted_clean,
    reward_loss,
)


def _setup(images, codes, segmenter_steps=60, base="random"):
    if base == "random":
        parts = build_tiny_components(0)
        comps = Components(noise_scheduler=parts.pop("scheduler"), base="tiny", **parts)
    else:  # the shipped tiny base: a VAE and UNet that render aerial scenes
        comps = load_components({"name": "tiny", "pretrained_dir": str(EMBEDDED_TINY_BASE)})
    for module in (comps.unet, comps.vae, comps.text_encoder):
        module.requires_grad_(False).eval()
    net = train_judge(images, codes, JudgeConfig(widths=(8, 16, 16), steps=segmenter_steps, batch_size=4)).net
    net.requires_grad_(False).eval()
    return comps, Reward(RewardConfig(enabled=True), net)


def _batch(images, codes, comps):
    from seg2sat.data.dataset import tokenize

    hints = np.stack([codes_to_hint(c) for c in codes])
    return {"pixel_values": torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1,
            "input_ids": tokenize(comps.tokenizer, ["Aerial view of France. water"] * len(images)),
            "conditioning": torch.from_numpy(hints).permute(0, 3, 1, 2).contiguous()}


@pytest.fixture(scope="module")
def four(prepared_tiny):
    _, images, codes = split_arrays(prepared_tiny, "train")
    return images[:4], codes[:4]


def test_codes_of_hint_inverts_the_palette():
    codes = np.array(CODES, np.uint8).reshape(1, 19).repeat(3, 0)
    hint = torch.from_numpy(codes_to_hint(codes)).permute(2, 0, 1)[None]
    assert torch.equal(codes_of_hint(hint)[0], torch.from_numpy(codes).long())
    assert torch.equal(codes_of_hint(hint.float() / 255)[0], torch.from_numpy(codes).long())


def test_predicted_clean_inverts_the_noising():
    sched = build_tiny_components(0)["scheduler"]
    x0, noise = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    t = torch.tensor([10, 150])
    from seg2sat.training.objective import DiffusionStep

    step = DiffusionStep(x0, noise, t, sched.add_noise(x0, noise, t), noise, noise)  # a perfect epsilon
    torch.testing.assert_close(predicted_clean(step, sched), x0, rtol=0, atol=1e-4)


def test_the_reward_gradient_reaches_only_the_controlnet(four):
    images, codes = four
    comps, reward = _setup(images, codes, segmenter_steps=5)
    controlnet = controlnet_from_unet(comps.unet, comps.vae).train()
    batch = _batch(images, codes, comps)
    gen = torch.Generator().manual_seed(0)
    step = diffusion_forward(batch, comps, controlnet, gen, torch.float32, small_t=(4, 200))
    assert (step.timesteps < 200).all()
    loss = reward_loss(step, 4, comps, reward, codes_of_hint(batch["conditioning"]), gen)
    loss.backward()
    assert torch.isfinite(loss) and loss.item() > 0
    frozen = [*comps.unet.parameters(), *comps.vae.parameters(), *comps.text_encoder.parameters(),
              *reward.net.parameters()]
    assert all(p.grad is None and not p.requires_grad for p in frozen)
    # the zero convolutions hold the first gradient; they receive it from the reward alone
    grads = [p.grad for n, p in controlnet.named_parameters() if n.startswith("controlnet_down_blocks")]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)


# An overfit of a few hundred steps (tens of seconds): in CI's `-m slow` run, not the default one.
@pytest.mark.slow
def test_the_reward_falls_on_a_tiny_overfit(four):
    """Four maps, the reward alone, on the shipped base: the ControlNet learns images the segmenter reads better.

    The same noise and timesteps at every step (an overfit), over the whole range (t < 1000): from an
    untrained ControlNet the one-step image at small t is mostly the noised real image, so only at
    larger t does the prediction carry much of the map.
    """
    images, codes = four
    comps, reward = _setup(images, codes, base="shipped")
    controlnet = controlnet_from_unet(comps.unet, comps.vae).train()
    opt = torch.optim.AdamW(controlnet.parameters(), lr=5e-3)
    batch = _batch(images, codes, comps)
    target = codes_of_hint(batch["conditioning"])

    def reward_at(seed: int) -> torch.Tensor:
        step = diffusion_forward(batch, comps, controlnet, torch.Generator().manual_seed(seed), torch.float32,
                                 small_t=(4, 1000))
        return reward_loss(step, 4, comps, reward, target, torch.Generator().manual_seed(seed))

    # an overfit: the same maps, noise and timesteps at every step
    with torch.no_grad():
        before = reward_at(0).item()
    for _ in range(80):
        loss = reward_at(0)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        after = reward_at(0).item()
    assert after < 0.85 * before, (before, after)


def test_the_reward_model_is_not_the_evaluation_judge(prepared_tiny):
    """Other width, seed and training tiles: it disagrees with the judge on the validation images."""
    default = JudgeConfig()
    assert (REWARD_SEGMENTER.widths, REWARD_SEGMENTER.seed, REWARD_SEGMENTER.subset) != \
        (default.widths, default.seed, default.subset)
    fast = {"steps": 40, "batch_size": 4}
    judge, _ = load_or_train_judge(prepared_tiny, JudgeConfig(**fast))
    rew, _ = load_or_train_judge(prepared_tiny, JudgeConfig(**{**REWARD_SEGMENTER.__dict__, **fast}))
    assert rew.info["train_images"] < judge.info["train_images"]  # a subset of the training tiles
    assert sum(p.numel() for p in rew.net.parameters()) != sum(p.numel() for p in judge.net.parameters())
    _, images, _ = split_arrays(prepared_tiny, "val")
    assert (rew.classify(images) != judge.classify(images)).mean() > 0.01


def test_reward_config_from_the_group_and_bad_values():
    from seg2sat.config import compose

    cfg = compose("train", ["reward=default"])
    rc = RewardConfig.from_config(cfg.reward)
    assert rc.enabled and rc.t_max == 200 and rc.segmenter.widths == (24, 48, 96) and rc.segmenter.subset == 0.5
    assert rc.active(0) and RewardConfig(enabled=True, start_step=5, every=2).active(7)
    assert not RewardConfig(enabled=True, start_step=5, every=2).active(6)
    assert not RewardConfig.from_config(compose("train").reward).enabled
    with pytest.raises(ConfigError, match="share=1.5"):
        RewardConfig(enabled=True, share=1.5)


def test_training_with_the_reward_resumes_exactly(train_cfg):
    from safetensors.torch import load_file

    from seg2sat.stages import train

    fast = ["reward=default", "reward.segmenter.steps=20", "reward.segmenter.batch_size=4", "reward.share=0.5"]
    full = train.run(train_cfg("run_name=rfull", "max_steps=4", "checkpointing_steps=2", *fast))
    assert full.last_reward is not None and np.isfinite(full.last_reward)
    part = train.run(train_cfg("run_name=rpart", "max_steps=2", "checkpointing_steps=2", *fast))
    resumed = train.run(train_cfg("run_name=rpart", "max_steps=4", "checkpointing_steps=2", "resume=latest", *fast))
    assert part.seen + resumed.seen == full.seen
    a = load_file(str(full.checkpoints[-1] / "controlnet" / "diffusion_pytorch_model.safetensors"))
    b = load_file(str(resumed.checkpoints[-1] / "controlnet" / "diffusion_pytorch_model.safetensors"))
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6, msg=key)
