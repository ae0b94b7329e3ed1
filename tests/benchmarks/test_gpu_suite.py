"""benchmarks/gpu_suite.py's bookkeeping: a record per part the moment it ends, failures and timeouts
recorded while the suite goes on, the budget shared, the summary table. Parts here are stand-ins
(milliseconds); the real parts run in CI's dry run (`python benchmarks/gpu_suite.py --dry-run`)."""

from __future__ import annotations

import json
import signal
import sys
import time
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import gpu_suite  # noqa: E402
from gpu_parts import DRY, PARTS, Context, Part, slowest  # noqa: E402


@pytest.fixture(autouse=True, scope="module")
def _versions_read():
    gpu_suite.safe_versions()  # imports diffusers once (seconds), outside the parts' budgets


def _ctx(tmp_path: Path) -> Context:
    return Context(scale=DRY, device=torch.device("cpu"), dtype=torch.float32, root=tmp_path / "work",
                   out=tmp_path / "out")


def _ok(ctx: Context) -> str:
    ctx.settings["batch"] = 2
    ctx.figures["samples_per_s"] = 12.5
    return "12.50 samples/s"


def _fails(ctx: Context) -> str:
    ctx.figures["before"] = 1.0
    raise ValueError("tile 63 is not a multiple of 8")


def _hangs(ctx: Context) -> str:
    ctx.figures["measured_first"] = 3.0
    time.sleep(60)
    return "never"


def _reads_earlier(ctx: Context) -> str:
    return "earlier: " + ",".join(f"{k}={r['status']}" for k, r in ctx.records.items())


FAKE = {"first": Part(_ok, 1), "broken": Part(_fails, 1), "stuck": Part(_hangs, 0.25), "last": Part(_reads_earlier, 1)}


def _read(out: Path, name: str) -> dict:
    return json.loads((out / f"{name}.json").read_text())


def test_each_part_is_recorded_and_a_failure_or_timeout_does_not_stop_the_suite(tmp_path):
    ctx = _ctx(tmp_path)
    records = gpu_suite.run_suite(ctx, list(FAKE), budget_s=8.0, parts=FAKE, grace_s=30.0)
    assert [r["status"] for r in records] == ["ok", "failed", "timeout", "ok"]
    ok, broken, stuck, last = (_read(ctx.out, n) for n in FAKE)
    assert (ok["settings"]["batch"], ok["figures"]["samples_per_s"], ok["summary"]) == (2, 12.5, "12.50 samples/s")
    assert ok["device"].startswith("cpu") and ok["versions"]["torch"] == torch.__version__
    assert broken["error"] == "ValueError: tile 63 is not a multiple of 8"
    assert broken["where"].startswith("test_gpu_suite.py:") and broken["where"].endswith("in _fails")
    assert broken["figures"] == {"before": 1.0}  # what it measured before failing is kept
    assert stuck["error"].startswith("PartTimeout: over its cap of")
    assert stuck["figures"] == {"measured_first": 3.0}
    assert stuck["wall_s"] == pytest.approx(stuck["cap_s"], abs=0.5)  # stopped at its cap, not after 60 s
    assert last["summary"] == "earlier: first=ok,broken=failed,stuck=timeout"
    assert signal.getsignal(signal.SIGALRM) is signal.SIG_DFL and signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)


def test_time_a_part_leaves_passes_to_the_next():
    parts = {"a": Part(_ok, 1), "b": Part(_ok, 3)}
    assert gpu_suite.caps(["a", "b"], 100.0, parts) == [25.0, 75.0]
    assert gpu_suite.caps(["b"], 90.0, parts) == [90.0]  # a took 10 s of its 25: b gets the rest


def test_a_spent_budget_starts_no_part(tmp_path):
    ctx = _ctx(tmp_path)
    records = gpu_suite.run_suite(ctx, ["first"], budget_s=0.0, parts=FAKE)
    assert (records[0]["status"], records[0]["error"]) == ("timeout", "budget spent")
    assert _read(ctx.out, "first")["summary"] == "not started: the budget is spent"


def test_the_summary_table_has_a_row_per_part(tmp_path):
    ctx = _ctx(tmp_path)
    records = gpu_suite.run_suite(ctx, ["first", "broken"], budget_s=5.0, parts=FAKE)
    table = gpu_suite.finish(records, ctx, 5.0)
    lines = (ctx.out / "summary.md").read_text().splitlines()
    assert lines == table.splitlines() and lines[0].startswith("GPU suite on cpu")
    assert lines[2:4] == ["| part | status | wall s | cap s | figures |", "| --- | --- | ---: | ---: | --- |"]
    assert lines[4].startswith("| first | ok | ") and lines[4].endswith(" | 12.50 samples/s |")
    assert lines[5].startswith("| broken | failed | ") and "ValueError: tile 63" in lines[5]
    assert [r["part"] for r in json.loads((ctx.out / "records.json").read_text())] == ["first", "broken"]


def test_the_table_is_rebuilt_from_the_part_records_alone(tmp_path, monkeypatch):
    ctx = _ctx(tmp_path)
    monkeypatch.setattr(gpu_suite, "PARTS", FAKE)
    gpu_suite.run_suite(ctx, ["first", "broken"], budget_s=5.0, parts=FAKE)  # as if killed before its table
    assert gpu_suite.main(["--out", str(ctx.out), "--table"]) == 0
    lines = (ctx.out / "summary.md").read_text().splitlines()
    assert lines[0].startswith("GPU suite on cpu") and "(dry run)" in lines[0]
    assert [line.split(" | ")[0:2] for line in lines[4:]] == [["| first", "ok"], ["| broken", "failed"]]
    with pytest.raises(SystemExit, match="no part records"):
        gpu_suite.table_from(tmp_path)


def test_the_profile_goes_to_the_part_furthest_from_the_device():
    def rec(status, wall, mfu=None):
        return {"status": status, "wall_s": wall, "figures": {} if mfu is None else {"mfu": mfu}}

    assert slowest({"train": rec("ok", 90, 0.31), "infer": rec("ok", 50, 0.12), "mosaic": rec("ok", 99)}) == "infer"
    assert slowest({"train": rec("ok", 90), "infer": rec("failed", 200), "mosaic": rec("ok", 99)}) == "mosaic"
    assert slowest({"infer": rec("timeout", 10)}) is None


def test_unknown_parts_and_a_missing_gpu_are_refused_in_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit):
        gpu_suite.parse_args(["--out", str(tmp_path), "--dry-run", "--parts", "train,sdxl"])
    assert "--parts: unknown sdxl; choose from " + ", ".join(PARTS) in capsys.readouterr().err
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit):
            gpu_suite.parse_args(["--out", str(tmp_path)])
        assert "no CUDA device here: run with --dry-run" in capsys.readouterr().err
