"""Retrieval-augmented generation: a small model answers from passages of this project's docs.

A 135M-parameter model knows nothing about Seg2Sat; asked "how many classes has the FLAIR
legend?" it guesses. RAG gives it the answer to copy: split the docs (README.md, docs/*.md)
into short passages under their headings, embed them once with a sentence model
(all-MiniLM-L6-v2), embed the question the same way, put the k nearest passages in the prompt,
and let SmolLM2 answer *from them*. The lesson scores both ways on a small question set
(`data/rag_questions.json`: each question, its answer and three wrong ones): the model is right
when the true answer is its likeliest continuation. Free-form answers are shown too; a 135M model
often garbles what it reads, which is the other half of the lesson.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from seg2sat.errors import DatasetError

QUESTIONS_FILE = Path(__file__).parent / "data" / "rag_questions.json"
SYSTEM = "Answer the question in one short sentence, using only the context. Copy names and numbers exactly."
NO_CONTEXT_SYSTEM = "Answer the question in one short sentence."


def docs_root() -> Path:
    """The checkout's root (README.md and docs/ live there, not in the installed package)."""
    return Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Passage:
    """A few sentences of one section of one document."""

    source: str
    title: str
    text: str

    def render(self) -> str:
        """How the passage appears in the prompt."""
        return f"({self.source}, {self.title}) {self.text}"


def split_markdown(text: str, source: str, max_words: int = 80) -> list[Passage]:
    """Sections by heading (outside code blocks), each cut into passages of at most `max_words` words."""
    passages, title, lines = [], source, []

    def flush() -> None:
        words = " ".join(lines).split()
        for i in range(0, len(words), max_words):
            passages.append(Passage(source, title, " ".join(words[i: i + max_words])))

    in_code = False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            in_code = not in_code  # a "# comment" inside a code block is not a heading
        heading = None if in_code else re.match(r"^#{1,4}\s+(.*)", line)
        if heading:
            flush()
            title, lines = heading.group(1).strip(), []
        else:
            lines.append(line.strip())
    flush()
    return [p for p in passages if len(p.text.split()) >= 5]


def load_passages(paths: list[Path] | None = None, max_words: int = 80) -> list[Passage]:
    """Passages of README.md and docs/*.md (or the given files).

    docs/course.md is left out: it reports this lesson's own questions and answers, and
    retrieving them would be reading the answer key.
    """
    root = docs_root()
    paths = paths or [root / "README.md", *sorted(p for p in (root / "docs").glob("*.md") if p.name != "course.md")]
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise DatasetError(f"RAG: documents not found: {', '.join(missing)} (the lesson reads the checkout's docs)")
    return [p for path in paths for p in split_markdown(path.read_text(encoding="utf-8"),
                                                       str(path.relative_to(root) if path.is_relative_to(root)
                                                           else path.name), max_words)]


class Retriever:
    """Passages embedded once; the k nearest to a question by cosine."""

    def __init__(self, passages: list[Passage], model: Any = None) -> None:
        from seg2sat.course.embeddings import embed

        if not passages:
            raise DatasetError("RAG: no passages to retrieve from")
        self.passages, self.model = passages, model
        self.vectors = embed([f"{p.title}. {p.text}" for p in passages], model)

    def top(self, question: str, k: int = 3) -> list[tuple[Passage, float]]:
        """The k passages closest to the question, best first."""
        from seg2sat.course.embeddings import embed

        scores = self.vectors @ embed([question], self.model)[0]
        order = np.argsort(-scores, kind="stable")[:k]
        return [(self.passages[i], float(scores[i])) for i in order]


def build_messages(question: str, passages: list[Passage] | None) -> list[dict[str, str]]:
    """The chat: with passages, a context block then the question; without, the question alone."""
    if not passages:
        return [{"role": "system", "content": NO_CONTEXT_SYSTEM}, {"role": "user", "content": question}]
    context = "\n".join(f"[{i + 1}] {p.render()}" for i, p in enumerate(passages))
    return [{"role": "system", "content": SYSTEM},
            {"role": "user", "content": f"Context:\n{context}\n\nQuestion: {question}"}]


def answer(question: str, retriever: Retriever | None, k: int = 2, max_new_tokens: int = 32) -> dict[str, Any]:
    """SmolLM2's greedy answer, from the k retrieved passages (or from nothing when no retriever)."""
    from seg2sat.course import llm

    hits = retriever.top(question, k) if retriever else []
    msgs = build_messages(question, [p for p, _ in hits])
    text = llm.reply(msgs, max_new_tokens=max_new_tokens, temperature=0.0)
    return {"question": question, "answer": text.strip(), "passages": [(p.render(), s) for p, s in hits],
            "context_tokens": llm.chat_context(msgs)["count"]}


