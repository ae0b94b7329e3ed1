"""A CLIP BPE tokenizer built in memory (no download), sized for our captions."""

from __future__ import annotations

import re
from typing import Any


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable-character table (the BPE's base symbols)."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs), strict=True))


def _caption_words() -> list[str]:
    from seg2sat.labels import NAMES
    from seg2sat.prompts import DEPARTMENTS, STYLES

    text = " ".join([*NAMES, "aerial view of france in winter spring summer autumn",
                     *STYLES.values(), *DEPARTMENTS.values()]).lower()
    return sorted(set(re.findall(r"[a-zà-ÿ]+", text)))


def tiny_tokenizer() -> Any:
    """A CLIP BPE tokenizer built in memory, sized for captions.

    Byte symbols plus whole-word merges for the caption vocabulary (class names, "aerial view of", departments, styles), so a caption
    fits in 77 tokens; any other text still tokenizes, byte by byte.
    """
    from transformers import CLIPTokenizer

    symbols = list(bytes_to_unicode().values())
    vocab = {s: i for i, s in enumerate(symbols)}
    vocab.update({s + "</w>": len(symbols) + i for i, s in enumerate(symbols)})
    merges: list[tuple[str, str]] = []
    seen: set[tuple[str, str]] = set()
    byte_map = bytes_to_unicode()
    for word in _caption_words():
        chars = [byte_map[b] for b in word.encode("utf-8")]
        chars[-1] += "</w>"
        cur = chars[0]
        for c in chars[1:]:
            if (cur, c) not in seen:
                seen.add((cur, c))
                merges.append((cur, c))
            cur += c
            vocab.setdefault(cur, len(vocab))
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)
