"""Run the Seg2Sat command line from QGIS: build the overrides, relay progress, cancel, report errors.

QGIS's Python is not the environment Seg2Sat is installed in (torch, diffusers, rasterio live in
a virtual environment), so the plugin never imports `seg2sat`: it runs the project's own CLI,
`<command> <stage> --progress=json key=value ...`, where `<command>` is the provider setting
(e.g. `/home/me/seg2sat/.venv/bin/seg2sat`, or `/path/python -m seg2sat.cli`). The CLI prints
one JSON object per progress update on stderr, and a bad input as one line
`seg2sat <stage>: error: <what and where>`; both are read here.

This module imports nothing from QGIS, so it is tested with plain pytest too.
"""

from __future__ import annotations

import json
import os
import queue
import re
import shlex
import subprocess
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

SETTING = "SEG2SAT_COMMAND"  # the Processing setting holding the command line
DEFAULT_COMMAND = "seg2sat"  # on PATH, unless `seg2sat qgis install` wrote cli.json
CLI_JSON = "cli.json"  # {"command": "..."} written by `seg2sat qgis install`: the installing environment
DEFAULTS_JSON = "defaults.json"  # {stage: {key: value}} written by `seg2sat qgis install`: the CLI's defaults
DEFAULTS_ARGS = ("qgis", "action=defaults")  # the CLI prints the same JSON (a plugin without defaults.json)
PROGRESS_FLAG = "--progress=json"
SETTING_HINT = ("set it in Processing > Options > Providers > Seg2Sat > 'Seg2Sat command' to the seg2sat of the "
                "environment where Seg2Sat is installed (e.g. /path/to/.venv/bin/seg2sat, or "
                "'/path/to/.venv/bin/python -m seg2sat.cli')")
_ERROR = re.compile(r"^seg2sat (?P<stage>[\w-]+): error: (?P<message>.*)$")
_KEY = re.compile(r"^[A-Za-z_][\w.]*$")
_NAME = re.compile(r"^[A-Za-z_]\w*$")  # a key inside a dict value
# Environment variables of QGIS's own Python that must not reach the project's interpreter.
_QGIS_PYTHON_ENV = ("PYTHONPATH", "PYTHONHOME")


class CliError(Exception):
    """The command line failed: its own one-line error, or why it could not run."""


class CliCanceled(CliError):
    """The user canceled; the command line was stopped."""


def default_command(plugin_dir: str | Path) -> str:
    """The command `seg2sat qgis install` recorded (the environment it ran in), else `seg2sat`."""
    path = Path(plugin_dir) / CLI_JSON
    if path.is_file():
        try:
            return str(json.loads(path.read_text(encoding="utf-8"))["command"])
        except (ValueError, KeyError):
            pass
    return DEFAULT_COMMAND


def load_defaults(plugin_dir: str | Path, command: str) -> dict[str, dict[str, Any]]:
    """The CLI's defaults of the plugin's parameters, `{stage: {key: value}}` (the stages' configs own them).

    Read from `defaults.json` beside the plugin (written by `seg2sat qgis install`/`zip`), else
    asked of the CLI (`<command> qgis defaults`); {} when neither answers (no default shown).
    """
    path = Path(plugin_dir) / DEFAULTS_JSON
    if path.is_file():
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except ValueError:
            pass
    try:
        proc = subprocess.run([*split_command(command), *DEFAULTS_ARGS], env=_environment(), capture_output=True,
                              stdin=subprocess.DEVNULL, text=True, encoding="utf-8", errors="replace", timeout=120)
    except (CliError, OSError, subprocess.TimeoutExpired):
        return {}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("{"):
            try:
                return json.loads(line)
            except ValueError:
                break
    return {}


def name_layers(message: str, names: Mapping[str, str]) -> str:
    """The CLI's message with the files the plugin made for it named as the user's layers.

    The CLI reads copies and links in a temporary folder (`/tmp/seg2sat-xxxx/out.tif`); an
    error about one must name the layer the user chose. Longer paths first (one may hold another).
    """
    for path in sorted(names, key=len, reverse=True):
        message = message.replace(path, names[path])
    return message


def split_command(command: str) -> list[str]:
    """The setting's text as an argument list (shell quoting rules)."""
    try:
        args = shlex.split(command or "")
    except ValueError as exc:
        raise CliError(f"Seg2Sat command {command!r} cannot be read ({exc}); {SETTING_HINT}") from None
    if not args:
        raise CliError(f"the Seg2Sat command is empty; {SETTING_HINT}")
    return args


def quote(value: str) -> str:
    r"""A string as a quoted Hydra override value (paths with spaces, commas, brackets, `=`).

    Hydra's rules: `\'` is a quote; backslashes are escaped only before a quote (so also at the
    end, before the closing one); `\${` keeps a literal `${` from being interpolated.
    """
    text = re.sub(r"(\\*)'", lambda m: m.group(1) * 2 + "\\'", str(value))
    text = re.sub(r"(\\+)$", lambda m: m.group(1) * 2, text)
    return "'" + text.replace("${", "\\${") + "'"


