"""The fault suite's tools: fault specs, whole-file checks, run comparisons, subprocesses and the tally.

Every injection point a test tries is tallied (fault, stage, survived) and printed at the end of
the run (tests/faults/conftest.py); docs/reliability.md holds the counts of a full run.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import numpy as np

from seg2sat import faults
from seg2sat.atomic import TMP_PREFIX
from seg2sat.cli import report_error
from seg2sat.errors import DiskFullError
from seg2sat.geo.stac import collection_id

REPO = Path(__file__).resolve().parents[2]
TALLY: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])  # (fault, stage) -> [tried, survived]
# Keys of a JSON output that say how a run went, not what it made: left out of comparisons.
VOLATILE = {"seconds", "versions", "process", "planned", "compose_seconds", "kept_verified",
            "generated_this_run", "composed_this_run", "judge_trained_now", "counts", "attempts",
            "sidecar_sha256",  # a checksum over the sidecar, timings included
            "created", "datetime", "interval",  # STAC Items' and Collections' times
            "title"}  # a STAC Collection is titled after its run folder
# Files that record how far a run got: whole at every moment, equal to the reference only once finished.
STATES = ("manifest.sqlite", "run.json", "report.json", "prepare_state.json",
          "model/seg2sat.json", "model/README.md")  # evaluate records its scores in the model folder
FULL_DISK = re.compile(r"^(?P<folder>/\S+): no space left on device \(needs about [0-9.]+ MB\)$")


def tally(fault: str, stage: str, survived: bool | int, tried: int = 1) -> None:
    """Count injection points tried (one by default), and how many the stage survived."""
    TALLY[(fault, stage)][0] += tried
    TALLY[(fault, stage)][1] += int(survived)


def free_space(root: Path) -> None:
    """Remove the files the fault suite filled a disk with."""
    for filler in root.rglob(f"{faults.FILLER_PREFIX}*"):
        filler.unlink()


def write_points(run: Callable[[], object], log: Path, monkeypatch) -> list[str]:
    """The checked writes a clean run makes, in order (one `SEG2SAT_FAULT_LOG` line each)."""
    log.unlink(missing_ok=True)
    monkeypatch.setenv(faults.LOG_ENV, str(log))
    faults.reset()
    try:
        run()
    finally:
        monkeypatch.delenv(faults.LOG_ENV)
    return [line.split(" ", 2)[2] for line in log.read_text().splitlines() if line.startswith("write ")]


def one_of_each(points: list[str], keep: Callable[[str], bool] = lambda path: True) -> list[int]:
    """1-based indexes of the first write of every kind (folder, numbers aside, and suffix) that `keep` keeps.

    The default run's sample; `-m faults` tries every write.
    """
    seen: dict[tuple[str, str], int] = {}
    for i, path in enumerate(points, 1):
        p = Path(path)
        if keep(path):
            seen.setdefault(tuple(re.sub(r"\d+", "N", part) for part in (p.parent.name, "".join(p.suffixes) or p.name)), i)
    return sorted(seen.values())


def assert_full_disk(exc: DiskFullError, under: Path, command: str) -> None:
    """The error a user sees is one line naming a folder under `under` and about how much it needs."""
    import io
    from contextlib import redirect_stderr

    err = io.StringIO()
    with redirect_stderr(err):
        code = report_error(command, exc)
    line = err.getvalue()
    assert code == 2 and line.count("\n") == 1, line
    message = line.removeprefix(f"seg2sat {command}: error: ").strip()
    match = FULL_DISK.match(message)
    assert match, line
    assert Path(match["folder"]).is_relative_to(under), line


# ---------------------------------------------------------------------------------------------
# Whole files and equal runs
# ---------------------------------------------------------------------------------------------


def _stable(value, root: str):
    """A JSON value without what says how a run went, its own folder written as `<root>`."""
    if isinstance(value, dict):
        # A STAC Collection id is named after its run folder (seg2sat.geo.stac.collection_id): items
        # of a copied folder that a rerun did not redo keep the old name (docs/reliability.md).
        return {k: "seg2sat-<root>" if k == "collection" and isinstance(v, str) else _stable(v, root)
                for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, list):
        return [_stable(v, root) for v in value]
    if not isinstance(value, str):
        return value
    return value.replace(root, "<root>").replace(collection_id(root), "seg2sat-<root>")


def read_whole(path: Path, root: Path) -> object:
    """What a finished file under `root` holds, read the way its readers read it; raises if it is not whole."""
    suffix = path.suffix.lower()
    if suffix == ".json":
        return _stable(json.loads(path.read_text(encoding="utf-8")), str(root))
    if suffix == ".jsonl":
        return [_stable(json.loads(line), str(root)) for line in path.read_text(encoding="utf-8").splitlines()]
    if suffix in (".tif", ".png", ".vrt"):
        import rasterio

        from seg2sat.geo.tiff import check_tiff_blocks

        if suffix == ".tif":
            check_tiff_blocks(path)
        with rasterio.open(path) as src:
            return hashlib.sha256(src.read().tobytes() + src.dataset_mask().tobytes()).hexdigest()
    if suffix == ".safetensors":
        from safetensors.numpy import load_file

        return {k: hashlib.sha256(np.ascontiguousarray(v).tobytes()).hexdigest() for k, v in load_file(path).items()}
    if suffix == ".gpkg":  # a GeoPackage stores its write time: compare what it holds
        import geopandas as gpd

        frame = gpd.read_file(path)
        return [tuple(map(str, row)) for row in frame.itertuples(index=False)]
    if suffix == ".sqlite":
        from seg2sat.scale.manifest import Manifest

        m = Manifest(path)
        try:
            assert m.sound(), path
            return sorted((r["id"], r["state"], r["sha256"], r["raw_sha256"]) for r in m.blocks())
        finally:
            m.close()
    return hashlib.sha256(path.read_bytes()).hexdigest()


def products(root: Path, ignore: tuple[str, ...] = ()) -> dict[str, object]:
    """Every finished file under `root` (temp files and fillers excluded), read whole."""
    out = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if not path.is_file() or any(part.startswith((TMP_PREFIX, faults.FILLER_PREFIX)) for part in path.parts) \
                or any(re.fullmatch(pattern, rel) for pattern in ignore) or path.name.endswith(("-wal", "-shm")):
            continue
        out[rel] = read_whole(path, root)
    return out


def leftovers(root: Path) -> list[str]:
    """Temp files a failed or killed run left behind (a rerun sweeps them; a failed write must not leave any)."""
    return [str(p) for p in root.rglob(f"{TMP_PREFIX}*")]


def nothing_corrupt(root: Path, reference: dict[str, object], ignore: tuple[str, ...] = ()) -> list[str]:
    """Problems with what a faulted run left: a file that is not whole, or differs from the uninterrupted run's.

    A run's state files (a mosaic's manifest) legitimately differ mid-run: they must only be whole.
    """
    ignore = (*ignore, *STATES)
    problems = []
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if not path.is_file() or path.name.startswith((TMP_PREFIX, faults.FILLER_PREFIX)) \
                or path.name.endswith(("-wal", "-shm")):
            continue
        try:
            got = read_whole(path, root)
        except Exception as exc:  # the point of the suite: a file under a final name that does not read
            problems.append(f"{rel}: not whole ({type(exc).__name__}: {exc})")
            continue
        if rel in reference and not any(re.fullmatch(p, rel) for p in ignore) and got != reference[rel]:
            problems.append(f"{rel}: differs from the uninterrupted run's")
    return problems


def differences(got: dict[str, object], want: dict[str, object]) -> list[str]:
    """Files missing, extra or different between two runs' products."""
    return sorted({*(f"missing {k}" for k in want.keys() - got.keys()), *(f"extra {k}" for k in got.keys() - want.keys()),
                   *(f"differs {k}" for k in want.keys() & got.keys() if got[k] != want[k])})


