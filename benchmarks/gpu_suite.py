"""Every GPU figure in one call, inside a time budget: train, reward, infer, synthesize, mosaic, profile.

    python benchmarks/gpu_suite.py --out DIR [--dry-run] [--parts a,b,...] [--budget-s 540]
                                   [--diffusers-script train_controlnet.py]

On a GPU: SD-2.1-base size with random weights (built in code, no download), bf16. With
`--dry-run`: the same code paths on CPU with the tiny configs at 64 px (CI runs it, so a device
minute is never spent on a typo). The parts are in `gpu_parts.PARTS` (name -> function and share
of the budget); docs/performance.md says what each measures and how to run this on a lent GPU.

How a run goes, in one process:
1. the parts run in registry order; each gets a time cap, its share of what is left of the
   budget (time a part leaves unused passes to the next ones);
2. a part that overruns its cap is stopped by SIGALRM (`PartTimeout`, a BaseException, so no
   `except Exception` inside the code swallows it) and recorded as "timeout"; one that raises
   is recorded as "failed" with the traceback's last line; either way the suite goes on;
3. each part writes `DIR/<part>.json` the moment it ends (device, versions, settings, figures,
   status, wall seconds), with whatever it had measured before a timeout or failure;
4. a part stuck in native code (where no signal is seen) is caught by a watchdog thread a
   grace period after its cap: its record and the summary are written, and the process exits 3;
5. the summary table (markdown) is printed and written to `DIR/summary.md` (`--table` rebuilds it
   from the part records alone); the exit status is 1 when a part did not end "ok".
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import os
import resource
import signal
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from devices import device_name, versions
from gpu_parts import DRY, GPU, PARTS, Context, Part

from seg2sat.atomic import write_json, write_text

GPU_BUDGET_S = 540.0  # a lent machine gives ~15 min in all, its start and the transfers included
DRY_BUDGET_S = 270.0  # CI: the whole dry run within 5 minutes on 2 cores
HANG_GRACE_S = 60.0  # after its cap, a part that still has not returned is taken as hung in native code


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 2)


class PartTimeout(BaseException):
    """A part ran past its cap (raised by SIGALRM in the main thread)."""


# ---------------------------------------------------------------------------------------------
# Time caps
# ---------------------------------------------------------------------------------------------


@contextmanager
def time_cap(seconds: float) -> Iterator[None]:
    """Raise PartTimeout in this (main) thread once `seconds` have passed; disarmed on exit."""
    def alarm(signum: int, frame: Any) -> None:
        raise PartTimeout(f"over its cap of {seconds:.1f} s")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 1e-3))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


class Watchdog:
    """Calls `on_hang` from a thread if the part has not ended `grace` seconds after its cap."""

    def __init__(self, seconds: float, on_hang: Callable[[], None]) -> None:
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._watch, args=(seconds, on_hang), daemon=True)

    def _watch(self, seconds: float, on_hang: Callable[[], None]) -> None:
        if not self.done.wait(seconds):
            on_hang()

    def __enter__(self) -> Watchdog:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()


def caps(names: list[str], budget_s: float, parts: dict[str, Part]) -> list[float]:
    """Each part's share of the budget by weight (the runner recomputes them as time is used)."""
    total = sum(parts[n].weight for n in names)
    return [budget_s * parts[n].weight / total for n in names]


# ---------------------------------------------------------------------------------------------
# One part
# ---------------------------------------------------------------------------------------------


def last_line(exc: BaseException) -> tuple[str, str | None]:
    """The traceback's last line (`Type: message`) and the innermost frame (`file:line in function`)."""
    line = traceback.format_exception_only(type(exc), exc)[-1].strip()
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.name != "alarm"]  # where a timeout struck
    where = f"{Path(frames[-1].filename).name}:{frames[-1].lineno} in {frames[-1].name}" if frames else None
    return line, where


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (user + system): a load-independent yardstick."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def make_record(name: str, ctx: Context, status: str, wall_s: float, cap_s: float, summary: str,
                error: str | None = None, where: str | None = None, cpu_s: float | None = None) -> dict[str, Any]:
    """What `DIR/<part>.json` holds."""
    return {"part": name, "status": status, "summary": summary, "error": error, "where": where,
            "wall_s": round(wall_s, 2), "cpu_s": _round(cpu_s), "cap_s": round(cap_s, 1),
            "device": device_name(ctx.device),
            "dry_run": ctx.scale is not GPU, "versions": safe_versions(),
            "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "settings": ctx.settings,
            "figures": ctx.figures}