def _value(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        bad = [k for k in value if not _NAME.match(str(k))]
        if bad:
            raise CliError(f"{bad[0]!r} is not a configuration key")
        return "{" + ",".join(f"{k}:{_value(v)}" for k, v in value.items()) + "}"
    return quote(str(value))


def overrides(values: Mapping[str, Any]) -> list[str]:
    """`{"input": "/a b/x.tif", "sampling.steps": 4}` -> `["input='/a b/x.tif'", "sampling.steps=4"]`."""
    out = []
    for key, value in values.items():
        if not _KEY.match(key):
            raise CliError(f"{key!r} is not a configuration key")
        out.append(f"{key}={_value(value)}")
    return out


def progress_of(line: str) -> tuple[float, str] | None:
    """(fraction, message) of a progress line of the CLI, else None."""
    start = line.find('{"event"')
    if start < 0:
        return None
    try:
        event = json.loads(line[start:])
    except ValueError:
        return None
    if not isinstance(event, dict) or event.get("event") != "progress":
        return None
    return float(event.get("fraction", 0.0)), str(event.get("message", ""))


def error_of(line: str) -> str | None:
    """The message of the CLI's one-line error, else None."""
    match = _ERROR.match(line.strip())
    return match.group("message") if match else None


def failure(stderr: Sequence[str]) -> str:
    """The line that says why a run failed without the CLI's own error line (a Hydra or Python error).

    Hydra's config errors say "Could not ..." first; a Python traceback ends with "XError: ...".
    """
    lines = [ln.strip() for ln in stderr if ln.strip() and not ln.startswith((" ", "\t", "[", "{"))
             and not ln.startswith("Set the environment variable HYDRA_FULL_ERROR")]
    for line in lines:
        if "Could not" in line:
            return line
    errors = [ln for ln in lines if re.match(r"^[\w.]*(Error|Exception)\b", ln)]
    return (errors or lines or ["no output"])[-1]


def _environment() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in _QGIS_PYTHON_ENV}


def _pump(stream: Any, name: str, lines: queue.Queue) -> None:
    for raw in iter(stream.readline, ""):
        lines.put((name, raw.rstrip("\r\n")))
    lines.put((name, None))


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _start(args: list[str], cwd: str | Path | None) -> subprocess.Popen:
    try:
        return subprocess.Popen(args, cwd=cwd, env=_environment(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                stdin=subprocess.DEVNULL, text=True, encoding="utf-8", errors="replace", bufsize=1)
    except (FileNotFoundError, PermissionError, NotADirectoryError) as exc:
        raise CliError(f"the Seg2Sat command {args[0]!r} cannot be run ({exc.strerror or exc}); {SETTING_HINT}") from None


def run_cli(command: str, stage: str, values: Mapping[str, Any], *,
            on_progress: Callable[[float, str], None] = lambda f, m: None,
            on_line: Callable[[str], None] = lambda line: None,
            is_canceled: Callable[[], bool] = lambda: False,
            extra: Sequence[str] = (), cwd: str | Path | None = None) -> list[str]:
    """Run `<command> <stage> --progress=json <overrides>`; returns its stdout lines.

    Progress lines go to `on_progress(fraction, message)`, every other line to `on_line`;
    `is_canceled()` is polled ten times a second and stops the process when true.

    Raises:
        CliError: the CLI's own one-line error, a command that cannot start, or a non-zero exit.
        CliCanceled: `is_canceled()` became true.
    """
    # 1. Start it; two threads read stdout and stderr so neither pipe can fill up and block it.
    args = [*split_command(command), stage, *extra, PROGRESS_FLAG, *overrides(values)]
    proc = _start(args, cwd)
    lines: queue.Queue = queue.Queue()
    for name, stream in (("out", proc.stdout), ("err", proc.stderr)):
        threading.Thread(target=_pump, args=(stream, name, lines), daemon=True).start()
    # 2. Relay lines until both streams end; stop the process on cancel.
    stdout, stderr, open_streams = [], [], 2
    while open_streams:
        if is_canceled():
            _stop(proc)
            proc.stdout.close()
            proc.stderr.close()
            raise CliCanceled(f"seg2sat {stage}: canceled")
        try:
            name, line = lines.get(timeout=0.1)
        except queue.Empty:
            continue
        if line is None:
            open_streams -= 1
            continue
        (stdout if name == "out" else stderr).append(line)
        progress = progress_of(line) if name == "err" else None
        if progress is not None:
            on_progress(*progress)
        elif line.strip():
            on_line(line)
    # 3. The exit status: the CLI's own error line, or what it printed last.
    rc = proc.wait()
    proc.stdout.close()
    proc.stderr.close()
    if rc != 0:
        message = next((m for m in map(error_of, reversed(stderr)) if m), None)
        if message:
            raise CliError(message)
        raise CliError(f"'{shlex.join(args[:2])}... {stage}' exited with status {rc}: {failure(stderr)}; "
                       f"if the command is not Seg2Sat's, {SETTING_HINT}")
    return stdout