def load_questions(path: Path = QUESTIONS_FILE) -> list[dict[str, Any]]:
    """[{"question", "answer", "distractors"}]: the right answer and three wrong ones."""
    return json.loads(path.read_text(encoding="utf-8"))["questions"]


def _norm(s: str) -> str:
    s = re.sub(r"(?<=\d)[, ](?=\d{3}\b)", "", s.lower())  # 2,000 and 2 000 are 2000
    return re.sub(r"[\s,`*]+", " ", s).strip()


def has_fact(text: str, fact: str) -> bool:
    """True when the text contains the fact (case, commas and backticks ignored)."""
    return _norm(fact) in _norm(text)


@torch.no_grad()
def option_logprobs(msgs: list[dict[str, str]], options: list[str], prefix: str = "The answer is ") -> list[float]:
    """Mean log-probability per token of each option as the start of the model's answer.

    All options go through the model in one padded batch: the prompt, then `prefix + option`;
    only the option's own tokens are scored (mean, so that long options are not penalised).
    """
    from seg2sat.course import llm

    model, tok = llm.load_llm()
    ctx = llm.chat_context(msgs, tok)["ids"] + tok(prefix, add_special_tokens=False).input_ids
    opts = [tok(o, add_special_tokens=False).input_ids for o in options]
    width = len(ctx) + max(len(o) for o in opts)
    ids = torch.full((len(opts), width), tok.pad_token_id or 0)
    mask = torch.zeros_like(ids)
    for i, o in enumerate(opts):
        ids[i, : len(ctx) + len(o)] = torch.tensor(ctx + o)
        mask[i, : len(ctx) + len(o)] = 1
    logp = torch.log_softmax(model(ids, attention_mask=mask).logits.float(), -1)
    out = []
    for i, o in enumerate(opts):
        pos = torch.arange(len(ctx) - 1, len(ctx) - 1 + len(o))  # logits at t predict token t + 1
        out.append(float(logp[i, pos, torch.tensor(o)].mean()))
    return out


def evaluate(questions: list[dict[str, Any]], retriever: Retriever, k: int = 2,
             generate: bool = False, max_new_tokens: int = 32) -> dict[str, Any]:
    """Score RAG against no retrieval on the same questions.

    The score is multiple choice: the model is right when, of the four options, the right one
    is the likeliest start of its answer (chance: 0.25). `retrieval_hit_rate` says how often the
    retrieved passages held the answer at all; with `generate`, free answers are also produced
    and checked for the fact (a stricter test that a 135M model mostly fails).
    """
    rows = []
    for q in questions:
        options = [q["answer"], *q["distractors"]]
        hits = retriever.top(q["question"], k)
        row = {"question": q["question"], "answer": q["answer"],
               "retrieved_fact": any(has_fact(p.text, q["answer"]) for p, _ in hits)}
        for name, passages in (("rag", [p for p, _ in hits]), ("plain", None)):
            lp = option_logprobs(build_messages(q["question"], passages), options)
            row[f"{name}_choice"] = options[int(np.argmax(lp))]
            row[f"{name}_correct"] = row[f"{name}_choice"] == q["answer"]
            row[f"{name}_margin"] = lp[0] - max(lp[1:])
            if generate:
                from seg2sat.course import llm

                text = llm.reply(build_messages(q["question"], passages), max_new_tokens=max_new_tokens,
                                 temperature=0.0)
                row[f"{name}_answer"], row[f"{name}_answer_has_fact"] = text.strip(), has_fact(text, q["answer"])
        rows.append(row)
    n = len(rows)
    out = {"k": k, "questions": n, "chance": 1 / (1 + len(questions[0]["distractors"])), "rows": rows}
    for key in ("rag_correct", "plain_correct", "retrieved_fact") + (
            ("rag_answer_has_fact", "plain_answer_has_fact") if generate else ()):
        out[key.replace("_correct", "_score")] = sum(r[key] for r in rows) / n
    out["rag_mean_margin"] = float(np.mean([r["rag_margin"] for r in rows]))
    out["plain_mean_margin"] = float(np.mean([r["plain_margin"] for r in rows]))
    return out
