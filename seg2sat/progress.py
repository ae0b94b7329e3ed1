"""Progress a program can read: one JSON object per line, for the QGIS plugin and other callers.

People watch tqdm bars; a program that runs the command line (the QGIS Processing provider)
needs the same progress in a form it can parse. `seg2sat <stage> --progress=json` (or
`SEG2SAT_PROGRESS=json`) switches the bars off and makes `report` print, on stderr,

    {"event": "progress", "fraction": 0.42, "message": "MSK_066278.tif: 51/121 windows"}

one line per update; without it `report` does nothing and the bars stay. Only the main
process of a multi-process run reports (the caller checks, as it does for its bars).
"""

from __future__ import annotations

import json
import os
import sys
import time

PROGRESS_ENV = "SEG2SAT_PROGRESS"  # "json": machine-readable progress on stderr
JSON = "json"
EVENT = "progress"  # the `event` of a progress line (a caller ignores other lines)
# A window-level callback fires a few times a second; a line per call would flood a pipe that
# a GUI reads: updates closer than this are dropped, except the first and the last (1.0).
MIN_INTERVAL_S = 0.2
_last: dict[str, float] = {"t": 0.0}


def enable_json() -> None:
    """Switch this process (and the processes it starts) to JSON progress, tqdm bars off."""
    os.environ[PROGRESS_ENV] = JSON
    # tqdm >= 4.66 reads it where a bar's `disable` is not given; stages that pass `disable`
    # add `json_mode()` to it (a bar redrawn with \r would share a line with the JSON)
    os.environ["TQDM_DISABLE"] = "1"


def json_mode() -> bool:
    """True when progress goes out as JSON lines."""
    return os.environ.get(PROGRESS_ENV, "").strip().lower() == JSON


def line(fraction: float, message: str) -> str:
    """The JSON line of one update (fraction clipped to 0..1, rounded to 4 places)."""
    fraction = min(1.0, max(0.0, float(fraction)))
    return json.dumps({"event": EVENT, "fraction": round(fraction, 4), "message": message}, ensure_ascii=False)


def report(done: float, total: float, message: str = "") -> None:
    """Report `done` of `total` (any unit); a no-op unless JSON progress is on.

    Updates are throttled to one per MIN_INTERVAL_S, but a finished one (done >= total) is
    always printed, so a reader's last line says 100 %.
    """
    if not json_mode():
        return
    fraction = done / total if total > 0 else 0.0
    now = time.monotonic()
    if fraction < 1.0 and now - _last["t"] < MIN_INTERVAL_S:
        return
    _last["t"] = now
    print(line(fraction, message), file=sys.stderr, flush=True)
