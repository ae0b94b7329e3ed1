"""How a model picks the next token: temperature, top-k, top-p, written plainly (the lesson).

All functions take raw logits (a 1-D tensor over the vocabulary) and return probabilities or
sampled ids; a `torch.Generator` makes every draw reproducible.
"""

from __future__ import annotations

import torch

# A toy next-token distribution over landscape words: what the lesson and the app's Sampling tab reshape.
TOY_WORDS = ("fields", "forest", "river", "village", "road", "vineyard", "lake", "snow")
TOY_LOGITS = (3.0, 2.5, 2.0, 1.5, 1.0, 0.5, 0.0, -1.0)


def softmax_with_temperature(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """p_i = exp(z_i / T) / sum_j exp(z_j / T). T -> 0 is greedy, T = 1 the model, T > 1 flatter."""
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if temperature == 0:  # greedy: all mass on the argmax
        probs = torch.zeros_like(logits, dtype=torch.float64)
        probs[int(torch.argmax(logits))] = 1.0
        return probs
    z = logits.double() / temperature
    z = z - z.max()  # the same distribution, without overflow
    e = torch.exp(z)
    return e / e.sum()


def top_k_filter(probs: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the k most likely tokens, renormalised; k <= 0 keeps everything."""
    if k <= 0 or k >= probs.numel():
        return probs
    kth = torch.topk(probs, k).values[-1]
    kept = torch.where(probs >= kth, probs, torch.zeros_like(probs))
    # ties at the threshold could keep more than k: keep the first k by rank
    if int((kept > 0).sum()) > k:
        order = torch.argsort(probs, descending=True)
        kept = torch.zeros_like(probs)
        kept[order[:k]] = probs[order[:k]]
    return kept / kept.sum()


def top_p_filter(probs: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus: the smallest set of most likely tokens whose mass reaches p, renormalised."""
    if not 0 < p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {p}")
    order = torch.argsort(probs, descending=True)
    sorted_p = probs[order]
    cum = torch.cumsum(sorted_p, 0)
    before = torch.cat([cum.new_zeros(1), cum[:-1]])  # mass of the tokens ranked above
    keep_sorted = before < p  # the first token is always kept
    kept = torch.zeros_like(probs)
    kept[order[keep_sorted]] = sorted_p[keep_sorted]
    return kept / kept.sum()


def next_token_distribution(logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0,
                            top_p: float = 1.0) -> torch.Tensor:
    """Temperature, then top-k, then top-p (the order transformers' generate uses)."""
    probs = softmax_with_temperature(logits, temperature)
    probs = top_k_filter(probs, top_k)
    return top_p_filter(probs, top_p) if top_p < 1 else probs


def sample(probs: torch.Tensor, generator: torch.Generator | None = None, n: int = 1) -> torch.Tensor:
    """Draw `n` token ids from a distribution (with replacement)."""
    return torch.multinomial(probs.float(), n, replacement=True, generator=generator)


def toy_example(temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, n: int = 8,
                seed: int = 0) -> tuple[torch.Tensor, list[str]]:
    """The toy distribution (`TOY_LOGITS`) reshaped by the settings, and `n` words drawn from it."""
    probs = next_token_distribution(torch.tensor(TOY_LOGITS), temperature=temperature, top_k=top_k, top_p=top_p)
    draws = sample(probs, torch.Generator().manual_seed(seed), n=n)
    return probs, [TOY_WORDS[i] for i in draws.tolist()]


def probability_table(logits: torch.Tensor, decode: callable, settings: list[dict], top: int = 10) -> list[dict]:
    """The most likely tokens under the model and under each setting (for display)."""
    base = softmax_with_temperature(logits, 1.0)
    ids = torch.topk(base, min(top, base.numel())).indices.tolist()
    dists = [next_token_distribution(logits, **s) for s in settings]
    return [{"token": decode(i), "id": i, "model": float(base[i]),
             **{_label(s): float(d[i]) for s, d in zip(settings, dists, strict=True)}} for i in ids]


def _label(s: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in s.items())
