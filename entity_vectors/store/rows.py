"""The values that go into and come out of a store."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np


@dataclass(frozen=True)
class EmbeddingRow:
    """One row of the vectors table: a live vector or a tombstone (`is_deleted=1`, no vector)."""

    domain: str
    team_id: int
    id: str
    vector: Sequence[float] | np.ndarray[Any, Any]
    text: str
    properties: str
    embedding_version: int
    timestamp: datetime
    version: int
    is_deleted: int = 0


@dataclass(frozen=True)
class EntityHit:
    """One search result, best first. `distance` is 0 at best and rises with the rank in every
    mode: the cosine distance (`vector`), 1 - the BM25 score over the best the query allows
    (`text`: 0 for a whole-name match), or 1 - the fused score / its best possible value
    (`hybrid`)."""

    id: str
    team_id: int
    domain: str
    text: str
    properties: dict[str, Any] = field(default_factory=dict)
    distance: float = 0.0


@dataclass(frozen=True)
class StoredRow:
    """The latest row of one key, as tests and the status command see it."""

    team_id: int
    domain: str
    id: str
    embedding_version: int
    text: str
    properties: dict[str, Any]
    vector: list[float]
    timestamp: datetime
    version: int
    is_deleted: bool


VectorKey = tuple[int, str, int]  # (team_id, id, embedding_version)


def chunked(rows: Iterable[EmbeddingRow], size: int) -> Iterable[list[EmbeddingRow]]:
    """Split rows into lists of at most `size`."""
    chunk: list[EmbeddingRow] = []
    for row in rows:
        chunk.append(row)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
