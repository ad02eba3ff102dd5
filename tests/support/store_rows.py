"""Rows for the stores' tests: a unit vector, a row of the vectors table."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime

import numpy as np

from entity_vectors.store import EmbeddingRow

T0 = datetime(2025, 1, 15, 12, 0, tzinfo=UTC)


def unit(*values: float) -> list[float]:
    """A normalised vector."""
    norm = sum(value * value for value in values) ** 0.5
    return [value / norm for value in values]


def row(
    entity_id: str,
    vector: Sequence[float] | np.ndarray,
    team_id: int = 1,
    embedding_version: int = 1,
    version: int = 1,
    timestamp: datetime = T0,
    text: str | None = None,
    name: str | None = None,
    deleted: int = 0,
    domain: str = "action",
) -> EmbeddingRow:
    """One row with sensible defaults; `version` is the row version, the latest wins."""
    return EmbeddingRow(
        domain=domain,
        team_id=team_id,
        id=entity_id,
        vector=[] if deleted else vector,
        text=text if text is not None else f"text of {entity_id}",
        properties=json.dumps({"name": name if name is not None else f"name {entity_id}"}),
        embedding_version=embedding_version,
        timestamp=timestamp,
        version=version,
        is_deleted=deleted,
    )