# ---------------------------------------------------------------------------------------------
# Subprocesses: the command line, killed and rerun
# ---------------------------------------------------------------------------------------------


def cli(*args: str, cwd: Path, fault: str | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """`seg2sat <args>` as a user runs it (one torch thread), optionally with a fault spec."""
    env = {**os.environ, "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.pop("HYDRA_FULL_ERROR", None)
    env.pop(faults.FAULT_ENV, None)
    if fault:
        env[faults.FAULT_ENV] = fault
    return subprocess.run([sys.executable, "-m", "seg2sat.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def killed(proc: subprocess.CompletedProcess) -> bool:
    """True when the process died of SIGKILL (the fault, not an error of its own)."""
    return proc.returncode == -signal.SIGKILL


def copy_tree(src: Path, dst: Path) -> Path:
    """A copy of an output folder to damage (the reference stays as it is)."""
    shutil.copytree(src, dst)
    return dst


# ---------------------------------------------------------------------------------------------
# A full disk at each write point
# ---------------------------------------------------------------------------------------------


def survive_full_disk(stage: str, command: str, run: Callable[[], object], out: Path, disk: Path,
                      indexes: list[int], reference: dict[str, object], inject: Callable[[str | None], None],
                      ignore: tuple[str, ...] = (), fresh: Callable[[], None] | None = None) -> list[str]:
    """Fill the disk at each write in `indexes` of a run from nothing; returns what went wrong.

    At each point: the run must stop with the one-line full-disk error, leave no temp file and
    nothing corrupt under a final name; once the space is freed, a rerun must make exactly what
    an uninterrupted run makes (`reference`).
    """
    failures = []
    for k in indexes:
        shutil.rmtree(out, ignore_errors=True)
        if fresh is not None:
            fresh()
        inject(f"fill@write:{k}")
        problems: list[str] = []
        try:
            run()
            problems.append("the run did not fail")
        except DiskFullError as exc:
            try:
                assert_full_disk(exc, disk, command)
            except AssertionError as bad:
                problems.append(f"message {bad}")
        except Exception as exc:  # anything but the one-line error is what the suite is here to find
            problems.append(f"{type(exc).__name__}: {exc}")
        finally:
            inject(None)
            free_space(disk)
        problems += [f"left {p}" for p in leftovers(out)] + nothing_corrupt(out, reference, ignore)
        try:
            run()
            problems += differences(products(out, ignore), reference)
        except Exception as exc:
            problems.append(f"rerun: {type(exc).__name__}: {exc}")
        tally("full disk", stage, not problems)
        failures += [f"write {k}: {p}" for p in problems]
    return failures


# ---------------------------------------------------------------------------------------------
# SIGKILL at a moment of a stage's own progress
# ---------------------------------------------------------------------------------------------


def survive_kill(stage: str, args: list[str], spec: str, out: Path, reference: dict[str, object], cwd: Path,
                 ignore: tuple[str, ...] = (), rerun: list[str] | None = None) -> list[str]:
    """`seg2sat <args>` SIGKILLed at `spec`, then rerun (with `rerun` added); returns what went wrong.

    The killed run must leave nothing corrupt under a final name (temp files are allowed: the
    rerun sweeps them); the rerun must finish, sweep them, and make what `reference` holds.
    """
    problems = []
    first = cli(*args, cwd=cwd, fault=spec)
    if not killed(first):
        problems.append(f"not killed (exit {first.returncode}): {first.stderr[-800:]}")
    problems += nothing_corrupt(out, reference, ignore)
    again = cli(*args, *(rerun or []), cwd=cwd)
    if again.returncode != 0:
        problems.append(f"rerun exit {again.returncode}: {again.stderr[-800:]}")
    problems += differences(products(out, ignore), reference) + [f"left {p}" for p in leftovers(out)]
    tally("SIGKILL", stage, not problems)
    return [f"{spec}: {p}" for p in problems]


def sample_flair_tree(root: Path, tiles_per_domain: int) -> Path:
    """A synthetic FLAIR tree under `root`: domains D064_2021 and D033_2020 (64 px tiles)."""
    from seg2sat.config import compose
    from seg2sat.stages import sample_data

    sample_data.run(compose("sample_data", [f"paths.root_dir={root}", "domains=[D064_2021,D033_2020]",
                                            f"tiles_per_domain={tiles_per_domain}"]))
    return root / "data" / "sample_flair"
