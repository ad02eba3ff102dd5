"""Deterministic offline providers: the `template` summarizer and the `hashing` embedder."""

from __future__ import annotations

import hashlib
import itertools
import math
import re
from collections.abc import Sequence

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


def _bucket(feature: str, dimensions: int) -> tuple[int, float]:
    digest = int.from_bytes(hashlib.blake2b(feature.encode("utf-8"), digest_size=8).digest(), "big")
    sign = 1.0 if digest >> 63 else -1.0
    return digest % dimensions, sign


def hashing_vector(text: str, dimensions: int) -> list[float]:
    """An L2-normalised feature-hashing vector of the text's words and word pairs."""
    vector = [0.0] * dimensions
    words = _words(text)
    features: list[tuple[str, float]] = [(word, 1.0) for word in words]
    features += [(f"{first} {second}", 0.5) for first, second in itertools.pairwise(words)]
    for feature, weight in features:
        index, sign = _bucket(feature, dimensions)
        vector[index] += sign * weight
    norm = math.sqrt(sum(value * value for value in vector))
    if norm == 0.0:
        # No words at all: a fixed unit vector keeps cosine distance defined.
        index, _ = _bucket("", dimensions)
        vector[index] = 1.0
        return vector
    return [value / norm for value in vector]


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

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """One vector per text."""
        return [hashing_vector(text, self._dimensions) for text in texts]
