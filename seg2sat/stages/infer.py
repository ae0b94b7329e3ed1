"""`seg2sat infer`: land-cover files -> georeferenced aerial GeoTIFFs, any size, resumable.

1. find the inputs (a file, a folder, a glob) and this process's share (`accelerate launch`:
   rank r takes every world-th file); skip the finished ones (GeoTIFF + sidecar);
2. check every input before any model loads; a bad input of a batch is reported and skipped,
   a single bad input is the run's error; `check=true` (`--dry-run`) stops here with a table
   and the size of the outputs against the free space; a real run refuses a folder that is
   read-only or clearly short of space for them (`seg2sat.atomic.check_space`);
3. load the model once;
4. generate each file (`seg2sat.generation.files`), then its sidecar JSON (last, with the
   checksums of what was written: it marks the output finished, so reruns skip it, and a
   changed or truncated output is redone); a failed write (full disk) ends the run;
5. write `report.json`, and raise a `BatchError` if any input failed.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from seg2sat import faults
from seg2sat.atomic import check_space, space_line, write_json
from seg2sat.errors import BatchError, Seg2SatError, WriteError
from seg2sat.generation.files import (
    SIDECAR_BYTES,
    SIDECAR_SUFFIX,
    FileJob,
    InputCheck,
    check_input,
    edit_file,
    generate_file,
    is_finished,
    output_paths,
    stac_item,
    sweep_leftovers,
    write_sidecar,
)
from seg2sat.generation.models import LoadedModel, load_configured, peek_model, process_state
from seg2sat.geo.inputs import find_inputs
from seg2sat.geo.stac import item_path, write_item, write_run_collection
from seg2sat.progress import json_mode
from seg2sat.progress import report as report_progress

log = logging.getLogger(__name__)


@dataclass
class InferResult:
    """What a run wrote, skipped (already finished), checked and could not do."""

    outputs: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # input -> reason
    checked: list[InputCheck] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    windows: int = 0
    report: Path | None = None


def _attempt(result: InferResult, src: Path, single: bool, fn: Callable[[], Any]) -> Any:
    """Run one input's step: a single input raises its own error; a batch records it and goes on.

    A failed write (full disk, read-only folder) ends the run: the next file would meet it too.
    """
    try:
        return fn()
    except WriteError:
        raise
    except Seg2SatError as exc:
        if single:
            raise
        result.failed[str(src)] = str(exc)
        log.warning("infer: skipping %s", exc)
        return None


def _seconds_per_window_step(out_dir: Path) -> float | None:
    """This machine's measured pace: the sidecars of earlier runs into the same folder."""
    work = seconds = 0.0
    for sidecar in out_dir.glob(f"*.tif{SIDECAR_SUFFIX}"):
        try:
            record = json.loads(sidecar.read_text(encoding="utf-8"))
            work += float(record["windows"]) * float(record["steps"])
            seconds += float(record["seconds"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return seconds / work if work > 0 else None


def check_table(result: InferResult, steps: int, pace: float | None) -> str:
    """The dry run's table: what each input is and what it will cost."""
    rows = [("file", "size (px)", "CRS", "resolution", "classes", "windows", "estimate")]
    for c in result.checked:
        estimate = f"~{c.windows * steps * pace:.0f} s" if pace else "unknown (no earlier run here)"
        rows.append((c.input.name, f"{c.size[0]}x{c.size[1]}", c.crs or "-", f"{c.resolution:g}",
                     ", ".join(c.classes[:4]) + (f" (+{len(c.classes) - 4})" if len(c.classes) > 4 else ""),
                     str(c.windows), estimate))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines += [f"already finished (skipped): {p}" for p in result.skipped]
    lines += [f"FAILED: {reason}" for reason in result.failed.values()]
    return "\n".join(lines)


def _finish(result: InferResult, out_dir: Path, state: Any, total: int) -> InferResult:
    """Write the run's report (done, skipped, failed with reasons); raise when an input failed."""
    report = {"done": [str(p) for p in result.outputs], "skipped_finished": [str(p) for p in result.skipped],
              "failed": result.failed, "inputs": total}
    name = "report.json" if state.num_processes == 1 else f"report-{state.process_index}.json"
    result.report = write_json(out_dir / name, report)
    write_run_collection(out_dir, title=f"Seg2Sat outputs in {out_dir.name}",
                         description="Aerial images generated by Seg2Sat from land-cover maps (not photographs).")
    summary = (f"{len(result.outputs)} done, {len(result.skipped)} skipped (already finished), "
               f"{len(result.failed)} failed")
    log.info("infer: %s -> %s", summary, result.report)
    if result.failed:
        first, reason = next(iter(result.failed.items()))
        raise BatchError(f"{summary} of {total} inputs; first: {reason.rstrip('.')}; see {result.report}", report)
    return result


def _todo(files: list[Path], out_dir: Path, overwrite: bool, result: InferResult) -> list[tuple[Path, dict]]:
    """The inputs whose output is not finished yet (finished ones go to `result.skipped`)."""
    todo = []
    for src in files:
        paths = output_paths(out_dir, src)
        if is_finished(paths) and not overwrite:
            result.skipped.append(paths["tif"])
        else:
            todo.append((src, paths))
    return todo


def _generate_all(model: LoadedModel, job: FileJob, good: list[tuple[Path, dict]], result: InferResult,
                  single: bool, state: Any) -> None:
    """Each file, then its sidecar (last: it marks the output finished)."""
    from tqdm.auto import tqdm

    bars = state.is_main_process and not json_mode()  # JSON progress lines replace the bars
    for i, (src, paths) in enumerate(tqdm(good, desc="files", disable=not bars or len(good) < 2)):
        t0 = time.perf_counter()
        sweep_leftovers(paths)
        bar = tqdm(desc=src.name, unit="win", leave=False, disable=not bars)

        def progress(done: int, total: int, bar: Any = bar, i: int = i, name: str = src.name) -> None:
            bar.total, bar.n = total, done
            bar.refresh()
            faults.progress("infer.window", done)
            if state.is_main_process:  # files count equally: file i at done/total is (i + done/total)/n
                report_progress(i * total + done, len(good) * total, f"{name}: {done}/{total} windows")

        with bar:
            record = _attempt(result, src, single, partial(edit_file, model, job, src, paths) if job.edit.image
                              else partial(generate_file, model, job, src, paths, progress))
        if record is None:
            continue
        record["seconds"] = round(time.perf_counter() - t0, 2)
        record["process"] = f"{state.process_index}/{state.num_processes}"
        # the STAC item before the sidecar: the sidecar stays the mark of a finished output
        write_item(stac_item(paths, record, job.output.cog), item_path(paths["tif"]), paths["tif"].parent)
        write_sidecar(paths, record)
        result.outputs.append(paths["tif"])
        faults.progress("infer.file", len(result.outputs))
        result.windows += int(record.get("windows", 0))
        result.seconds[src.name] = record["seconds"]
        log.info("infer: %s -> %s (%.1f s)", src, paths["tif"], record["seconds"])
        if state.is_main_process:
            report_progress(i + 1, len(good), f"{src.name}: done")


def run(cfg: DictConfig, model: LoadedModel | None = None) -> InferResult:
    """Generate every input not finished yet; returns what was written, skipped and checked.

    `model` reuses a loaded model (the app's shared one).
    """
    # 1. Inputs, this process's share, what is left to do.
    state = process_state()
    files = find_inputs(str(cfg.input))[state.process_index::state.num_processes]
    out_dir = Path(cfg.output_dir)
    if cfg.edit.image and len(files) != 1:
        raise Seg2SatError(f"edit.image takes one land-cover input, got {len(files)} (input=)")
    result = InferResult()
    todo = _todo(files, out_dir, bool(cfg.overwrite), result)
    if not todo:
        log.info("infer: all %d outputs already finished in %s", len(files), out_dir)
        return result
    # 2. Check every input before the model loads; a batch skips (and reports) bad ones.
    single = len(files) == 1
    job = FileJob.from_config(cfg, model or peek_model(str(cfg.model_path)))
    good = []
    for src, paths in todo:
        checked = _attempt(result, src, single, partial(check_input, job, src))
        if checked is not None:
            result.checked.append(checked)
            good.append((src, paths))
    needed = sum(c.output_bytes for c in result.checked) + SIDECAR_BYTES  # + report.json
    if cfg.check:
        print(check_table(result, job.sampling.steps, _seconds_per_window_step(out_dir)))
        print(space_line(out_dir, needed))
        if result.failed:
            raise BatchError(f"{len(result.failed)} of {len(files)} inputs would fail (listed above)")
        return result
    check_space(out_dir, needed)  # writable, and not clearly short of space
    # 3. Model, once (a hub model's tile is known once loaded).
    t0 = time.perf_counter()
    if good and model is None:
        model = load_configured(cfg)
        job = FileJob.from_config(cfg, model)
    result.seconds["load"] = round(time.perf_counter() - t0, 2)
    # 4. Files, one after the other; windows inside a file are batched.
    _generate_all(model, job, good, result, single, state)
    # 5. The report, and an error if anything failed.
    return _finish(result, out_dir, state, len(files))
