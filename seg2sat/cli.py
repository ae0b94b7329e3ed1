"""`seg2sat <stage> [hydra overrides]`: one subcommand per stage.

`seg2sat train lr=1e-4` is `python train.py lr=1e-4`: both compose `conf/<stage>.yaml` with
Hydra (so `--cfg job`, `--multirun` and overrides work the same) and call the stage's
`run(cfg)`. Multi-GPU training goes through `accelerate launch train.py ...` instead.
"""

from __future__ import annotations

import difflib
import importlib
import logging
import os
import re
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence

from omegaconf import DictConfig

from seg2sat import progress
from seg2sat.config import conf_dir
from seg2sat.errors import Seg2SatError

# subcommand -> (config name, module with run(cfg), one-line help)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "sample-data": ("sample_data", "seg2sat.stages.sample_data", "write the synthetic FLAIR-layout sample dataset"),
    "prepare": ("prepare", "seg2sat.stages.prepare", "FLAIR tiles -> colour hints, images, captions, manifest"),
    "pretrain": ("pretrain", "seg2sat.stages.pretrain", "pretrain the tiny Stable Diffusion base (the offline stand-in for SD)"),
    "train": ("train", "seg2sat.stages.train", "fine-tune a ControlNet (use `accelerate launch train.py` for multi-GPU)"),
    "export": ("export", "seg2sat.stages.export", "checkpoint -> model folder for inference and the app"),
    "evaluate": ("evaluate", "seg2sat.stages.evaluate", "score how well a model follows its maps (fidelity.json, grid)"),
    "infer": ("infer", "seg2sat.stages.infer", "land-cover GeoTIFF/PNG/vector -> georeferenced aerial GeoTIFF"),
    "mosaic": ("mosaic", "seg2sat.stages.mosaic", "a whole territory as one seamless mosaic (blocks, resumable; engine=ray)"),
    "synthesize": ("synthesize", "seg2sat.stages.synthesize", "a FLAIR-layout dataset of generated image-mask pairs, "
                   "aimed at the classes a dataset lacks"),
    "segment": ("segment", "seg2sat.stages.segment", "train and score a reference segmenter: does a (synthetic) set help?"),
    "specialize": ("specialize", "seg2sat.stages.specialize", "adapt a model's base to a place's unlabelled images (LoRA), keeping its ControlNet"),
    "app": ("app", "seg2sat.stages.app", "start the Streamlit app (draw, edit, batch, model, course, search)"),
    "search": ("search", "seg2sat.stages.search", "tiles of a prepared dataset by a sentence (French/English) or by example"),
    "course": ("course", "seg2sat.course.lessons", "companion lessons in the terminal (`seg2sat course lesson=list` lists them)"),
    "demo": ("demo", "seg2sat.stages.demo", "sample data -> prepare -> train -> export -> a generated image"),
    "qgis": ("qgis", "seg2sat.stages.qgis", "the QGIS plugin (install, zip), legend styles (QML/SLD), drawing layers"),
}
PROGRESS_FLAG = "--progress=json"  # one JSON progress object per line on stderr (seg2sat.progress)


# Library chatter that tells our users nothing (e.g. transformers' notice that torchvision is
# absent, diffusers' dtype notes): silenced here, at the entry point, never in the library.
QUIET_ENV = {"TRANSFORMERS_VERBOSITY": "error", "DIFFUSERS_VERBOSITY": "error", "TOKENIZERS_PARALLELISM": "false"}


def _usage() -> str:
    lines = ["usage: seg2sat <command> [action] [--debug] [--progress=json] [hydra overrides ...]", "", "commands:"]
    lines += [f"  {name:<12} {help_}" for name, (_, _, help_) in COMMANDS.items()]
    lines += ["", "examples: seg2sat demo", "          seg2sat prepare data_root=/data/FLAIR workers=8",
              "          seg2sat infer input=maps/ --dry-run   (check the inputs, load nothing)",
              "          seg2sat train --cfg job   (print the composed config)",
              "          seg2sat qgis install   (a bare word after the command is action=<word>)",
              "", "errors print one line and exit 2 (bad input or config) or 1 (part of a batch failed);",
              "--debug (or HYDRA_FULL_ERROR=1) shows the traceback instead;",
              "--progress=json prints progress as JSON lines on stderr (for programs, e.g. the QGIS plugin)."]
    return "\n".join(lines)


def _action(rest: list[str]) -> list[str]:
    """`seg2sat qgis install ...` -> `action=install ...`: a bare first word names the action.

    A Hydra override always holds `=` (or starts with `-`, `~` or `+`), so a bare word is
    never one: reading it as `action=` takes nothing away from commands without actions.
    """
    if rest and "=" not in rest[0] and rest[0][:1] not in ("-", "~", "+"):
        return [f"action={rest[0]}", *rest[1:]]
    return rest


# Free text (a sentence, a place, a prompt or its template) as a shell user types it: Hydra's
# override grammar refuses an apostrophe or a letter outside ASCII in a bare value ("l'eau",
# "forêt") and reads a comma as a sweep, so these values are quoted for it.
FREE_TEXT_KEYS = frozenset({"query", "text", "template", "place"})


def hydra_quote(value: str) -> str:
    """`value` as one Hydra quoted string (its backslashes kept, its quotes escaped)."""
    value = re.sub(r'(\\+)(?="|$)', lambda m: m.group(1) * 2, value)  # literal except before a quote
    return '"' + value.replace('"', '\\"') + '"'


def _parses(arg: str) -> bool:
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        OverridesParser.create().parse_override(arg)
    except HydraException:
        return False
    return True


