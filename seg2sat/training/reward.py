"""Reward fine-tuning (ControlNet++): the image a step would make must re-segment as its map.

ControlNet++ (Li et al., ECCV 2024) adds to the diffusion loss a pixel-level cycle-consistency
reward: noise the training latent lightly (small timesteps only), predict the clean latent in one
step, decode it with the frozen VAE, segment it with a frozen segmenter, and take the
cross-entropy against the input map. The gradient runs back through the segmenter, the VAE's
decoder and the UNet (all frozen) into the ControlNet, the only trained network.

Here the reward segmenter is a U-Net trained on the training split's real images
(`seg2sat.evaluation.judge`, cached per dataset) with another seed, width and training subset
than the evaluation judge, so a model is never scored by the network it was tuned against (and
`evaluate` adds a judge of another kind). Options: the share of each batch rewarded, the
timestep range, how often, a plain warm-up inside the run (`start_step`) or from an exported
ControlNet (`model.controlnet_init=`), a decoded crop at SD size, and an uncertainty weighting in
the spirit of Ctrl-U (ICLR 2025): pixels the segmenter is unsure of (high entropy of its own
prediction on the generated image) count less, so the reward does not push on ambiguous pixels.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from seg2sat.errors import ConfigError
from seg2sat.evaluation.judge import JudgeConfig, load_or_train_judge
from seg2sat.generation.models import Components
from seg2sat.labels import CODES, MAX_CODE, PALETTE
from seg2sat.training.objective import DiffusionStep

# The reward model differs from the evaluation judge (conf/judge/default.yaml: 16/32/64, seed 0,
# every training tile) in width, seed and the tiles it saw.
REWARD_SEGMENTER = JudgeConfig(widths=(24, 48, 96), seed=1, subset=0.5)


@dataclass(frozen=True)
class RewardConfig:
    """The `reward` config group: what is rewarded, how much, how often, and by which segmenter."""

    enabled: bool = False
    weight: float = 0.5  # reward loss x weight is added to the diffusion loss
    t_max: int = 200  # rewarded samples are noised at t in [0, t_max)
    share: float = 0.5  # share of each batch that is rewarded (the rest trains at any t)
    every: int = 1  # reward every N optimizer steps
    start_step: int = 0  # plain diffusion loss before this step (a warm-up inside the run)
    uncertainty: bool = False  # weight pixels by the segmenter's confidence
    crop: int | None = None  # decode only a random latent crop of this side (memory at SD size)
    segmenter: JudgeConfig = field(default_factory=lambda: REWARD_SEGMENTER)

    def __post_init__(self) -> None:
        if not 0 < self.share <= 1 or self.t_max < 1 or self.every < 1 or self.weight < 0:
            raise ConfigError(f"reward.share={self.share} in (0, 1], reward.t_max={self.t_max} >= 1, "
                              f"reward.every={self.every} >= 1 and reward.weight={self.weight} >= 0 are required")

    @classmethod
    def from_config(cls, cfg: Any) -> RewardConfig:
        """From the `reward` group (`conf/reward/*.yaml`); None or `enabled: false` is no reward."""
        from omegaconf import OmegaConf

        block = OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else dict(cfg or {})
        seg = block.pop("segmenter", None)
        segmenter = JudgeConfig.from_config({**asdict(REWARD_SEGMENTER), **(seg or {})})
        return cls(**block, segmenter=segmenter)

    def active(self, step: int) -> bool:
        """Is optimizer step `step` (0-based) a reward step?"""
        return self.enabled and step >= self.start_step and (step - self.start_step) % self.every == 0

    def rewarded(self, batch_size: int) -> int:
        """How many samples of a batch get the reward (at least one)."""
        return max(1, min(batch_size, round(self.share * batch_size)))


@dataclass
class Reward:
    """A reward config and its frozen segmenter."""

    config: RewardConfig
    net: torch.nn.Module


def load_reward(cfg: Any, prepared_dir: Any, device: torch.device, barrier: Any = None,
                is_main: bool = True) -> Reward | None:
    """The reward of a train config, its segmenter trained once per dataset (main process first)."""
    config = RewardConfig.from_config(cfg.get("reward"))
    if not config.enabled:
        return None
    if is_main:
        load_or_train_judge(prepared_dir, config.segmenter)
    if barrier is not None:
        barrier()  # the other ranks load what the main one cached
    judge, _ = load_or_train_judge(prepared_dir, config.segmenter)
    net = judge.net.to(device).eval().requires_grad_(False)
    return Reward(config, net)


def codes_of_hint(hint: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) legend-colour hints (uint8, or floats in [0, 1]) -> (B, H, W) long FLAIR codes."""
    rgb = (hint if hint.dtype == torch.uint8 else (hint.float() * 255).round()).long()
    keys = (rgb[:, 0] << 16) | (rgb[:, 1] << 8) | rgb[:, 2]  # (B, H, W)
    colours = torch.as_tensor(PALETTE[list(CODES)], device=rgb.device).long()
    legend = (colours[:, 0] << 16) | (colours[:, 1] << 8) | colours[:, 2]  # (19,)
    match = keys[:, None] == legend[None, :, None, None]  # (B, 19, H, W)
    return torch.as_tensor(CODES, device=rgb.device)[match.float().argmax(1)]


