"""The store interface and the SQL both stores run: one table, latest row per key wins."""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol, runtime_checkable

COLUMNS = (
    "domain",
    "team_id",
    "id",
    "vector",
    "text",
    "properties",
    "embedding_version",
    "timestamp",
    "is_deleted",
)
STRUCTURE = (
    "domain LowCardinality(String), team_id Int64, id String, vector Array(Float32), text String, "
    "properties String, embedding_version UInt32, timestamp DateTime64(6, 'UTC'), is_deleted UInt8"
)

CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS {table} (
    domain LowCardinality(String),
    team_id Int64,
    id String,
    vector Array(Float32),
    text String,
    properties String,
    embedding_version UInt32,
    timestamp DateTime64(6, 'UTC'),
    is_deleted UInt8
)
ENGINE = ReplacingMergeTree(timestamp, is_deleted)
ORDER BY (team_id, domain, embedding_version, id)
"""

# The latest row per key decides. Each run writes with its own version, so a live row and a
# tombstone of one key do not tie in practice; if they did, reads prefer the tombstone (merges
# keep whichever came last). Every query filters by domain (and team where it can) first.
_LATEST = "(timestamp, is_deleted)"

SEARCH = f"""
SELECT id, team_id, domain, latest_text, latest_properties,
       cosineDistance(latest_vector, {{query:Array(Float32)}}) AS distance
FROM (
    SELECT team_id, domain, id,
           argMax(text, {_LATEST}) AS latest_text,
           argMax(properties, {_LATEST}) AS latest_properties,
           argMax(vector, {_LATEST}) AS latest_vector,
           argMax(is_deleted, {_LATEST}) AS latest_deleted
    FROM {{table}}
    WHERE team_id = {{team_id:Int64}} AND domain = {{domain:String}} AND embedding_version = {{version:UInt32}}
    GROUP BY team_id, domain, id
)
WHERE latest_deleted = 0 AND length(latest_vector) = {{dimensions:UInt32}}
ORDER BY distance ASC, id ASC
LIMIT {{limit:UInt32}}
"""

EMBEDDERS = """
SELECT DISTINCT JSONExtractString(properties, '_vectorized_by', 'embedder'), length(vector)
FROM {table}
WHERE domain = {domain:String} AND embedding_version = {version:UInt32} AND is_deleted = 0
  AND ({team_id:Int64} = -1 OR team_id = {team_id:Int64})
LIMIT 10
"""

LIVE_VERSIONS = f"""
SELECT team_id, id, embedding_version
FROM {{table}}
WHERE domain = {{domain:String}} AND has({{ids:Array(String)}}, id)
GROUP BY team_id, id, embedding_version
HAVING argMax(is_deleted, {_LATEST}) = 0
"""

LIVE_KEYS = f"""
SELECT team_id, id, embedding_version
FROM {{table}}
WHERE domain = {{domain:String}}
GROUP BY team_id, id, embedding_version
HAVING argMax(is_deleted, {_LATEST}) = 0
ORDER BY team_id, id, embedding_version
"""

LATEST_ROWS = f"""
SELECT team_id, domain, id, embedding_version,
       argMax(text, {_LATEST}), argMax(properties, {_LATEST}), argMax(vector, {_LATEST}),
       max(timestamp), argMax(is_deleted, {_LATEST})
FROM {{table}}
WHERE domain = {{domain:String}}
GROUP BY team_id, domain, id, embedding_version
ORDER BY team_id, id, embedding_version
"""

COUNT_ROWS = "SELECT count() FROM {table} WHERE domain = {domain:String}"


@dataclass(frozen=True)
class EmbeddingRow:
    """One row of the vectors table: a live vector or a tombstone (`is_deleted=1`, no vector)."""

    domain: str
    team_id: int
    id: str
    vector: Sequence[float]
    text: str
    properties: str
    embedding_version: int
    timestamp: datetime
    is_deleted: int = 0

    def values(self) -> list[Any]:
        """The row's values in COLUMNS order."""
        return [
            self.domain,
            self.team_id,
            self.id,
            list(self.vector),
            self.text,
            self.properties,
            self.embedding_version,
            self.timestamp,
            self.is_deleted,
        ]


