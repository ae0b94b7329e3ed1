"""`seg2sat pretrain`: make the tiny Stable Diffusion base the demo starts from (no download).

1. write the base's own synthetic dataset (`sample-data` with its own seed, so none of the
   demo's validation scenes is ever seen by the base);
2. prepare it (`prepare`, one validation domain for held-out curves);
3. pretrain the VAE, then the UNet (`seg2sat.training.tiny_base`), and save the diffusers folder with
   its settings and curves (`pretrain.json`).
The shipped `seg2sat/assets/tiny-base` was made by this stage with `conf/pretrain.yaml`'s
defaults (docs/fidelity.md gives the command, the time it took and what it scores).
"""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from seg2sat.config import compose
from seg2sat.training.tiny_base import PretrainResult, PretrainSettings, pretrain_tiny_base

log = logging.getLogger(__name__)


def _progress() -> tuple[dict[str, tqdm], object]:
    bars: dict[str, tqdm] = {}

    def update(phase: str, step: int, total: int) -> None:
        if phase not in bars:
            for bar in bars.values():
                bar.close()
            bars[phase] = tqdm(total=total, desc=f"pretrain {phase}", unit="step")
        bars[phase].update(step - bars[phase].n)

    return bars, update


def run(cfg: DictConfig) -> PretrainResult:
    """Generate the base's data, prepare it, pretrain and save the tiny base."""
    from seg2sat.stages import prepare, sample_data

    # 1-2. The base's own data.
    data = Path(cfg.data_dir)
    paths = [f"paths.{k}={v}" for k, v in OmegaConf.to_container(cfg.paths, resolve=True).items()]
    sample = OmegaConf.to_container(cfg.sample_data, resolve=True)
    sample_data.run(compose("sample_data", [*paths, f"output_dir={data / 'sample_flair'}",
                                            f"domains=[{','.join(sample['domains'])}]",
                                            f"tiles_per_domain={sample['tiles_per_domain']}",
                                            f"size={sample['size']}", f"seed={sample['seed']}"]))
    prepared = prepare.run(compose("prepare", [*paths, f"data_root={data / 'sample_flair'}",
                                               f"output_dir={data / 'prepared'}",
                                               f"split.val_domains=[{','.join(cfg.val_domains)}]"]))
    # 3. Pretrain and save.
    settings = PretrainSettings(**OmegaConf.to_container(cfg.settings, resolve=True))
    bars, update = _progress()
    result = pretrain_tiny_base(prepared.prepared_dir, cfg.output_dir, settings, progress=update)
    for bar in bars.values():
        bar.close()
    print(f"pretrain: tiny base in {result.folder} ({result.seconds:.0f} s; VAE held-out mse "
          f"{result.vae_mse_end:.4f}, UNet loss {result.unet_loss_end:.4f})")
    return result