def predicted_clean(step: DiffusionStep, scheduler: Any) -> torch.Tensor:
    """The one-step estimate of the clean latent x0 from the noisy latent and the prediction."""
    alphas = scheduler.alphas_cumprod.to(step.noisy.device)[step.timesteps].float().view(-1, 1, 1, 1)
    pred, noisy = step.pred.float(), step.noisy.float()
    if scheduler.config.prediction_type == "v_prediction":
        return alphas.sqrt() * noisy - (1 - alphas).sqrt() * pred
    return (noisy - (1 - alphas).sqrt() * pred) / alphas.sqrt()


def _crop(x0: torch.Tensor, codes: torch.Tensor, side: int | None, factor: int, gen: torch.Generator
          ) -> tuple[torch.Tensor, torch.Tensor]:
    """A random latent crop of `side` cells and the matching crop of the map (all of it when None)."""
    h, w = x0.shape[-2:]
    if side is None or side >= min(h, w):
        return x0, codes
    r = int(torch.randint(0, h - side + 1, (), generator=gen, device=gen.device))
    c = int(torch.randint(0, w - side + 1, (), generator=gen, device=gen.device))
    return (x0[..., r:r + side, c:c + side],
            codes[..., r * factor:(r + side) * factor, c * factor:(c + side) * factor])


def reward_loss(step: DiffusionStep, k: int, comps: Components, reward: Reward, codes: torch.Tensor,
                gen: torch.Generator) -> torch.Tensor:
    """Cross-entropy of the reward segmenter on the decoded one-step images of the first k samples.

    1. x0 from the prediction at the (small) timestep; 2. a crop if asked; 3. decode with the
    frozen VAE, gradient kept; 4. segment with the frozen segmenter; 5. per-pixel cross-entropy
    against the map, weighted by the segmenter's confidence when `uncertainty`.
    """
    vae = comps.vae
    # 1-2. The clean-latent estimate of the rewarded samples, and the part to decode.
    x0 = predicted_clean(step, comps.noise_scheduler)[:k] / vae.config.scaling_factor
    factor = codes.shape[-1] // step.noisy.shape[-1]
    x0, target = _crop(x0, codes[:k], reward.config.crop, factor, gen)
    # 3-4. Decode and re-segment; only the ControlNet upstream has trainable weights.
    image = vae.decode(x0.to(vae.dtype)).sample.float().clamp(-1, 1)
    logits = reward.net(image)
    logits = logits.masked_fill(torch.arange(MAX_CODE + 1, device=logits.device)[None, :, None, None] == 0, -1e4)
    # 5. Cross-entropy against the map.
    ce = F.cross_entropy(logits, target, reduction="none")
    if reward.config.uncertainty:
        p = logits.detach().softmax(1)
        entropy = -(p * p.clamp_min(1e-8).log()).sum(1) / math.log(len(CODES))
        weight = (1 - entropy).clamp_min(0)
        return (ce * weight).sum() / weight.sum().clamp_min(1e-6)
    return ce.mean()
