"""Fuzzing every reader: mutated GeoTIFFs, PNG maps, vector layers, uploads, sidecars and state files.

Each case ends in a result that keeps the reader's promises or in a one-line project error,
within a time bound and a memory limit: no traceback, no hang, no memory blow-up. The cases are
seeded (a failing case is reproduced by its reader, seed and number, see fuzzing.py); the
default run tries 30 per reader, `-m faults` 1,000.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path

import pytest
from faultkit import REPO, tally
from fuzzing import READERS

CASE_SECONDS = 30  # a case that takes longer hangs (the readers take milliseconds on these files)
START_SECONDS = 300


def _lines(proc: subprocess.Popen, out: queue.Queue) -> None:
    for line in proc.stdout:
        out.put(json.loads(line))
    out.put(None)


def _worker(tmp_path: Path, seed: int, count: int, todo: dict[str, int]) -> tuple[subprocess.Popen, queue.Queue]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, str(Path(__file__).with_name("fuzzing.py")), str(tmp_path), str(seed),
                             str(count), *(f"{r}:{first}" for r, first in todo.items())], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, env=env)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=_lines, args=(proc, lines), daemon=True).start()
    return proc, lines


def fuzz(tmp_path: Path, count: int, seed: int = 0) -> tuple[dict[str, Counter], list[str]]:
    """Run `count` cases per reader; a hung or dead worker is replaced and goes on after the case it was on."""
    todo = dict.fromkeys(READERS, 0)  # reader -> next case
    outcomes: dict[str, Counter] = {r: Counter() for r in READERS}
    bad: list[str] = []
    while todo:
        proc, lines = _worker(tmp_path, seed, count, todo)
        current, timeout, failure = None, START_SECONDS, None
        try:
            while (msg := lines.get(timeout=timeout)) is not None:
                timeout = CASE_SECONDS
                if "start" in msg:
                    current = (msg["reader"], msg["start"])
                elif "outcome" in msg:
                    outcomes[msg["reader"]][msg["outcome"]] += 1
                    if msg["outcome"] not in ("ok", "error"):
                        bad.append(f"{msg['reader']} case {msg['case']}: {msg['outcome']}: {msg['detail']}")
                    todo[msg["reader"]] = msg["case"] + 1
                    current = None
            if current is not None:  # the worker died in a case (a crash, or the memory limit)
                failure = "crash", f"the worker died (exit {proc.wait()})"
        except queue.Empty:
            failure = "hang", f"no answer in {CASE_SECONDS} s"
        finally:
            proc.kill()
            proc.wait()
        if failure is not None:
            if current is None:
                raise RuntimeError(f"the fuzz worker did not start: {failure[1]}")
            outcomes[current[0]][failure[0]] += 1
            bad.append(f"{current[0]} case {current[1]}: {failure[0]}: {failure[1]}")
            todo[current[0]] = current[1] + 1
        todo = {r: first for r, first in todo.items() if first < count}
    return outcomes, bad


@pytest.mark.parametrize("count", [30, pytest.param(1000, marks=pytest.mark.faults)], ids=["30", "1000"])
def test_every_reader_ends_in_a_result_or_one_line(count, tmp_path):
    outcomes, bad = fuzz(tmp_path, count)
    for reader, seen in outcomes.items():
        tally("fuzz", reader, survived=seen["ok"] + seen["error"], tried=sum(seen.values()))
    assert all(sum(seen.values()) == count for seen in outcomes.values()), outcomes
    assert bad == [], "\n".join(bad[:40])