@dataclass(frozen=True)
class EntityHit:
    """One search result: nearest first, `distance` is the cosine distance (0 = same direction)."""

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
    is_deleted: bool


@runtime_checkable
class EmbeddingStore(Protocol):
    """Where vectors live: the embedded engine or a ClickHouse server, same SQL."""

    table: str

    def ensure_schema(self) -> None:
        """Create the table if it does not exist (idempotent)."""
        ...

    def insert(self, rows: Sequence[EmbeddingRow]) -> int:
        """Insert rows in one statement; returns how many."""
        ...

    def search(
        self, domain: str, team_id: int, vector: Sequence[float], limit: int, embedding_version: int
    ) -> list[EntityHit]:
        """Nearest live rows of one team, domain and version."""
        ...

    def stored_embedders(
        self, domain: str, embedding_version: int, team_id: int | None = None
    ) -> list[tuple[str, int]]:
        """(embedder, vector length) pairs stored for a domain and version (and team)."""
        ...

    def live_versions(self, domain: str, ids: Sequence[str]) -> list[tuple[int, str, int]]:
        """(team_id, id, embedding_version) of every live key among `ids`."""
        ...

    def live_keys(self, domain: str) -> list[tuple[int, str, int]]:
        """(team_id, id, embedding_version) of every live key of a domain."""
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
    def _insert_values(self, rows: Sequence[EmbeddingRow]) -> None:
        """Insert rows into the table in one statement."""

    def ensure_schema(self) -> None:
        """Create the table if it does not exist (idempotent, once per store object)."""
        if not self._schema_ready:
            self._command(self._sql(CREATE_TABLE))
            self._schema_ready = True

    def insert(self, rows: Sequence[EmbeddingRow]) -> int:
        """Insert rows in one statement."""
        if not rows:
            return 0
        self.ensure_schema()
        self._insert_values(rows)
        return len(rows)

    def search(
        self, domain: str, team_id: int, vector: Sequence[float], limit: int, embedding_version: int
    ) -> list[EntityHit]:
        """Nearest live rows of one team, domain and version, by cosine distance."""
        self.ensure_schema()
        rows = self._query(
            self._sql(SEARCH),
            {
                "query": [float(value) for value in vector],
                "team_id": team_id,
                "domain": domain,
                "version": embedding_version,
                "dimensions": len(vector),
                "limit": limit,
            },
        )
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

    def stored_embedders(
        self, domain: str, embedding_version: int, team_id: int | None = None
    ) -> list[tuple[str, int]]:
        """(embedder, vector length) pairs stored for a domain and version (and team)."""
        self.ensure_schema()
        rows = self._query(
            self._sql(EMBEDDERS),
            {"domain": domain, "version": embedding_version, "team_id": -1 if team_id is None else team_id},
        )
        return sorted((str(row[0]), int(row[1])) for row in rows)

    def live_versions(self, domain: str, ids: Sequence[str]) -> list[tuple[int, str, int]]:
        """(team_id, id, embedding_version) of every live key among `ids`."""
        if not ids:
            return []
        self.ensure_schema()
        rows = self._query(self._sql(LIVE_VERSIONS), {"domain": domain, "ids": list(ids)})
        return [(int(row[0]), str(row[1]), int(row[2])) for row in rows]

    def live_keys(self, domain: str) -> list[tuple[int, str, int]]:
        """(team_id, id, embedding_version) of every live key of a domain."""
        self.ensure_schema()
        rows = self._query(self._sql(LIVE_KEYS), {"domain": domain})
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
                is_deleted=bool(row[8]),
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