def quote_free_text(arg: str) -> str:
    """`query=forêt de l'eau` -> `query="forêt de l'eau"`; other overrides unchanged.

    A free-text key's value is quoted unless it is already a quoted string or null; any other
    value is quoted only where Hydra's lexer would refuse it (a file name with an accent).
    """
    key, sep, value = arg.partition("=")
    if not sep or arg.startswith("-") or not value:
        return arg
    quoted = len(value) > 1 and value[0] == value[-1] and value[0] in "'\"" and _parses(arg)
    free = key.lstrip("+~").rsplit(".", 1)[-1] in FREE_TEXT_KEYS and value != "null"
    if quoted or not (free or not _parses(arg)):
        return arg
    return f"{key}={hydra_quote(value)}"


def _leaf_keys(node: object, prefix: str = "") -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _leaf_keys(value, f"{prefix}{key}.") if isinstance(value, dict) and value else [f"{prefix}{key}"]


def closest_key(config_name: str, key: str) -> str | None:
    """The option a mistyped or moved key most likely means (`steps` -> `sampling.steps`)."""
    from omegaconf import OmegaConf

    from seg2sat.config import compose

    keys = list(_leaf_keys(OmegaConf.to_container(compose(config_name), resolve=False)))
    leaf = key.rsplit(".", 1)[-1]
    moved = [k for k in keys if k.rsplit(".", 1)[-1] == leaf]
    close = difflib.get_close_matches(key, keys, n=1, cutoff=0.6)
    return (moved or close or [None])[0]


def check_overrides(command: str, config_name: str, overrides: Sequence[str]) -> str | None:
    """None when the overrides compose; else one line saying which is wrong and what was meant.

    Hydra alone would print "Could not override 'steps'. To append to your config use
    +steps=2" (which would silently add a key nothing reads) and exit 1.
    """
    from hydra.errors import HydraException

    from seg2sat.config import compose

    plain = [o for o in overrides if "=" in o and not o.startswith(("-", "hydra.", "hydra/"))]
    try:
        compose(config_name, plain)
    except HydraException as exc:
        return _explain(command, config_name, plain, " ".join(str(exc).split()))
    return None


def _explain(command: str, config_name: str, overrides: Sequence[str], message: str) -> str:
    values = dict(o.lstrip("+~").partition("=")[::2] for o in overrides)
    if found := re.search(r"Could not override '([^']+)'", message) or re.search(r"Key '([^']+)' is not in struct",
                                                                                    message):
        key = found.group(1)
        hint = closest_key(config_name, key)
        value = values.get(key, "...")
        also = f"; did you mean {hint}={value}?" if hint else ""
        return f"{key}={value}: no such option{also} (`seg2sat {command} --cfg job` lists every option)"
    if found := re.search(r"Could not find '([^']+)/([^']+)'.*?Available options in '[^']+': (.*?)(?: Config search path|$)", message):
        group, choice, options = found.groups()
        return f"{group}={choice}: no such choice; available: {', '.join(options.split())}"
    return message


def report_error(command: str, exc: Seg2SatError) -> int:
    """Print a project error as one line on stderr, the way GIS tools do; returns the exit code."""
    message = " ".join(str(exc).split())  # one line, whatever the message held
    print(f"seg2sat {command}: error: {message}", file=sys.stderr)
    return int(getattr(exc, "exit_code", 2))


def hydra_entry(config_name: str, run: Callable[[DictConfig], object], command: str | None = None,
                debug: bool = False) -> Callable[[], None]:
    """Wrap `run` in `@hydra.main` for `conf/<config_name>.yaml` (used by the CLI).

    A `Seg2SatError` becomes one line on stderr and exit status 2 (bad input or config) or 1
    (a batch with failed inputs), unless `debug`; anything else keeps its traceback.
    """
    import hydra

    @hydra.main(config_path=str(conf_dir()), config_name=config_name, version_base="1.3")
    def _main(cfg: DictConfig) -> None:
        if not debug:  # GDAL reports every refused file at INFO; our own error says it once
            logging.getLogger("rasterio").setLevel(logging.WARNING)
            # A log file on a full disk must not print a traceback per record: the run's own
            # error (one line) says what is wrong.
            logging.raiseExceptions = False
        try:
            run(cfg)
        except Seg2SatError as exc:
            if debug:
                raise
            raise SystemExit(report_error(command or config_name, exc)) from None

    return _main


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch to a stage; the remaining arguments are Hydra's."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    debug = "--debug" in argv or os.environ.get("HYDRA_FULL_ERROR") == "1"
    if PROGRESS_FLAG in argv:
        progress.enable_json()
    argv = ["check=true" if a == "--dry-run" else a for a in argv if a not in ("--debug", PROGRESS_FLAG)]
    command, rest = argv[0], _action(argv[1:])
    if command not in COMMANDS:
        print(f"seg2sat: unknown command {command!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    if not debug:
        for key, value in QUIET_ENV.items():
            os.environ.setdefault(key, value)
        # A plain PNG/JPEG is placed on a local grid on purpose (crs=); GDAL's notice adds nothing.
        warnings.filterwarnings("ignore", message="Dataset has no geotransform")
    config_name, module_name, _ = COMMANDS[command]
    rest = [quote_free_text(a) for a in rest]
    if not debug and not {"-m", "--multirun"} & set(rest) and (problem := check_overrides(command, config_name, rest)):
        print(f"seg2sat {command}: error: {problem}", file=sys.stderr)
        return 2
    run = importlib.import_module(module_name).run
    # Hydra reads sys.argv: make it look like `python <stage>.py <overrides>`.
    sys.argv = [f"seg2sat {command}", *rest]
    hydra_entry(config_name, run, command, debug)()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
