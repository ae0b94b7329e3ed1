"""Train a ControlNet: `python train.py [overrides]` or `accelerate launch train.py [overrides]`.

The same as `seg2sat train [overrides]`: one entry point, so both give the same one-line errors
and exit codes (2 bad input or config, 1 a failed part of a batch; `--debug` for a traceback).
"""

import sys

from seg2sat.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["train", *sys.argv[1:]]))
