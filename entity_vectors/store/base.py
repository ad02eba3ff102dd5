"""The store interface and the SQL both stores run: one table, the latest row per key wins.

A key is (team_id, domain, embedding_version, id); its latest row is the one with the highest
`version` (a number from the Django database's counter, never a clock). Reads choose the latest
row per key first and only then look at `is_deleted`, so an older live row never wins over a
newer tombstone before ClickHouse has merged them.

Vector search of a group (one team, domain and embedding version) is exact below
ENTITY_VECTORS_APPROXIMATE_SEARCH_MIN_ROWS rows: FINAL over the group, nearest first. A larger
group is copied, on its first vector search, into an approximate-search table with an HNSW
index (`ann.ApproximateIndex`), which materialized views keep current from then on; its
searches take an oversampled set of candidates from the index and re-rank them exactly, after
the latest-row rules (see `sql.APPROXIMATE_SEARCH`).
"""

from __future__ import annotations

import copy
import json
from abc import ABC, abstractmethod
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Protocol, runtime_checkable

import numpy as np

from entity_vectors import conf
from entity_vectors.exceptions import ConfigurationError
from entity_vectors.store.ann import ApproximateIndex, group_params
from entity_vectors.store.rowbinary import COLUMNS
from entity_vectors.store.rows import EmbeddingRow, EntityHit, StoredRow, VectorKey, chunked
from entity_vectors.store.schema import CREATE_TABLE, Schema, settings_clause
from entity_vectors.store.sql import (
    APPROXIMATE_SEARCH,
    CANDIDATES,
    COUNT_ROWS,
    HYBRID_SEARCH,
    INDEX_TABLES,
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

# Candidates taken from the HNSW index per search, as a multiple of the limit and at least
# MIN_CANDIDATES: re-ranked exactly, they make up for the index's approximate (bf16) distances.
CANDIDATES_PER_RESULT = 10
MIN_CANDIDATES = 100
MAX_CANDIDATES = 1000


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


class SqlEmbeddingStore(ApproximateIndex, ABC):
    """The shared SQL; subclasses only execute statements."""

    def __init__(self, table: str, cluster: str = "") -> None:
        self.table = table
        self.schema = Schema(table, cluster)
        self._schema_ready = False
        self.migrated_max_version = 0
        # A sibling made by `for_table` shares its connection with the store that made it.
        self._borrowed = False
        self._forget_index_state()

    def for_table(self, table: str) -> SqlEmbeddingStore:
        """The same connection, another table (chdb allows one session per process and directory)."""
        sibling = copy.copy(self)
        sibling.table = table
        sibling.schema = Schema(table, self.schema.cluster)
        sibling._schema_ready = False
        sibling.migrated_max_version = 0
        sibling._borrowed = True
        sibling._forget_index_state()
        return sibling

    def _sql(self, template: str, dimensions: int = 0) -> str:
        # Not str.format: the templates also hold {name:Type} query parameters.
        return self.schema.sql(template, dimensions)

    def _select(
        self,
        template: str,
        params: dict[str, Any],
        dimensions: int = 0,
        settings: dict[str, str] | None = None,
    ) -> list[tuple[Any, ...]]:
        """Run a read template with the layout's read settings (and `settings`, constants only)."""
        clause = settings_clause(self.schema.read_settings | (settings or {}))
        return self._query(self._sql(template, dimensions) + clause, params)

    @abstractmethod
    def _command(self, sql: str, params: dict[str, Any] | None = None) -> None:
        """Run a statement that returns nothing."""

    @abstractmethod
    def _query(self, sql: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        """Run a query with server-side `{name:Type}` parameters; rows as tuples."""

    @abstractmethod
    def _insert_row_binary(self, rows: Sequence[EmbeddingRow]) -> None:
        """Insert the rows as RowBinary (`rowbinary`, COLUMNS order) into the table in one
        statement, with the layout's insert settings (`schema.insert_settings`)."""

    @abstractmethod
    def close(self) -> None:
        """Release the connection or the engine (a sibling made by `for_table` leaves it to its owner)."""

    def ensure_schema(self) -> int:
        """Create the table, or migrate one made by the first release (idempotent, once per object)."""
        if self._schema_ready:
            return self.migrated_max_version
        codecs = {str(row[0]): str(row[1]) for row in self._query(TABLE_COLUMNS, {"name": self.table})}
        if codecs and "version" not in codecs:
            self.migrated_max_version = self._migrate_unversioned()
        else:
            for statement in self.schema.create_main():
                self._command(statement)
            if codecs and not codecs["vector"] and not self.schema.cluster:
                # Tables made before vectors were stored uncompressed: new parts and merges
                # write them uncompressed from now on (no data is rewritten now).
                self._command(f"ALTER TABLE {self.table} MODIFY COLUMN vector Array(Float32) CODEC(NONE)")
        self._schema_ready = True
        return self.migrated_max_version

    def _migrate_unversioned(self) -> int:
        if self.schema.cluster:
            raise ConfigurationError(
                f"ClickHouse table {self.table} was made by the first release (no version column); "
                "migrate it on one server before using it on a cluster"
            )
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
        self._insert_row_binary(rows)
        return len(rows)

    def search(
        self, domain: str, team_id: int, vector: Sequence[float], limit: int, embedding_version: int
    ) -> list[EntityHit]:
        """Nearest live rows of one team, domain and version, by cosine distance.

        Exact for a group below ENTITY_VECTORS_APPROXIMATE_SEARCH_MIN_ROWS rows; through the HNSW
        index above it, with an exact re-ranking of the candidates and the same latest-row rules.
        """
        self.ensure_schema()
        query = np.asarray(vector, dtype="<f4")
        params = group_params(domain, team_id, embedding_version) | {
            "query": query.tobytes().hex(),
            "dimensions": len(query),
            "limit": limit,
        }
        if not self._indexed((team_id, domain, embedding_version), len(query)):
            return _hits(self._select(SEARCH, params))
        candidates = min(max(limit * CANDIDATES_PER_RESULT, MIN_CANDIDATES), MAX_CANDIDATES)
        settings = {
            "hnsw_candidate_list_size_for_search": str(max(conf.approximate_search_ef(), candidates)),
            "max_limit_for_vector_search_queries": str(candidates),
        }
        found = self._select(CANDIDATES, params | {"candidates": candidates}, len(query), settings)
        if not found:
            return []
        keys = [str(row[0]) for row in found]
        return _hits(self._select(APPROXIMATE_SEARCH, params | {"ids": keys}, len(query)))

    def text_search(
        self, domain: str, team_id: int, query: str, limit: int, embedding_version: int
    ) -> list[EntityHit]:
        """Live rows of one team ranked by how much of the query their name and text contain."""
        self.ensure_schema()
        params = group_params(domain, team_id, embedding_version) | {"q": query, "limit": limit}
        return _hits(self._select(TEXT_SEARCH, params))

    def hybrid_search(
        self,
        domain: str,
        team_id: int,
        vector: Sequence[float],
        query: str,
        limit: int,
        embedding_version: int,
    ) -> list[EntityHit]:
        """Live rows of one team ranked by the fusion of the vector and text rankings; a hit's
        distance is its fused score as a distance (in rank order; see `sql.HYBRID_SEARCH`)."""
        self.ensure_schema()
        array = np.asarray(vector, dtype="<f4")
        params = group_params(domain, team_id, embedding_version) | {
            "query": array.tobytes().hex(),
            "q": query,
            "dimensions": len(array),
            "limit": limit,
        }
        return _hits(self._select(HYBRID_SEARCH, params))

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
        """Delete every row, the index tables' too (tests and resets only)."""
        self.ensure_schema()
        prefix = f"{self.table}_ann_"
        index_tables = [str(row[0]) for row in self._query(INDEX_TABLES, {"name": prefix + "%"})]
        for name in [self.table, *index_tables]:
            if not name.endswith(("_feed", "_local")):
                self._command(self.schema.truncate(name))
        self._forget_index_state()


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
