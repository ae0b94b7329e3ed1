"""A tool-using agent: plan, call a tool, look at the result, go on or answer; with a step limit.

The loop is the whole idea. The model sees the tools, the task and the trace so far, and writes
one line: `Action: tool(argument)` or `Answer: ...`. The program runs the tool and appends its
result as an `Observation:`; after `max_steps` actions the run stops, answered or not. Every
step is kept in a visible trace.

Three real tools of this project: `legend` (a class's code and colour, from seg2sat/labels.py),
`shares` (the class shares of a tile's map), `search` (tiles matching a sentence, the tile
search of seg2sat/search/) over the labelled search scenes. The policy is SmolLM2-135M; a
keyword rule policy, written by hand, shows what the tools can do when the planning is right.
A 135M model follows the format only part of the time: the lesson reports its success rate on
`data/agent_tasks.json`, whatever it is.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from seg2sat.labels import BY_CODE, BY_NAME, NAMES, class_shares

TASKS_FILE = Path(__file__).parent / "data" / "agent_tasks.json"
LINE = re.compile(r"^\s*(Action|Answer)\s*:\s*(.*)$", re.IGNORECASE | re.MULTILINE)
CALL = re.compile(r"^\s*(\w+)\s*\(\s*[\"']?(.*?)[\"']?\s*\)")

SYSTEM = """You solve tasks with tools. Tools:
legend(class name) -> the class's code and colour in the map legend
shares(tile id) -> the share of each class in that tile
search(sentence) -> ids of the tiles that match the sentence
Write exactly one line: "Action: tool(argument)" to use a tool, or "Answer: ..." when you know.
Example.
Task: What colour is snow in the legend?
Action: legend(snow)
Observation: snow: code 14, colour #ffffff
Answer: #ffffff"""


class Tools:
    """The agent's tools over a set of tiles (ids -> code maps) and their search index."""

    def __init__(self, ids: list[str], maps: list[Any], index: Any = None) -> None:
        self.maps = dict(zip(ids, maps, strict=True))
        self.index = index

    def legend(self, arg: str) -> str:
        """A class's code and colour, by name or code."""
        key = arg.strip().lower()
        cls = BY_CODE.get(int(key)) if key.isdigit() else BY_NAME.get(key)
        if cls is None:
            close = [n for n in NAMES if key and (key in n or n in key)]
            if len(close) != 1:
                return f"unknown class {arg!r}; classes: {', '.join(NAMES)}"
            cls = BY_NAME[close[0]]
        return f"{cls.name}: code {cls.code}, colour {cls.hex}"

    def shares(self, arg: str) -> str:
        """The class shares of a tile's map, largest first."""
        tile = arg.strip()
        if tile not in self.maps:
            return f"unknown tile {tile!r}; e.g. {', '.join(list(self.maps)[:3])}"
        return ", ".join(f"{n} {round(100 * s)}%" for n, s in class_shares(self.maps[tile]).items())

    def search(self, arg: str) -> str:
        """The three tiles that best match a sentence."""
        if self.index is None:
            return "search is not available (no index)"
        return ", ".join(h.id for h in self.index.search_text(arg, k=3))

    def run(self, name: str, arg: str) -> str:
        """Call a tool by name; an unknown tool is an observation, not a crash."""
        tool = {"legend": self.legend, "shares": self.shares, "search": self.search}.get(name.lower())
        return tool(arg) if tool else f"unknown tool {name!r}; tools: legend, shares, search"


@dataclass
class Step:
    """One turn: what the policy wrote, what it meant, what came back."""

    output: str
    kind: str  # action | answer | unparsed
    tool: str = ""
    argument: str = ""
    observation: str = ""


@dataclass
class Run:
    """A task's whole trace."""

    task: str
    steps: list[Step] = field(default_factory=list)
    answer: str | None = None

    @property
    def finished(self) -> bool:
        """True when the policy answered within the step limit."""
        return self.answer is not None


def parse(output: str) -> Step:
    """The first `Action: tool(arg)` or `Answer: ...` line of the policy's output."""
    m = LINE.search(output)
    if not m:
        return Step(output, "unparsed")
    if m.group(1).lower() == "answer":
        return Step(output, "answer", argument=m.group(2).strip())
    call = CALL.match(m.group(2))
    if not call:
        return Step(output, "unparsed")
    return Step(output, "action", call.group(1), call.group(2))


Policy = Callable[[list[dict[str, str]]], str]


def run_agent(task: str, tools: Tools, policy: Policy, max_steps: int = 4) -> Run:
    """Plan -> act -> observe until an answer or `max_steps` turns (a hard limit)."""
    msgs = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": f"Task: {task}"}]
    run = Run(task)
    for _ in range(max_steps):
        # 1. Plan: the policy writes one line from the whole conversation.
        step = parse(policy(msgs))
        run.steps.append(step)
        msgs.append({"role": "assistant", "content": step.output.strip()})
        # 2. Act, or stop on an answer.
        if step.kind == "answer":
            run.answer = step.argument
            break
        step.observation = (tools.run(step.tool, step.argument) if step.kind == "action" else
                            'write one line: "Action: tool(argument)" or "Answer: ..."')
        if step.kind == "action" and any((s.tool, s.argument) == (step.tool, step.argument) for s in run.steps[:-1]):
            step.observation += " (you already called this: give the Answer now)"  # small models loop
        # 3. Observe: the result goes back into the context.
        msgs.append({"role": "user", "content": f"Observation: {step.observation}"})
    return run


