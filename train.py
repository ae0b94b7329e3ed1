"""Train a ControlNet: `python train.py [overrides]` or `accelerate launch train.py [overrides]`."""

import hydra
from omegaconf import DictConfig

from seg2sat.stages.train import run


@hydra.main(config_path="conf", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> None:
    """Thin entry point: all the work is in `run`."""
    run(cfg)


if __name__ == "__main__":
    main()
