"""A small GPT trained from scratch on a text, character by character (nanoGPT style).

The lesson: a language model is a next-token classifier. Tokens here are characters (the
vocabulary is the text's set of characters); the model is token + position embeddings, causal
self-attention blocks and a linear head; training minimises cross-entropy of the next
character. The loss falls from ln(vocab) (uniform guessing) as it learns spelling, then words.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

DEFAULT_CORPUS = Path(__file__).parent / "data" / "sonnets.txt"


@dataclass
class GPTConfig:
    """Model size: small enough to train in a minute on a laptop CPU."""

    vocab_size: int = 65
    block_size: int = 64
    n_layer: int = 2
    n_head: int = 4
    n_embd: int = 64
    dropout: float = 0.0


class CharTokenizer:
    """Characters <-> ids, built from a text."""

    def __init__(self, text: str) -> None:
        self.chars = sorted(set(text))
        self.stoi = {c: i for i, c in enumerate(self.chars)}

    def encode(self, s: str) -> list[int]:
        """Ids of the characters (unknown characters are an error)."""
        return [self.stoi[c] for c in s]

    def decode(self, ids: list[int]) -> str:
        """Characters of the ids."""
        return "".join(self.chars[i] for i in ids)


class Block(nn.Module):
    """Pre-norm transformer block: causal self-attention, then an MLP, each with a residual."""

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(cfg.n_embd), nn.LayerNorm(cfg.n_embd)
        self.qkv = nn.Linear(cfg.n_embd, 3 * cfg.n_embd)
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd)
        self.mlp = nn.Sequential(nn.Linear(cfg.n_embd, 4 * cfg.n_embd), nn.GELU(), nn.Linear(4 * cfg.n_embd, cfg.n_embd))
        self.n_head, self.dropout = cfg.n_head, cfg.dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, C) -> (B, T, C)."""
        b, t, c = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(c, dim=2)
        q, k, v = (z.view(b, t, self.n_head, c // self.n_head).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0)
        x = x + self.proj(y.transpose(1, 2).reshape(b, t, c))
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    """Token + position embeddings, blocks, final norm, head tied to the token embedding."""

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.tok = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.pos = nn.Embedding(cfg.block_size, cfg.n_embd)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln = nn.LayerNorm(cfg.n_embd)
        self.head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.head.weight = self.tok.weight
        self.apply(self._init)

    @staticmethod
    def _init(module: nn.Module) -> None:
        """GPT-2's init (std 0.02): the first predictions are near uniform, loss ~ ln(vocab)."""
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, 0.0, 0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits (B, T, vocab) and, with targets, the mean next-token cross-entropy."""
        t = idx.shape[1]
        x = self.tok(idx) + self.pos(torch.arange(t, device=idx.device))
        for block in self.blocks:
            x = block(x)
        logits = self.head(self.ln(x))
        loss = None if targets is None else F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))
        return logits, loss

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, n: int, temperature: float = 1.0, top_k: int = 0,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """Append `n` sampled tokens (with the course's own samplers)."""
        from seg2sat.course.sampling import next_token_distribution, sample

        for _ in range(n):
            logits, _ = self(idx[:, -self.cfg.block_size:])
            probs = next_token_distribution(logits[0, -1], temperature=temperature, top_k=top_k)
            idx = torch.cat([idx, sample(probs, generator)[None]], dim=1)
        return idx


@dataclass
class TrainLog:
    """Loss curve and samples along the way."""

    steps: list[int] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    samples: list[tuple[int, str]] = field(default_factory=list)
    seconds: float = 0.0
    uniform_loss: float = 0.0


def _batch(data: torch.Tensor, block: int, batch: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    ix = torch.randint(len(data) - block - 1, (batch,), generator=g)
    x = torch.stack([data[i:i + block] for i in ix])
    return x, torch.stack([data[i + 1:i + 1 + block] for i in ix])


def train_gpt(text: str | None = None, steps: int = 300, batch_size: int = 32, lr: float = 3e-3,
              cfg: GPTConfig | None = None, seed: int = 0, eval_every: int = 50, sample_chars: int = 120,
              progress: Callable[[int, float], None] | None = None) -> tuple[GPT, CharTokenizer, TrainLog]:
    """Train on `text` (default: the Sonnets) with a fixed seed; 90% train, 10% validation."""
    text = text if text is not None else DEFAULT_CORPUS.read_text(encoding="utf-8")
    if len(text) < 200:
        raise ValueError(f"the text has {len(text)} characters; give at least a few hundred")
    tok = CharTokenizer(text)
    data = torch.tensor(tok.encode(text), dtype=torch.long)
    split = int(0.9 * len(data))
    train, val = data[:split], data[split:]
    base = cfg or GPTConfig()
    cfg = GPTConfig(**{**base.__dict__, "vocab_size": len(tok.chars),
                       "block_size": min(base.block_size, len(val) - 2)})
    torch.manual_seed(seed)
    model = GPT(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    g = torch.Generator().manual_seed(seed)
    log = TrainLog(uniform_loss=math.log(cfg.vocab_size))
    t0 = time.perf_counter()
    for step in range(steps + 1):
        if step % eval_every == 0 or step == steps:
            model.eval()
            with torch.no_grad():
                losses = [model(*_batch(d, cfg.block_size, batch_size, torch.Generator().manual_seed(1)))[1].item()
                          for d in (train, val)]
            log.steps.append(step)
            log.train_loss.append(losses[0])
            log.val_loss.append(losses[1])
            start = torch.tensor([tok.encode(text[0])])
            out = model.generate(start, sample_chars, generator=torch.Generator().manual_seed(seed))
            log.samples.append((step, tok.decode(out[0].tolist())))
            model.train()
            if progress:
                progress(step, losses[1])
        if step == steps:
            break
        _, loss = model(*_batch(train, cfg.block_size, batch_size, g))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    log.seconds = time.perf_counter() - t0
    return model, tok, log
