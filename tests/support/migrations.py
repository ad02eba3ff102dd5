"""Helpers of the model-migration tests: the command as a person runs it, what search and ClickHouse show."""

from __future__ import annotations

from typing import Any

from entity_vectors.store import EmbeddingStore, StoredRow
from tests.conftest import run_command

QUERY = "signed up for a paid plan"


def migrate(*args: str) -> str:
    """Run the command with command-line arguments; its stdout."""
    out, _ = run_command("migrate_embeddings", *args)
    return out


def dimensions(hits: list[Any]) -> set[int]:
    """The vector sizes the hits were written with (their provenance)."""
    return {int(hit.properties["_vectorized_by"]["dimensions"]) for hit in hits}


def rows_at(store: EmbeddingStore, version: int) -> dict[str, StoredRow]:
    """The latest row of every action key at one embedding version, by entity id."""
    return {row.id: row for row in store.latest_rows("action") if row.embedding_version == version}
