"""README.md and docs/ say only what the tree does: the test paths they name exist, every
`seg2sat ...` command they show composes (its stage exists, each `key=` is an option), and a
figure given in several places is the same figure everywhere.

Commands are checked the way the CLI checks them before a run (`seg2sat.cli.check_overrides`:
Hydra composes the stage's config with the line's overrides), so nothing runs or loads.
"""

from __future__ import annotations

import re
import shlex
from functools import cache
from pathlib import Path

import pytest

from seg2sat.cli import COMMANDS, _action, check_overrides, quote_free_text

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
TEST_PATH = re.compile(r"\btests/[\w/]+\.py(?:::\w+)?")
CODE_SPAN = re.compile(r"`(seg2sat [^`]+)`")
FENCE = re.compile(r"^```.*?$(.*?)^```", re.S | re.M)


def _text(doc: Path) -> str:
    return doc.read_text(encoding="utf-8")


def named_test_paths() -> list[tuple[str, str]]:
    """(doc, tests/... path) for every test path a doc names."""
    return [(d.name, m.group(0)) for d in DOCS for m in TEST_PATH.finditer(_text(d))]


def command_lines() -> list[tuple[str, str]]:
    """(doc, `seg2sat ...` line) for every command shown inline or in a code block."""
    found = []
    for doc in DOCS:
        text = _text(doc)
        lines = [m.group(1) for m in CODE_SPAN.finditer(text)]
        for block in FENCE.findall(text):
            lines += [ln.strip().removeprefix("$ ") for ln in re.sub(r"\\\n\s*", " ", block).splitlines()]
        for line in lines:  # a shell line may chain commands; a comment ends it
            parts = re.split(r"&&|\|\||;|\|", line.split("  #")[0].split(" # ")[0])
            found += [(doc.name, p.strip()) for p in parts if p.strip().startswith("seg2sat ")]
    # `seg2sat infer: error: ...` is an error message a doc quotes, not a command
    return sorted({(d, ln) for d, ln in found if not ln.split()[1].endswith(":")})


@cache
def _problem(command: str, overrides: tuple[str, ...]) -> str | None:
    return check_overrides(command, COMMANDS[command][0], overrides)


def _overrides(line: str) -> tuple[str, ...]:
    words = [w for w in shlex.split(re.sub(r"<[^>]*>", "X", line))[2:] if w != "..."]  # `...`: "as above"
    words = [w for w in _action(words) if not w.startswith("-")]
    # placeholders (`[overrides]`, `...`) and shell syntax are prose, not options
    return tuple(quote_free_text(w) for w in words if "=" in w and not w.startswith(("[", "<")))


def _picks_a_group(override: str) -> bool:
    key = override.lstrip("+~").partition("=")[0]
    return "." not in key and (ROOT / "conf" / key).is_dir()


def _failures(command: str, lines: list[tuple[str, str]]) -> list[str]:
    """Every line of `command` whose overrides do not compose, as `doc: line: problem`.

    One composition (~0.2 s) checks all the lines that pick no config group at once (each key
    once); a line is composed alone only where that fails or where it picks a group.
    """
    plain = {doc_line: _overrides(doc_line[1]) for doc_line in lines}
    shared = [o for o in plain.values() if not any(_picks_a_group(x) for x in o)]
    union = tuple({o.lstrip("+~").partition("=")[0]: o for ovs in shared for o in ovs}.values())
    alone = lines if _problem(command, union) else [dl for dl in lines if plain[dl] not in shared]
    return [f"{doc}: `{line}`: {problem}" for doc, line in alone if (problem := _problem(command, plain[(doc, line)]))]


@pytest.mark.parametrize(("doc", "path"), named_test_paths())
def test_every_test_path_a_doc_names_exists(doc, path):
    file, _, name = path.partition("::")
    assert (ROOT / file).is_file(), f"{doc} names {file}, which does not exist"
    if name:
        assert re.search(rf"\b(def|class) {name}\b", (ROOT / file).read_text(encoding="utf-8")), f"{doc}: {path}"


