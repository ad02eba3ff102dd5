"""The store interface and the SQL both stores run: one table, the latest row per key wins.

A key is (team_id, domain, embedding_version, id); its latest row is the one with the highest
`version` (a number from the Django database's counter, never a clock). Reads choose the latest
row per key first and only then look at `is_deleted`, so an older live row never wins over a
newer tombstone before ClickHouse has merged them.
"""

from __future__ import annotations

import copy
import json
from abc import ABC, abstractmethod
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Protocol, runtime_checkable

import numpy as np

from entity_vectors.store.rowbinary import COLUMNS, row_binary
from entity_vectors.store.rows import EmbeddingRow, EntityHit, StoredRow, VectorKey, chunked
from entity_vectors.store.sql import (
    COUNT_ROWS,
    CREATE_TABLE,
    HYBRID_SEARCH,
    LATEST_ROWS,
    LIVE_KEYS_PAGE,
    MAX_VERSION,
    MIGRATE_COPY,
    SEARCH,
    STRUCTURE,
    TABLE_COLUMNS,
    TEXT_SEARCH,
    VECTORS,
)


@runtime_checkable
class EmbeddingStore(Protocol):
    """Where vectors live: the embedded engine or a ClickHouse server, same SQL."""

    table: str

    def ensure_schema(self) -> int:
        """Create or migrate the table (idempotent); returns the highest version of migrated rows."""
        ...

    def insert(self, rows: Sequence[EmbeddingRow]) -> int:
        """Insert rows in one statement; returns how many."""
        ...

    def search(
        self, domain: str, team_id: int, vector: Sequence[float], limit: int, embedding_version: int
    ) -> list[EntityHit]:
        """Nearest live rows of one team, domain and version."""
        ...

    def text_search(
        self, domain: str, team_id: int, query: str, limit: int, embedding_version: int
    ) -> list[EntityHit]:
        """Live rows of one team ranked by how much of the query their name and text contain."""
        ...

    def hybrid_search(
        self,
        domain: str,
        team_id: int,
        vector: Sequence[float],
        query: str,
        limit: int,
        embedding_version: int,
    ) -> list[EntityHit]:
        """Live rows of one team ranked by the fusion of the vector and text rankings."""
        ...

    def vectors(
        self, domain: str, keys: Sequence[VectorKey]
    ) -> dict[VectorKey, tuple[np.ndarray[Any, Any], int]]:
        """The latest live vector of each key that has one, with its row version."""
        ...

    def live_keys_page(self, domain: str, after: VectorKey | None, limit: int) -> list[VectorKey]:
        """Live keys of a domain in key order, after `after` (a page of the reconcile sweep)."""
        ...

    def latest_rows(self, domain: str) -> list[StoredRow]:
        """The latest row of every key of a domain, tombstones included."""
        ...

    def count_rows(self, domain: str) -> int:
        """Physical rows of a domain (before merges), for diagnostics."""
        ...

    def truncate(self) -> None:
        """Delete every row (tests and resets only)."""
        ...

    def close(self) -> None:
        """Release the connection."""
        ...


