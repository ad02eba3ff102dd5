"""Deterministic offline providers: the `template` summarizer and the `hashing` embedder."""

from __future__ import annotations

import hashlib
import itertools
import re
from collections.abc import Sequence
from functools import lru_cache

import numpy as np

from entity_vectors.providers.base import Embeddings
from entity_vectors.providers.text import truncate_to_tokens

# Letters and digits only: `$pageview`, `signed_up` and `/signup` split into their words.
_WORD = re.compile(r"[^\W_]+", re.UNICODE)
_STOPWORDS = frozenset(
    [
        "a",
        "an",
        "and",
        "are",
        "as",
        "at",
        "be",
        "by",
        "for",
        "from",
        "has",
        "have",
        "in",
        "is",
        "it",
        "its",
        "of",
        "on",
        "or",
        "that",
        "the",
        "their",
        "this",
        "to",
        "was",
        "were",
        "which",
        "who",
        "whom",
        "with",
    ]
)


class TemplateSummarizer:
    """Returns the config's own description as the summary: no model, no request."""

    def __init__(self, max_input_tokens: int) -> None:
        self._max_input_tokens = max_input_tokens

    @property
    def identity(self) -> str:
        """Recorded with every summary it writes."""
        return "template"

    async def summarize(self, texts: Sequence[str], system_prompt: str) -> list[str | BaseException]:
        """The (truncated) description itself, one per input."""
        results: list[str | BaseException] = []
        for text in texts:
            cleaned = " ".join(text.split())
            if cleaned:
                results.append(truncate_to_tokens(cleaned, self._max_input_tokens))
            else:
                results.append(ValueError("nothing to summarize: the entity's description is empty"))
        return results


def _normalise(word: str) -> str:
    # A light plural fold so that "users" meets "user"; no dictionary, no model.
    if len(word) > 3 and word.endswith("s") and not word.endswith("ss"):
        return word[:-1]
    return word


def _words(text: str) -> list[str]:
    return [_normalise(word) for word in _WORD.findall(text.lower()) if word not in _STOPWORDS]


@lru_cache(maxsize=65536)
def _bucket(feature: str, dimensions: int) -> tuple[int, float]:
    digest = int.from_bytes(hashlib.blake2b(feature.encode("utf-8"), digest_size=8).digest(), "big")
    return digest % dimensions, (1.0 if digest >> 63 else -1.0)


def hashing_vectors(texts: Sequence[str], dimensions: int) -> np.ndarray:
    """One L2-normalised feature-hashing vector (float32) per text, of its words and word pairs.

    The features are hashed in Python; the sums and the normalisation run once for all texts.
    """
    rows: list[int] = []
    indexes: list[int] = []
    weights: list[float] = []
    for row, text in enumerate(texts):
        words = _words(text)
        for word in words:
            index, sign = _bucket(word, dimensions)
            rows.append(row)
            indexes.append(index)
            weights.append(sign)
        for first, second in itertools.pairwise(words):
            index, sign = _bucket(f"{first} {second}", dimensions)
            rows.append(row)
            indexes.append(index)
            weights.append(0.5 * sign)
    cells = np.asarray(rows, dtype=np.int64) * dimensions + np.asarray(indexes, dtype=np.int64)
    sums = np.bincount(
        cells, weights=np.asarray(weights, dtype=np.float64), minlength=len(texts) * dimensions
    )
    vectors = sums.astype(np.float32).reshape(len(texts), dimensions)
    norms = np.linalg.norm(vectors, axis=1)
    empty = norms == 0.0
    if empty.any():
        # No words at all (or features that cancel out): a fixed unit vector keeps cosine distance defined.
        vectors[empty, _bucket("", dimensions)[0]] = 1.0
        norms[empty] = 1.0
    vectors /= norms[:, np.newaxis]
    return vectors


class HashingEmbedder:
    """Lexical, offline, fast: texts that share words land close together."""

    def __init__(self, dimensions: int) -> None:
        self._dimensions = dimensions

    @property
    def identity(self) -> str:
        """Recorded with every vector it makes."""
        return "hashing"

    @property
    def dimensions(self) -> int:
        """The vector length."""
        return self._dimensions

    async def embed(self, texts: Sequence[str]) -> Embeddings:
        """One vector per text."""
        return Embeddings(vectors=hashing_vectors(texts, self._dimensions))
