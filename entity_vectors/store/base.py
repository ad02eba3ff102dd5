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

Text search ranks rows by BM25 over their tokens, through ClickHouse's full-text (`text`) index
and a terms table (`fulltext`), and returns a candidate only if it is its key's latest live row;
hybrid search fuses the vector and text rankings (`fusion`).
"""

from __future__ import annotations

import copy
import dataclasses
import json
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any, Protocol, runtime_checkable

import numpy as np
import structlog

from entity_vectors import conf
from entity_vectors.exceptions import ConfigurationError
from entity_vectors.store.ann import ApproximateIndex, group_params
from entity_vectors.store.fulltext import (
    TEXT_INDEX_SINCE,
    QueryPlan,
    plan_query,
    query_words,
    score_sql,
    vocabulary_of,
    vocabulary_params,
)
from entity_vectors.store.fusion import Fusion, fuse
from entity_vectors.store.rowbinary import COLUMNS
from entity_vectors.store.rows import EmbeddingRow, EntityHit, StoredRow, VectorKey, chunked
from entity_vectors.store.schema import CREATE_TABLE, Schema, settings_clause
from entity_vectors.store.sql import (
    APPROXIMATE_SEARCH,
    CANDIDATES,
    COUNT_ROWS,
    INDEX_TABLES,
    LATEST_ROWS,
    LIVE_KEYS_PAGE,
    MAX_VERSION,
    MIGRATE_COPY,
    SEARCH,
    STRUCTURE,
    TABLE_COLUMNS,
    TEXT_HITS,
    TEXT_INDEX_PRESENT,
    TEXT_TERMS,
    VECTOR_AND_TEXT_HITS,
    VECTORS,
)

log = structlog.get_logger("entity_vectors")

# Candidates taken from the HNSW index per search, as a multiple of the limit and at least
# MIN_CANDIDATES: re-ranked exactly, they make up for the index's approximate (bf16) distances.
CANDIDATES_PER_RESULT = 10
MIN_CANDIDATES = 100
MAX_CANDIDATES = 1000
# Rows taken from each ranking for hybrid search: fusion re-ranks these (a row below both is not
# returned). The text ranking's are fewer: each costs a read of its rows, and below the first 20
# its scores add little to the fusion.
HYBRID_VECTOR_CANDIDATES = 20
HYBRID_TEXT_CANDIDATES = 20
# Text candidates taken beyond the hits asked for (superseded rows among them make room).
TEXT_CANDIDATES_MARGIN = 10


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
        """Live rows of one team ranked by BM25 over the words of their name and text."""
        ...

    def hybrid_search(
        self,
        domain: str,
        team_id: int,
        vector: Sequence[float],
        query: str,
        limit: int,
        embedding_version: int,
        fusion: Fusion | None = None,
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
    def _insert_row_binary(self, rows: Sequence[EmbeddingRow], settings: dict[str, str]) -> None:
        """Insert the rows as RowBinary (`rowbinary`, COLUMNS order) into the table in one
        statement, with `settings` (the layout's, `schema.insert_settings`, as the store that
        asked the server knows them)."""

    @abstractmethod
    def close(self) -> None:
        """Release the connection or the engine (a sibling made by `for_table` leaves it to its owner)."""

    def ensure_schema(self) -> int:
        """Create the table, or migrate one made by an earlier release (idempotent, once per object):
        the first release's is copied into the versioned layout; one without the full-text columns
        gets them (and the terms table, counted from its rows)."""
        if self._schema_ready:
            return self.migrated_max_version
        codecs = {str(row[0]): str(row[1]) for row in self._query(TABLE_COLUMNS, {"name": self.table})}
        text_index = self._has_text_index()
        self.schema = dataclasses.replace(self.schema, text_index=text_index)
        if codecs and "version" not in codecs:
            self.migrated_max_version = self._migrate_unversioned(text_index)
            codecs = {"tokens": ""}  # copied into a table made with the full-text columns
        else:
            for statement in self.schema.create_main(text_index):
                self._command(statement)
            if codecs and not codecs["vector"] and not self.schema.cluster:
                # Tables made before vectors were stored uncompressed: new parts and merges
                # write them uncompressed from now on (no data is rewritten now).
                self._command(f"ALTER TABLE {self.table} MODIFY COLUMN vector Array(Float32) CODEC(NONE)")
        self._ensure_full_text(bool(codecs), bool(codecs) and "tokens" not in codecs, text_index)
        self._schema_ready = True
        return self.migrated_max_version

    def _has_text_index(self) -> bool:
        """Whether the server has ClickHouse's `text` index (generally available since 26.2)."""
        rows = self._query("SELECT version()", {})
        if not rows:
            return True
        try:
            major, minor = (int(part) for part in str(rows[0][0]).split(".")[:2])
        except ValueError:
            return True
        return (major, minor) >= TEXT_INDEX_SINCE

    def _ensure_full_text(self, existed: bool, add_columns: bool, text_index: bool) -> None:
        """The full-text columns and index of an earlier release's table, and the terms table.

        The terms of rows written before the terms table existed are counted once, when it is
        created (rows written meanwhile by another process may be counted twice: statistics only).
        """
        added: list[str] = []
        if add_columns:
            added = self.schema.add_text_columns(text_index)
        elif text_index and not self._query(TEXT_INDEX_PRESENT, {"name": self.schema.main_local}):
            added = [self.schema.add_text_index()]  # a table made on a server without the index
        for statement in added:
            self._command(statement)
        terms = self.schema.names["{terms}"]
        counted = bool(self._query(INDEX_TABLES, {"name": terms}))
        for statement in self.schema.create_terms():
            self._command(statement)
        if existed and not counted:
            inserts = settings_clause(self.schema.insert_settings)
            self._command(f"INSERT INTO {terms} SELECT {self.schema.count_terms(self.table)}{inserts}")
        if added:
            for statement in self.schema.materialize_text(index=text_index):
                self._command(statement)
            log.info("store.full_text_added", table=self.table, index=text_index)

    def _migrate_unversioned(self, text_index: bool) -> int:
        if self.schema.cluster:
            raise ConfigurationError(
                f"ClickHouse table {self.table} was made by the first release (no version column); "
                "migrate it on one server before using it on a cluster"
            )
        old = f"{self.table}_pre_version"
        staging = f"{self.table}_migrating"
        self._command(f"DROP TABLE IF EXISTS {staging}")
        self._command(Schema(staging).create_main(text_index)[0])
        self._command(MIGRATE_COPY.replace("{new}", staging).replace("{old}", self.table))
        self._command(f"RENAME TABLE {self.table} TO {old}, {staging} TO {self.table}")
        rows = self._query(self._sql(MAX_VERSION), {})
        return int(rows[0][0] or 0) if rows else 0

    def insert(self, rows: Sequence[EmbeddingRow]) -> int:
        """Insert rows in one statement (RowBinary, vectors straight from float32 buffers)."""
        if not rows:
            return 0
        self.ensure_schema()
        self._insert_row_binary(rows, self.schema.insert_settings)
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
        """Live rows of one team ranked by BM25 over the tokens of their name and text (see
        `fulltext`); a hit's distance is 1 - its score (0 for a row whose whole name is the query).

        Two statements: the group's vocabulary for the query's words (`sql.TEXT_TERMS`); then the
        rows holding any of the resulting terms, through the text index, best first, with every
        row of their keys (`sql.TEXT_HITS`), so that a key is returned only if its latest row is
        live and matches. Superseded candidates make room for the next ones (the candidates are
        taken again, four times as many, until enough survive or none are left).
        """
        self.ensure_schema()
        group = group_params(domain, team_id, embedding_version)
        plan = self._text_plan(group, query)
        if plan is None:
            return []
        return self._text_hits(group, plan, limit)[1]

    def _text_plan(self, group: dict[str, Any], query: str) -> QueryPlan | None:
        """The query's terms, looked up in the group's vocabulary (None: the query has no words)."""
        words = query_words(query)
        if not words.words:
            return None
        return plan_query(words, vocabulary_of(self._select(TEXT_TERMS, group | vocabulary_params(words))))

    def _text_hits(
        self,
        group: dict[str, Any],
        plan: QueryPlan,
        limit: int,
        vector: dict[str, Any] | None = None,
    ) -> tuple[list[EntityHit], list[EntityHit]]:
        """The vector hits (when `vector` holds the vector search's parameters, in the same
        statement: VECTOR_AND_TEXT_HITS) and the text hits (TEXT_HITS)."""
        score, condition, score_params = score_sql(plan)
        template = (VECTOR_AND_TEXT_HITS if vector else TEXT_HITS).replace("{score}", score)
        template = template.replace("{condition}", condition)
        wanted = limit + TEXT_CANDIDATES_MARGIN
        vector_hits: list[EntityHit] = []
        while True:
            rows = self._select(template, group | score_params | (vector or {}) | {"candidates": wanted})
            if vector:
                vector_hits = [_union_hit(row) for row in rows if int(row[0]) == 0]
                vector_hits.sort(key=lambda hit: (hit.distance, hit.id))
                template = TEXT_HITS.replace("{score}", score).replace("{condition}", condition)
                vector = None  # in hand: a second round takes more text candidates only
            text_rows = [row for row in rows if int(row[0]) == 1]
            candidates = text_rows[0][9] if text_rows else []
            hits = _latest_text_hits(text_rows, candidates)
            if len(hits) >= limit or len(candidates) < wanted:
                return vector_hits, hits[:limit]
            wanted *= 4

    def hybrid_search(
        self,
        domain: str,
        team_id: int,
        vector: Sequence[float],
        query: str,
        limit: int,
        embedding_version: int,
        fusion: Fusion | None = None,
    ) -> list[EntityHit]:
        """Live rows of one team ranked by the fusion of the vector and text rankings (`fusion`;
        weighted reciprocal rank fusion with equal weights by default); a hit's distance is its
        fused score as a distance, in rank order (see `store.fusion`).

        A group searched exactly takes both rankings in one statement after the vocabulary lookup
        (`sql.VECTOR_AND_TEXT_HITS`); a group searched through its HNSW index, one after the other.
        """
        self.ensure_schema()
        depth, text_depth = max(limit, HYBRID_VECTOR_CANDIDATES), max(limit, HYBRID_TEXT_CANDIDATES)
        array = np.asarray(vector, dtype="<f4")
        group = group_params(domain, team_id, embedding_version)
        if self._indexed((team_id, domain, embedding_version), len(array)):
            vector_hits = self.search(domain, team_id, vector, depth, embedding_version)
            text_hits = self.text_search(domain, team_id, query, text_depth, embedding_version)
            return fuse(vector_hits, text_hits, fusion or Fusion(), limit)
        plan = self._text_plan(group, query)
        if plan is None:
            return fuse(
                self.search(domain, team_id, vector, depth, embedding_version), [], fusion or Fusion(), limit
            )
        vector_params = {"query": array.tobytes().hex(), "dimensions": len(array), "limit": depth}
        vector_hits, text_hits = self._text_hits(group, plan, text_depth, vector_params)
        return fuse(vector_hits, text_hits, fusion or Fusion(), limit)

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

    def copy_groups(self, source: str, groups: Sequence[tuple[int, str, int]]) -> None:
        """Copy the rows of `groups` (team, domain, embedding version) from the vectors table `source`."""
        self.ensure_schema()
        columns = ", ".join(COLUMNS)
        self._command(
            f"INSERT INTO {self.table} ({columns}) SELECT {columns} FROM {source} "
            "WHERE has({groups:Array(Tuple(Int64, String, UInt32))}, (team_id, domain, embedding_version))"
            + settings_clause(self.schema.insert_settings),
            {"groups": [(int(t), str(d), int(v)) for t, d, v in groups]},
        )

    def drop(self) -> None:
        """Drop the table with its terms and index tables and their views (scratch tables only)."""
        found = [str(row[0]) for row in self._query(INDEX_TABLES, {"name": self.table + "\\_%"})]
        ours = [
            name
            for name in found
            if name.startswith((f"{self.table}_terms", f"{self.table}_ann_")) or name == f"{self.table}_local"
        ]
        # Views first (they read the tables), Distributed tables before the local ones they front.
        order = {"_feed": 0, "_local": 2}
        for name in sorted([*ours, self.table], key=lambda name: order.get(name[name.rfind("_") :], 1)):
            self._command(f"DROP TABLE IF EXISTS {name}{self.schema.on_cluster}")
        self._schema_ready = False
        self._forget_index_state()

    def truncate(self) -> None:
        """Delete every row, the index tables' too (tests and resets only)."""
        self.ensure_schema()
        prefix = f"{self.table}_ann_"
        index_tables = [str(row[0]) for row in self._query(INDEX_TABLES, {"name": prefix + "%"})]
        for name in [self.table, self.schema.names["{terms}"], *index_tables]:
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