class SqlEmbeddingStore(ABC):
    """The shared SQL; subclasses only execute statements."""

    def __init__(self, table: str) -> None:
        self.table = table
        self._schema_ready = False
        self.migrated_max_version = 0
        # A sibling made by `for_table` shares its connection with the store that made it.
        self._borrowed = False

    def for_table(self, table: str) -> SqlEmbeddingStore:
        """The same connection, another table (chdb allows one session per process and directory)."""
        sibling = copy.copy(self)
        sibling.table = table
        sibling._schema_ready = False
        sibling.migrated_max_version = 0
        sibling._borrowed = True
        return sibling

    def _sql(self, template: str) -> str:
        # Not str.format: the templates also hold {name:Type} query parameters.
        return template.replace("{table}", self.table)

    @abstractmethod
    def _command(self, sql: str, params: dict[str, Any] | None = None) -> None:
        """Run a statement that returns nothing."""

    @abstractmethod
    def _query(self, sql: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        """Run a query with server-side `{name:Type}` parameters; rows as tuples."""

    @abstractmethod
    def _insert_row_binary(self, data: bytes) -> None:
        """Insert RowBinary data (COLUMNS order) into the table in one statement."""

    def ensure_schema(self) -> int:
        """Create the table, or migrate one made by the first release (idempotent, once per object)."""
        if self._schema_ready:
            return self.migrated_max_version
        columns = {str(row[0]) for row in self._query(TABLE_COLUMNS, {"name": self.table})}
        if columns and "version" not in columns:
            self.migrated_max_version = self._migrate_unversioned()
        else:
            self._command(self._sql(CREATE_TABLE))
        self._schema_ready = True
        return self.migrated_max_version

    def _migrate_unversioned(self) -> int:
        old = f"{self.table}_pre_version"
        staging = f"{self.table}_migrating"
        self._command(f"DROP TABLE IF EXISTS {staging}")
        self._command(CREATE_TABLE.replace("{table}", staging))
        self._command(MIGRATE_COPY.replace("{new}", staging).replace("{old}", self.table))
        self._command(f"RENAME TABLE {self.table} TO {old}, {staging} TO {self.table}")
        rows = self._query(self._sql(MAX_VERSION), {})
        return int(rows[0][0] or 0) if rows else 0

    def insert(self, rows: Sequence[EmbeddingRow]) -> int:
        """Insert rows in one statement (RowBinary, vectors straight from float32 buffers)."""
        if not rows:
            return 0
        self.ensure_schema()
        self._insert_row_binary(row_binary(rows))
        return len(rows)

    def search(
        self, domain: str, team_id: int, vector: Sequence[float], limit: int, embedding_version: int
    ) -> list[EntityHit]:
        """Nearest live rows of one team, domain and version, by cosine distance."""
        self.ensure_schema()
        query = np.asarray(vector, dtype=np.float32)
        rows = self._query(
            self._sql(SEARCH),
            {
                "query": query.tolist(),
                "team_id": team_id,
                "domain": domain,
                "version": embedding_version,
                "dimensions": len(query),
                "limit": limit,
            },
        )
        return _hits(rows)

    def text_search(
        self, domain: str, team_id: int, query: str, limit: int, embedding_version: int
    ) -> list[EntityHit]:
        """Live rows of one team ranked by how much of the query their name and text contain."""
        self.ensure_schema()
        rows = self._query(
            self._sql(TEXT_SEARCH),
            {"q": query, "team_id": team_id, "domain": domain, "version": embedding_version, "limit": limit},
        )
        return _hits(rows)

    def hybrid_search(
        self,
        domain: str,
        team_id: int,
        vector: Sequence[float],
        query: str,
        limit: int,
        embedding_version: int,
    ) -> list[EntityHit]:
        """Live rows of one team ranked by the fusion of the vector and text rankings."""
        self.ensure_schema()
        array = np.asarray(vector, dtype=np.float32)
        rows = self._query(
            self._sql(HYBRID_SEARCH),
            {
                "query": array.tolist(),
                "q": query,
                "team_id": team_id,
                "domain": domain,
                "version": embedding_version,
                "dimensions": len(array),
                "limit": limit,
            },
        )
        return _hits(rows)

    def vectors(
        self, domain: str, keys: Sequence[VectorKey]
    ) -> dict[VectorKey, tuple[np.ndarray[Any, Any], int]]:
        """The latest live vector of each key that has one, with its row version."""
        if not keys:
            return {}
        self.ensure_schema()
        rows = self._query(
            self._sql(VECTORS), {"domain": domain, "keys": [(int(t), str(i), int(v)) for t, i, v in keys]}
        )
        return {
            (int(row[0]), str(row[1]), int(row[2])): (np.asarray(row[3], dtype=np.float32), int(row[5]))
            for row in rows
            if not int(row[4]) and len(row[3])
        }

    def live_keys_page(self, domain: str, after: VectorKey | None, limit: int) -> list[VectorKey]:
        """Live keys of a domain in key order, after `after`."""
        self.ensure_schema()
        team, entity, version = after or (-(2**63), "", 0)
        rows = self._query(
            self._sql(LIVE_KEYS_PAGE),
            {
                "domain": domain,
                "after_team": team,
                "after_id": entity,
                "after_version": version,
                "limit": limit,
            },
        )
        return [(int(row[0]), str(row[1]), int(row[2])) for row in rows]

    def latest_rows(self, domain: str) -> list[StoredRow]:
        """The latest row of every key of a domain, tombstones included."""
        self.ensure_schema()
        rows = self._query(self._sql(LATEST_ROWS), {"domain": domain})
        return [
            StoredRow(
                team_id=int(row[0]),
                domain=str(row[1]),
                id=str(row[2]),
                embedding_version=int(row[3]),
                text=str(row[4]),
                properties=_json(row[5]),
                vector=[float(value) for value in row[6]],
                timestamp=_datetime(row[7]),
                version=int(row[8]),
                is_deleted=bool(int(row[9])),
            )
            for row in rows
        ]

    def count_rows(self, domain: str) -> int:
        """Physical rows of a domain (before merges)."""
        self.ensure_schema()
        return int(self._query(self._sql(COUNT_ROWS), {"domain": domain})[0][0])

    def truncate(self) -> None:
        """Delete every row (tests and resets only)."""
        self.ensure_schema()
        self._command(f"TRUNCATE TABLE {self.table}")


def short_error(error: BaseException) -> str:
    """A store error on one line, without the SQL text or query parameters it may quote, secrets redacted."""
    from entity_vectors.conf import redact

    text = " ".join(str(error).split())
    for marker in (" In scope ", " Stack trace", "query: ", "SELECT ", "INSERT ", "CREATE "):
        cut = text.find(marker)
        if cut > 40:
            text = text[:cut].rstrip(" .:,")
    return redact(text if len(text) <= 300 else text[:297] + "...")


def _hits(rows: list[tuple[Any, ...]]) -> list[EntityHit]:
    return [
        EntityHit(
            id=str(row[0]),
            team_id=int(row[1]),
            domain=str(row[2]),
            text=str(row[3]),
            properties=_json(row[4]),
            distance=float(row[5]),
        )
        for row in rows
    ]


def _json(value: Any) -> dict[str, Any]:
    if isinstance(value, bytes):
        value = value.decode("utf-8")
    try:
        parsed = json.loads(value) if value else {}
    except json.JSONDecodeError:
        return {}
    return parsed if isinstance(parsed, dict) else {}


def _datetime(value: Any) -> datetime:
    # The column is UTC; clickhouse-connect returns it naive, chdb's JSON as text.
    parsed = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


__all__ = [
    "COLUMNS",
    "CREATE_TABLE",
    "STRUCTURE",
    "EmbeddingRow",
    "EmbeddingStore",
    "EntityHit",
    "SqlEmbeddingStore",
    "StoredRow",
    "VectorKey",
    "chunked",
]
