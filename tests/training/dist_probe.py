"""Run by `accelerate launch` in test_distributed.py: train, then write this rank's view."""

import hashlib
import json
import os
import sys
from pathlib import Path

import torch

from seg2sat.config import compose
from seg2sat.stages import train


def main() -> None:
    """argv: output folder, then train overrides."""
    import faulthandler

    faulthandler.dump_traceback_later(90, exit=True)  # a hang prints every thread's stack, then exits
    out, overrides = Path(sys.argv[1]), sys.argv[2:]
    result = train.run(compose("train", overrides))
    # set by the launcher (the process group may already be torn down by end_training)
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    digest = hashlib.sha256()
    for name, p in sorted(result.controlnet.state_dict().items()):
        digest.update(name.encode())
        digest.update(p.detach().cpu().contiguous().numpy().tobytes())
    first = next(iter(result.controlnet.parameters())).detach().flatten()[:4].tolist()
    (out / f"rank-{rank}.json").write_text(json.dumps({
        "rank": rank, "world": world, "seen": result.seen, "params": digest.hexdigest(),
        "first": first, "loss": result.last_loss, "step": result.global_step, "reward": result.last_reward,
        "torch": torch.__version__}))


if __name__ == "__main__":
    main()