@functools.cache
def safe_versions() -> dict[str, str]:
    """devices.versions() (read once per run), or torch's alone where a package's metadata is missing (a bare device)."""
    try:
        return versions()
    except Exception as exc:  # the record must be written whatever is installed
        return {"torch": torch.__version__, "error": last_line(exc)[0]}


def run_part(name: str, part: Part, ctx: Context, cap_s: float) -> dict[str, Any]:
    """Run one part under its cap; record ok / timeout / failed; write DIR/<name>.json at once."""
    ctx.begin(cap_s)
    t0, cpu0 = time.monotonic(), cpu_seconds()
    status, summary, error, where = "ok", "", None, None
    try:
        with time_cap(cap_s):
            summary = part.run(ctx)
    except PartTimeout as exc:
        status, (error, where) = "timeout", (f"PartTimeout: {exc}", last_line(exc)[1])
    except Exception as exc:  # a part's failure is its record; the suite goes on
        status, error, where = "failed", *last_line(exc)
        traceback.print_exc()
    record = make_record(name, ctx, status, time.monotonic() - t0, cap_s, summary or error or "", error, where,
                         cpu_seconds() - cpu0)
    write_json(ctx.out / f"{name}.json", record)
    free_memory()
    return record


def free_memory() -> None:
    """Drop what the part left (models, caches) before the next one."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# ---------------------------------------------------------------------------------------------
# The suite
# ---------------------------------------------------------------------------------------------


def summary_table(records: list[dict[str, Any]], header: str) -> str:
    """The markdown table of every part (DIR/summary.md)."""
    rows = [header, "", "| part | status | wall s | cap s | figures |", "| --- | --- | ---: | ---: | --- |"]
    for r in records:
        text = str(r["summary"]).replace("|", "/").replace("\n", " ")
        rows.append(f"| {r['part']} | {r['status']} | {r['wall_s']:.1f} | {r['cap_s']:.0f} | {text} |")
    return "\n".join(rows) + "\n"


def _header(ctx: Context, budget_s: float) -> str:
    v = safe_versions()
    kind = "dry run (CPU, tiny, 64 px)" if ctx.scale is DRY else "SD-2.1-base size, random weights, bf16"
    return (f"GPU suite on {device_name(ctx.device)}: {kind}; torch {v.get('torch')}, diffusers "
            f"{v.get('diffusers', '?')}; budget {budget_s:.0f} s; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")


def finish(records: list[dict[str, Any]], ctx: Context, budget_s: float) -> str:
    """Write DIR/summary.md (and records.json, every record in one file) and return the table."""
    table = summary_table(records, _header(ctx, budget_s))
    write_text(ctx.out / "summary.md", table)
    write_json(ctx.out / "records.json", records)
    return table


def table_from(out: Path) -> str:
    """The summary table rebuilt from the part records in `out` (a run stopped before its end writes none)."""
    records = [json.loads((out / f"{n}.json").read_text()) for n in PARTS if (out / f"{n}.json").exists()]
    if not records:
        raise SystemExit(f"{out}: no part records (<part>.json) here")
    first = records[0]
    header = (f"GPU suite on {first['device']}{' (dry run)' if first['dry_run'] else ''}; torch "
              f"{first['versions'].get('torch')}, diffusers {first['versions'].get('diffusers', '?')}; {first['date']}")
    table = summary_table(records, header)
    write_text(out / "summary.md", table)
    return table


def _hung(name: str, ctx: Context, cap_s: float, t0: float, records: list[dict[str, Any]],
          left: list[str], budget_s: float) -> Callable[[], None]:
    """What the watchdog does when a part is stuck: its record, the others as not run, the summary, exit 3."""
    def on_hang() -> None:
        record = make_record(name, ctx, "timeout", time.monotonic() - t0, cap_s, "hung in native code; suite stopped",
                             "hung in native code (no signal seen)")
        write_json(ctx.out / f"{name}.json", record)
        rest = [make_record(n, ctx, "not run", 0.0, 0.0, f"not run: {name} hung") for n in left]
        print(finish([*records, record, *rest], ctx, budget_s), flush=True)
        os._exit(3)

    return on_hang


def run_suite(ctx: Context, names: list[str], budget_s: float, parts: dict[str, Part] = PARTS,
              grace_s: float = HANG_GRACE_S) -> list[dict[str, Any]]:
    """Run `names` in order under the budget; returns their records (also written to ctx.out)."""
    ctx.out.mkdir(parents=True, exist_ok=True)
    start, records = time.monotonic(), []
    for i, name in enumerate(names):
        left = budget_s - (time.monotonic() - start)
        cap = caps(names[i:], max(left, 0.0), parts)[0]
        if cap < 1.0:
            record = make_record(name, ctx, "timeout", 0.0, 0.0, "not started: the budget is spent", "budget spent")
            write_json(ctx.out / f"{name}.json", record)
        else:
            t0 = time.monotonic()
            with Watchdog(cap + grace_s, _hung(name, ctx, cap, t0, records, names[i + 1:], budget_s)):
                record = run_part(name, parts[name], ctx, cap)
        records.append(record)
        ctx.records[name] = record
        print(f"[{name}] {record['status']} in {record['wall_s']:.1f} s (cap {record['cap_s']:.0f}): "
              f"{record['summary']}", flush=True)
    return records


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="folder for <part>.json, summary.md, profile.txt")
    ap.add_argument("--table", action="store_true", help="only rebuild --out's summary.md from its part records")
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny configs at 64 px: the same code paths")
    ap.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated, of {', '.join(PARTS)}")
    ap.add_argument("--budget-s", type=float, default=None,
                    help=f"time for all parts (default {GPU_BUDGET_S:.0f} on a GPU, {DRY_BUDGET_S:.0f} dry)")
    ap.add_argument("--diffusers-script", type=Path, default=None,
                    help="diffusers' examples/controlnet/train_controlnet.py; without it (or without the "
                         "`datasets` package) the in-process naive loop is the training baseline")
    ap.add_argument("--workdir", type=Path, default=None, help="scratch folder (default: a temporary one)")
    args = ap.parse_args(argv)
    args.parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = [p for p in args.parts if p not in PARTS]
    if unknown:
        ap.error(f"--parts: unknown {', '.join(unknown)}; choose from {', '.join(PARTS)}")
    if not args.dry_run and not args.table and not torch.cuda.is_available():
        ap.error("no CUDA device here: run with --dry-run (CPU, tiny configs) or on a GPU machine")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.table:
        print(table_from(args.out))
        return 0
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("WANDB_MODE", "disabled")
    if args.dry_run:  # a code-path check, not a measurement: one thread is steadier on shared CPUs
        torch.set_num_threads(1)
        os.environ["OMP_NUM_THREADS"] = "1"  # and in subprocesses (diffusers' script)
    device = torch.device("cpu" if args.dry_run else "cuda")
    scale = DRY if args.dry_run else GPU
    dtype = torch.float32 if args.dry_run else torch.bfloat16
    budget = args.budget_s or (DRY_BUDGET_S if args.dry_run else GPU_BUDGET_S)
    root = args.workdir or Path(tempfile.mkdtemp(prefix="gpu_suite_"))
    ctx = Context(scale=scale, device=device, dtype=dtype, root=root, out=args.out, peer_script=args.diffusers_script)
    names = [n for n in PARTS if n in args.parts or n == "setup"]  # registry order; setup always
    records = run_suite(ctx, names, budget)
    print("\n" + finish(records, ctx, budget), flush=True)
    print(json.dumps({r["part"]: r["status"] for r in records}))
    return 0 if all(r["status"] == "ok" for r in records) else 1


if __name__ == "__main__":
    sys.exit(main())
