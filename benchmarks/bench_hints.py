"""Hint conversion throughput (512x512 tiles/s): our vectorised code vs a per-pixel loop.

The loop is what the research code did (a Python double loop over pixels with a dict of
colours). It is timed on a 64-row strip of the same tiles and scaled to a full tile, in the
same run; the printed ratio is the speed-up. Target: >= 100x.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from seg2sat.hints import codes_to_hint, hint_to_codes
from seg2sat.labels import BY_CODE, CODES


def loop_codes_to_hint(codes: np.ndarray) -> np.ndarray:
    out = np.zeros((*codes.shape, 3), np.uint8)
    for y in range(codes.shape[0]):
        for x in range(codes.shape[1]):
            out[y, x] = BY_CODE[int(codes[y, x])].rgb
    return out


COLOUR_TO_CODE = {BY_CODE[c].rgb: c for c in CODES}


def loop_hint_to_codes(hint: np.ndarray) -> np.ndarray:
    out = np.zeros(hint.shape[:2], np.uint8)
    for y in range(hint.shape[0]):
        for x in range(hint.shape[1]):
            out[y, x] = COLOUR_TO_CODE[tuple(int(v) for v in hint[y, x])]
    return out


def tiles_per_s(fn, tiles, rows: int | None = None) -> float:
    t0 = time.perf_counter()
    for t in tiles:
        fn(t[:rows] if rows else t)
    dt = time.perf_counter() - t0
    scale = (tiles[0].shape[0] / rows) if rows else 1.0
    return len(tiles) / (dt * scale)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--tiles", type=int, default=20)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--loop-rows", type=int, default=64)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    # Realistic maps: blocks of classes, not salt-and-pepper.
    codes = [np.kron(rng.choice(CODES, (args.size // 16, args.size // 16)), np.ones((16, 16), int)).astype(np.uint8)
             for _ in range(args.tiles)]
    hints = [codes_to_hint(c) for c in codes]
    rows = [
        ("codes -> hint", codes_to_hint, loop_codes_to_hint, codes),
        ("hint -> codes", hint_to_codes, loop_hint_to_codes, hints),
    ]
    print(f"{'conversion':<16}{'ours tiles/s':>14}{'loop tiles/s':>14}{'speed-up':>10}")
    for name, ours, loop, data in rows:
        fast = tiles_per_s(ours, data)
        slow = tiles_per_s(loop, data[:3], rows=args.loop_rows)
        print(f"{name:<16}{fast:>14.1f}{slow:>14.3f}{fast / slow:>9.0f}x")


if __name__ == "__main__":
    main()