def smollm_policy(max_new_tokens: int = 24) -> Policy:
    """SmolLM2-135M-Instruct, greedy: its next line given the conversation."""
    from seg2sat.course import llm

    return lambda msgs: llm.reply(msgs, max_new_tokens=max_new_tokens, temperature=0.0)


CHOICES = ("Action: legend(", "Action: shares(", "Action: search(", "Answer: ")


@torch.no_grad()
def _continue(msgs: list[dict[str, str]], prefix: str, max_new_tokens: int, stop: str) -> str:
    """Greedy continuation of the assistant's turn after `prefix`, cut at the first `stop` or newline."""
    from seg2sat.course import llm

    model, tok = llm.load_llm()
    ids = torch.tensor([llm.chat_context(msgs, tok)["ids"] + tok(prefix, add_special_tokens=False).input_ids])
    out, past, step_in = "", None, ids
    for _ in range(max_new_tokens):
        res = model(step_in, past_key_values=past, use_cache=True)
        past, nxt = res.past_key_values, int(res.logits[0, -1].argmax())
        piece = tok.decode([nxt])
        if nxt == tok.eos_token_id or "<|im_end|>" in piece:
            break
        out += piece
        if stop in out or "\n" in out:
            break
        step_in = torch.tensor([[nxt]])
    return out.split(stop)[0].split("\n")[0].strip()


def constrained_smollm_policy(max_new_tokens: int = 16) -> Policy:
    """SmolLM2 with constrained decoding: it picks the line start by likelihood, then writes the argument.

    As grammar-constrained decoders do, the four line starts are the only choices, so the format
    can no longer fail; whether the choice and the argument are right is still the model's.
    """
    from seg2sat.course.rag import option_logprobs

    def policy(msgs: list[dict[str, str]]) -> str:
        start = CHOICES[int(np.argmax(option_logprobs(msgs, list(CHOICES), prefix="")))]
        arg = _continue(msgs, start, max_new_tokens, ")" if start.startswith("Action") else "\n")
        return f"{start}{arg})" if start.startswith("Action") else f"{start}{arg}"

    return policy


def keyword_policy(msgs: list[dict[str, str]]) -> str:
    """A hand-written planner (no model): picks the tool from the task's words, answers with what it saw."""
    task = msgs[1]["content"].removeprefix("Task: ")
    last = msgs[-1]["content"]
    if last.startswith("Observation: "):
        seen = last.removeprefix("Observation: ")
        if "largest" in task:
            seen = seen.split(",")[0]
        return f"Answer: {seen.split(',')[0] if 'Find' in task else seen}"
    tile = re.search(r"tile (\S+?)\??$", task)
    if "largest" in task and tile:
        return f"Action: shares({tile.group(1)})"
    if task.lower().startswith("find"):
        return f"Action: search({task.removeprefix('Find ').rstrip('.')})"
    name = next((n for n in sorted(NAMES, key=len, reverse=True) if n in task.lower()), "")
    return f"Action: legend({name})"


def load_tasks(path: Path = TASKS_FILE) -> list[dict[str, Any]]:
    """[{"task", "expect"}]."""
    return json.loads(path.read_text(encoding="utf-8"))["tasks"]


def success(run: Run, expect: list[str]) -> bool:
    """Answered, and the answer holds one of the expected strings."""
    return run.answer is not None and any(e.lower() in run.answer.lower() for e in expect)


def evaluate(tasks: list[dict[str, Any]], tools: Tools, policy: Policy, max_steps: int = 4) -> dict[str, Any]:
    """Success rate, how often the policy answered at all, and every trace."""
    runs = [run_agent(t["task"], tools, policy, max_steps) for t in tasks]
    ok = [success(r, t["expect"]) for r, t in zip(runs, tasks, strict=True)]
    return {"success_rate": sum(ok) / len(ok), "answered": sum(r.finished for r in runs) / len(runs),
            "tool_calls": sum(s.kind == "action" for r in runs for s in r.steps),
            "unparsed": sum(s.kind == "unparsed" for r in runs for s in r.steps), "max_steps": max_steps,
            "runs": [{"task": r.task, "answer": r.answer, "success": o,
                      "trace": [s.__dict__ for s in r.steps]} for r, o in zip(runs, ok, strict=True)]}


def default_tools(encoder: Any = None) -> Tools:
    """The tools over the labelled search scenes (their index built with the multilingual encoder)."""
    from seg2sat.search.encoders import text_encoder
    from seg2sat.search.index import build_index
    from seg2sat.search.scenes import benchmark_scenes

    ids, maps, _ = benchmark_scenes()
    return Tools(ids, maps, build_index(ids, maps, encoder or text_encoder()))