def _union_hit(row: tuple[Any, ...]) -> EntityHit:
    """A hit from a row of TEXT_HITS' columns (part, id, version, is_deleted, team_id, domain,
    text, properties, number), its number as the distance."""
    return EntityHit(
        id=str(row[1]),
        team_id=int(row[4]),
        domain=str(row[5]),
        text=str(row[6]),
        properties=_json(row[7]),
        distance=float(row[8]),
    )


def _latest_text_hits(
    rows: Sequence[tuple[Any, ...]], candidates: Sequence[Sequence[Any]]
) -> list[EntityHit]:
    """The candidates (id, version and score of its newest matching row) whose key's latest row,
    among `rows` (every row of their keys, TEXT_HITS' columns), is that row and live, best first;
    a hit's distance is 1 - its score."""
    latest: dict[str, tuple[Any, ...]] = {}
    for row in rows:
        kept = latest.get(str(row[1]))
        if kept is None or int(row[2]) > int(kept[2]):
            latest[str(row[1])] = row
    hits = []
    for entity_id, version, score in candidates:
        found = latest.get(str(entity_id))
        if found is not None and int(found[2]) == int(version) and not int(found[3]):
            hits.append(replace(_union_hit(found), distance=min(max(1.0 - float(score), 0.0), 1.0)))
    hits.sort(key=lambda hit: (hit.distance, hit.id))
    return hits


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
