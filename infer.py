"""Generate aerial images: `python infer.py input=map.tif [overrides]` (same as `seg2sat infer`)."""

import hydra
from omegaconf import DictConfig

from seg2sat.stages.infer import run


@hydra.main(config_path="conf", config_name="infer", version_base="1.3")
def main(cfg: DictConfig) -> None:
    """Thin entry point: all the work is in `run`."""
    run(cfg)


if __name__ == "__main__":
    main()