def _by_command() -> dict[str, list[tuple[str, str]]]:
    found: dict[str, list[tuple[str, str]]] = {}
    for doc, line in command_lines():
        if not line.split()[1].startswith("<"):  # `seg2sat <stage> ...`: the general form
            found.setdefault(line.split()[1], []).append((doc, line))
    return found


@pytest.mark.parametrize("command", sorted(_by_command()))
def test_every_command_a_doc_shows_composes(command):
    lines = _by_command()[command]
    assert command in COMMANDS, f"no command {command!r}, shown in {lines}"
    assert _failures(command, lines) == []


def test_the_checks_find_what_they_look_for():
    """The collectors are not vacuous: they see the README's own lines, and a bad key fails."""
    assert ("README.md", "seg2sat demo") in command_lines()
    assert len(named_test_paths()) >= 10
    assert "did you mean sampling.steps=2?" in _problem("infer", ("steps=2",))
    bad = [("a.md", "seg2sat infer sampling.steps=2"), ("b.md", "seg2sat infer resolution=0.5")]
    assert _failures("infer", bad) == ["b.md: `seg2sat infer resolution=0.5`: resolution=0.5: no such option; "
                                       "did you mean work_resolution=0.5? (`seg2sat infer --cfg job` lists every option)"]


# A figure the docs give in several places: each pattern's first group is the figure.
FACTS = {
    "the default suite's time": re.compile(r"(?:default (?:suite|run)|`python -m pytest`|tests \(CPU)[^.\n]{0,60}?"
                                           r"\b(\d+(?:-\d+)? min(?:utes)?(?: \d+ s)?)", re.I),
    "the demo's time": re.compile(r"`seg2sat demo`(?: wall time)?[^.\n]{0,80}?\b((?:about |near )?\d+(?:\.\d+)? "
                                  r"min(?:utes)?(?: \d+ s)?)", re.I),
}


def figures(pattern: re.Pattern) -> dict[str, list[str]]:
    """figure -> the docs that give it, for one fact."""
    found: dict[str, list[str]] = {}
    for doc in DOCS:
        for match in pattern.finditer(" ".join(_text(doc).split())):
            found.setdefault(match.group(1).removeprefix("about ").removeprefix("near "), []).append(doc.name)
    return found


@pytest.mark.parametrize("fact", sorted(FACTS))
def test_a_fact_has_one_figure_in_all_the_docs(fact):
    found = figures(FACTS[fact])
    assert len(found) == 1, f"{fact}: {found}"


def test_the_search_recall_the_docs_give_is_the_record():
    import json

    record = json.loads((ROOT / "benchmarks" / "results" / "search.json").read_text())["recall"]
    said = {doc.name: re.findall(r"recall@5 (0\.\d\d)|\| \*{0,2}(0\.\d\d)\*{0,2} \| 0\.\d\d \| 0\.\d\d \|", _text(doc))
            for doc in (ROOT / "README.md", ROOT / "docs" / "course.md")}
    expected = {f"{record[k]['recall_at_5']:.2f}" for k in ("use-multilingual", "minilm")}
    given = {a or b for found in said.values() for a, b in found}
    assert given and given <= expected, (given, expected)
    readme = _text(ROOT / "README.md")
    assert f"recall@5 {record['use-multilingual']['recall_at_5']:.2f}" in readme
    assert f"{record['minilm']['recall_at_5']:.2f} with English-only MiniLM" in readme


def test_the_fuzzed_readers_the_docs_count_are_the_suite_s():
    import ast

    tree = ast.parse((ROOT / "tests" / "faults" / "fuzzing.py").read_text(encoding="utf-8"))
    readers = next(n.value for n in ast.walk(tree) if isinstance(n, ast.AnnAssign) and n.target.id == "READERS")
    names = sorted(k.value for k in readers.keys)
    line = next(ln for ln in _text(ROOT / "docs" / "reliability.md").splitlines() if ln.startswith("| fuzz"))
    count, listed = re.search(r"each of (\d+) readers: ([^|]+)\|", line).groups()
    assert (int(count), sorted(n.strip() for n in listed.split(","))) == (len(names), names)
