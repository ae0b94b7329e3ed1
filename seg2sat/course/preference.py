"""Preference tuning with DPO: make the answers people prefer likelier than the ones they reject.

RLHF in one loss. Direct Preference Optimization (Rafailov et al., 2023) skips the reward model:
for a prompt x, a preferred answer y+ and a rejected one y-, it pushes up
    beta * [(log pi(y+|x) - log ref(y+|x)) - (log pi(y-|x) - log ref(y-|x))]
through -log sigmoid(.), where `ref` is a frozen copy of the starting model, so the policy moves
towards the preferred answers without drifting far from what it knew.

The lesson runs on the course's small character-level GPT (seg2sat/course/gpt.py), small enough
to do the whole thing in seconds on 2 CPU cores: first a supervised warm-up on the prompts
with *both* answers (the reference prefers neither), then DPO on pairs whose answers cite the
legend (code and colour) against vague ones. Pairs are built for every class of the legend from
hand-written templates (`data/preferences.json`); the pairs of a few classes are held out, and
the chosen-minus-rejected log-probability margin on them is what shows the preference learned.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from seg2sat.course.gpt import GPT, CharTokenizer, GPTConfig, train_gpt
from seg2sat.labels import CLASSES

PREFERENCES_FILE = Path(__file__).parent / "data" / "preferences.json"


@dataclass(frozen=True)
class Pair:
    """A prompt, the preferred answer and the rejected one."""

    prompt: str
    chosen: str
    rejected: str
    topic: str


def load_pairs(path: Path = PREFERENCES_FILE) -> tuple[list[Pair], list[Pair]]:
    """(train, held-out) pairs: every template filled for every legend class; held-out classes apart."""
    spec = json.loads(path.read_text(encoding="utf-8"))
    held = set(spec["held_out_classes"])
    train, test = [], []
    for c in CLASSES:
        fill = {"name": c.name, "code": c.code, "hex": c.hex}
        for t in spec["templates"]:
            pair = Pair(t["prompt"].format(**fill), t["chosen"].format(**fill), t["rejected"].format(**fill), c.name)
            (test if c.name in held else train).append(pair)
    return train, test


def sequence_logprob(model: GPT, tok: CharTokenizer, pairs: list[Pair], which: str) -> torch.Tensor:
    """Sum of log pi(answer | prompt) over the answer's characters, one value per pair."""
    texts = [p.prompt + getattr(p, which) for p in pairs]
    starts = [len(p.prompt) for p in pairs]
    width = max(len(t) for t in texts)
    if width > model.cfg.block_size:
        raise ValueError(f"a prompt + answer has {width} characters; the model's block is {model.cfg.block_size}")
    ids = torch.zeros((len(texts), width), dtype=torch.long)
    for i, t in enumerate(texts):
        ids[i, : len(t)] = torch.tensor(tok.encode(t))
    logits, _ = model(ids[:, :-1])
    logp = torch.log_softmax(logits, -1).gather(-1, ids[:, 1:, None])[..., 0]
    mask = torch.zeros_like(logp)
    for i, (t, s) in enumerate(zip(texts, starts, strict=True)):
        mask[i, s - 1: len(t) - 1] = 1  # position j predicts character j + 1: answer chars only
    return (logp * mask).sum(1)


@torch.no_grad()
def margins(model: GPT, tok: CharTokenizer, pairs: list[Pair]) -> torch.Tensor:
    """Log pi(chosen) - log pi(rejected) per pair (positive: the model prefers the chosen answer)."""
    model.eval()
    return sequence_logprob(model, tok, pairs, "chosen") - sequence_logprob(model, tok, pairs, "rejected")


def dpo_loss(policy: GPT, ref: GPT, tok: CharTokenizer, pairs: list[Pair], beta: float) -> torch.Tensor:
    """-log sigmoid(beta * (policy margin - reference margin)), averaged over the pairs."""
    with torch.no_grad():
        ref_margin = margins(ref, tok, pairs)
    policy.train()
    pol_margin = sequence_logprob(policy, tok, pairs, "chosen") - sequence_logprob(policy, tok, pairs, "rejected")
    return -F.logsigmoid(beta * (pol_margin - ref_margin)).mean()


@dataclass
class DPOLog:
    """Held-out and training margins along the way."""

    steps: list[int] = field(default_factory=list)
    heldout_margin: list[float] = field(default_factory=list)
    train_margin: list[float] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    seconds: float = 0.0


def warm_up(pairs: list[Pair], steps: int = 150, seed: int = 0) -> tuple[GPT, CharTokenizer]:
    """The reference: a small GPT trained on the prompts with both answers, repeated (no preference)."""
    text = "\n".join(p.prompt + a for p in pairs for a in (p.chosen, p.rejected)) + "\n"
    model, tok, _ = train_gpt(text * 4, steps=steps, batch_size=16, seed=seed, eval_every=max(1, steps),
                              sample_chars=1, cfg=GPTConfig(block_size=128, n_layer=1, n_head=4, n_embd=64))
    return model, tok


def train_dpo(train: list[Pair], heldout: list[Pair], warmup_steps: int = 150, steps: int = 60,
              beta: float = 0.1, lr: float = 1e-3, batch_size: int = 8, seed: int = 0, eval_every: int = 10,
              progress: Callable[[int, float], None] | None = None) -> tuple[GPT, CharTokenizer, DPOLog]:
    """Warm up a reference, then DPO a copy on `train`; log the margins on `heldout` as it goes."""
    ref, tok = warm_up(train + heldout, warmup_steps, seed)
    ref.eval()
    policy = copy.deepcopy(ref)
    opt = torch.optim.AdamW(policy.parameters(), lr=lr, weight_decay=0.0)
    g = torch.Generator().manual_seed(seed)
    log = DPOLog()
    t0 = time.perf_counter()
    for step in range(steps + 1):
        if step % eval_every == 0 or step == steps:
            log.steps.append(step)
            log.heldout_margin.append(float(margins(policy, tok, heldout).mean()))
            log.train_margin.append(float(margins(policy, tok, train).mean()))
            if progress:
                progress(step, log.heldout_margin[-1])
        if step == steps:
            break
        batch = [train[i] for i in torch.randperm(len(train), generator=g)[:batch_size].tolist()]
        loss = dpo_loss(policy, ref, tok, batch, beta)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
        opt.step()
        log.loss.append(float(loss.detach()))
    log.seconds = time.perf_counter() - t0
    return policy, tok, log


def summary(log: DPOLog) -> dict[str, Any]:
    """The figures the lesson prints."""
    return {"steps": log.steps, "heldout_margin": [round(m, 2) for m in log.heldout_margin],
            "train_margin": [round(m, 2) for m in log.train_margin],
            "heldout_gain": round(log.heldout_margin[-1] - log.heldout_margin[0], 2), "seconds": round(log.seconds, 1)}
