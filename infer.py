"""Generate aerial images: `python infer.py input=map.tif [overrides]`.

The same as `seg2sat infer [overrides]`: one entry point, so both give the same one-line errors
and exit codes (2 bad input or config, 1 a failed part of a batch; `--debug` for a traceback).
"""

import sys

from seg2sat.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["infer", *sys.argv[1:]]))
