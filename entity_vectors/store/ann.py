"""Which groups a store searches through its HNSW index, and copying a group there.

A group is one team's rows of one domain at one embedding version. A group that reaches
ENTITY_VECTORS_APPROXIMATE_SEARCH_MIN_ROWS rows is copied, on its first vector search, into the
approximate-search tables (`schema.Schema.create_index_tables`), which materialized views keep
current from then on. `SqlEmbeddingStore` mixes this in; its search decides with `_indexed`.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from typing import Any

import structlog

from entity_vectors import conf
from entity_vectors.store.schema import Schema, settings_clause
from entity_vectors.store.sql import (
    COPY_GROUP_ROWS,
    COPY_GROUP_TOMBSTONES,
    GROUP_ROWS,
    GROUP_STATE,
    INDEX_TABLES,
    INDEXED_GROUPS,
)

log = structlog.get_logger("entity_vectors")

Group = tuple[int, str, int]  # (team_id, domain, embedding_version)

# How long a process trusts what it read about the index groups and the group sizes. A group
# made ready by another process is used after at most this long (it is searched exactly until
# then); a group that grows past the threshold is noticed as late.
INDEX_STATE_SECONDS = 30.0


def group_params(domain: str, team_id: int, embedding_version: int) -> dict[str, Any]:
    """The query parameters naming one group."""
    return {"team_id": team_id, "domain": domain, "version": embedding_version}


class ApproximateIndex(ABC):
    """The index bookkeeping of a SQL store; the store runs the statements (`SqlEmbeddingStore`
    implements the four methods below)."""

    table: str
    schema: Schema

    @abstractmethod
    def _sql(self, template: str, dimensions: int = 0) -> str:
        """A SQL template with the layout's table names (and the vector size) filled in."""

    @abstractmethod
    def _select(
        self,
        template: str,
        params: dict[str, Any],
        dimensions: int = 0,
        settings: dict[str, str] | None = None,
    ) -> list[tuple[Any, ...]]:
        """Run a read template with the layout's read settings."""

    @abstractmethod
    def _command(self, sql: str, params: dict[str, Any] | None = None) -> None:
        """Run a statement that returns nothing."""

    @abstractmethod
    def _query(self, sql: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        """Run a query with server-side parameters; rows as tuples."""

    def _forget_index_state(self) -> None:
        # What this process read about the index groups and group sizes, with when it read it.
        self._indexed_groups: dict[Group, int] = {}
        self._indexed_read_at = -INDEX_STATE_SECONDS
        self._group_sizes: dict[Group, tuple[int, float]] = {}

    def _indexed(self, group: Group, dimensions: int) -> bool:
        """Whether `group` is searched through the index; copies it there once it is large enough."""
        threshold = conf.approximate_search_min_rows()
        if not threshold or not dimensions:
            return False
        ready = self._ready_groups()
        if group in ready:
            return ready[group] == dimensions
        if self._group_rows(group) < threshold:
            return False
        self._index_group(group, dimensions)
        return True

    def _ready_groups(self) -> dict[Group, int]:
        """Groups whose rows are in the index, with their vector size (re-read every few seconds)."""
        if time.monotonic() - self._indexed_read_at < INDEX_STATE_SECONDS:
            return self._indexed_groups
        exists = self._query(INDEX_TABLES, {"name": self.schema.names["{groups}"]})
        rows = self._select(INDEXED_GROUPS, {}) if exists else []
        self._indexed_groups = {
            (int(team), str(domain), int(version)): int(dimensions)
            for team, domain, version, dimensions, ready in rows
            if int(ready)
        }
        self._indexed_read_at = time.monotonic()
        return self._indexed_groups

    def _group_rows(self, group: Group) -> int:
        """Physical rows of a group (tombstones and superseded rows included), re-counted every few seconds."""
        counted = self._group_sizes.get(group)
        if counted is not None and time.monotonic() - counted[1] < INDEX_STATE_SECONDS:
            return counted[0]
        team_id, domain, version = group
        rows = int(self._select(GROUP_ROWS, group_params(domain, team_id, version))[0][0])
        self._group_sizes[group] = (rows, time.monotonic())
        return rows

    def _index_group(self, group: Group, dimensions: int) -> None:
        """Copy a group into the index tables and mark it ready; its HNSW index builds in the background.

        The group is registered before the copy, so every row inserted from then on reaches the
        index tables through their materialized views, and rows inserted before are copied: no
        row falls between the two. Marked ready only after the copy; a copy cut short is redone
        by the next search (the copies are replaced by key on merge).
        """
        team_id, domain, version = group
        began = time.monotonic()
        params = group_params(domain, team_id, version) | {"dimensions": dimensions}
        for statement in self.schema.create_index_tables(dimensions):
            self._command(statement)
        inserts = settings_clause(self.schema.insert_settings)
        self._command(self._sql(GROUP_STATE) + inserts, params | {"ready": 0})
        self._command(self._sql(COPY_GROUP_ROWS, dimensions) + inserts, params)
        self._command(self._sql(COPY_GROUP_TOMBSTONES) + inserts, params)
        self._command(self._sql(GROUP_STATE) + inserts, params | {"ready": 1})
        self._command(self.schema.materialize_index(dimensions), params)
        self._indexed_groups[group] = dimensions
        log.info(
            "store.group_indexed",
            table=self.table,
            team_id=team_id,
            domain=domain,
            embedding_version=version,
            dimensions=dimensions,
            seconds=round(time.monotonic() - began, 2),
        )
