"""The cluster layout (ENTITY_VECTORS_CLICKHOUSE_CLUSTER), as SQL text.

No ClickHouse cluster runs here, so these tests read the statements the store would send, check
that ClickHouse's own parser accepts each one (chdb's `formatQuery`), and follow a server store
on a recording client through schema creation, inserts, searches and a truncate.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from entity_vectors.exceptions import ConfigurationError
from entity_vectors.store import EmbeddingStore, open_store
from entity_vectors.store.schema import Schema
from entity_vectors.store.server import ServerStore
from tests.support.store_rows import row, unit

CLUSTER = "analytics"
KEY = "ORDER BY (team_id, domain, embedding_version, id)"


def distributed(name: str) -> str:
    """The Distributed table expected in front of `<name>_local`."""
    return (
        f"CREATE TABLE IF NOT EXISTS {name} ON CLUSTER '{CLUSTER}' AS {name}_local "
        f"ENGINE = Distributed('{CLUSTER}', currentDatabase(), '{name}_local', cityHash64(team_id))"
    )


class TestClusterTables:
    """Replicated local tables on every node, a Distributed table sharded by team in front of each."""

    def test_the_vectors_table(self) -> None:
        local, front = Schema("pg_embeddings", CLUSTER).create_main()

        assert local.startswith(f"CREATE TABLE IF NOT EXISTS pg_embeddings_local ON CLUSTER '{CLUSTER}' (")
        assert (
            "ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/{database}/pg_embeddings_local', "
            "'{replica}', version, is_deleted)"
        ) in local
        assert local.endswith(f"{KEY} SETTINGS index_granularity_bytes = 1048576")
        assert front == distributed("pg_embeddings")

    def test_one_server_keeps_one_plain_table(self) -> None:
        (statement,) = Schema("pg_embeddings").create_main()

        assert "ON CLUSTER" not in statement and "Distributed" not in statement
        assert statement.startswith("CREATE TABLE IF NOT EXISTS pg_embeddings (")
        assert f"ENGINE = ReplacingMergeTree(version, is_deleted) {KEY}" in statement

    def test_the_terms_table_is_fed_on_each_node_from_its_local_table(self) -> None:
        local, front, feed = Schema("pg_embeddings", CLUSTER).create_terms()

        assert local.startswith(
            f"CREATE TABLE IF NOT EXISTS pg_embeddings_terms_local ON CLUSTER '{CLUSTER}' ("
        )
        assert (
            "ReplicatedSummingMergeTree('/clickhouse/tables/{shard}/{database}/pg_embeddings_terms_local'"
            in local
        )
        assert front == distributed("pg_embeddings_terms")
        assert feed.startswith(
            f"CREATE MATERIALIZED VIEW IF NOT EXISTS pg_embeddings_terms_feed ON CLUSTER '{CLUSTER}' "
            "TO pg_embeddings_terms_local AS SELECT "
        )
        assert " FROM pg_embeddings_local ARRAY JOIN " in feed

    def test_an_earlier_release_table_gets_its_columns_on_every_node(self) -> None:
        statements = Schema("pg_embeddings", CLUSTER).add_text_columns()

        assert [statement.split(" ADD ")[0] for statement in statements] == [
            f"ALTER TABLE pg_embeddings ON CLUSTER '{CLUSTER}'",
            f"ALTER TABLE pg_embeddings ON CLUSTER '{CLUSTER}'",
            f"ALTER TABLE pg_embeddings_local ON CLUSTER '{CLUSTER}'",
            f"ALTER TABLE pg_embeddings_local ON CLUSTER '{CLUSTER}'",
            f"ALTER TABLE pg_embeddings_local ON CLUSTER '{CLUSTER}'",
        ]
        assert statements[-1].endswith(
            "ADD INDEX IF NOT EXISTS tokens_index tokens TYPE text(tokenizer = array)"
        )

    def test_the_index_tables_are_fed_on_each_node_from_its_local_tables(self) -> None:
        statements = Schema("pg_embeddings", CLUSTER).create_index_tables(256)
        tables = [statement for statement in statements if "MATERIALIZED VIEW" not in statement]
        feeds = [statement for statement in statements if "MATERIALIZED VIEW" in statement]

        for name in ("pg_embeddings_ann_groups", "pg_embeddings_ann_tombstones", "pg_embeddings_ann_256"):
            assert distributed(name) in tables
            (local,) = [
                table for table in tables if table.startswith(f"CREATE TABLE IF NOT EXISTS {name}_local ")
            ]
            assert (
                f"ReplicatedReplacingMergeTree('/clickhouse/tables/{{shard}}/{{database}}/{name}_local'"
                in local
            )
        (index_table,) = [table for table in tables if "vector_similarity" in table]
        assert (
            "INDEX vectors vector TYPE vector_similarity('hnsw', 'cosineDistance', 256, 'bf16', 64, 256)"
            in index_table
        )
        assert "PARTITION BY (team_id, domain, embedding_version)" in index_table
        assert [feed.split(" AS SELECT ")[0] for feed in feeds] == [
            f"CREATE MATERIALIZED VIEW IF NOT EXISTS pg_embeddings_ann_tombstones_feed ON CLUSTER '{CLUSTER}' "
            "TO pg_embeddings_ann_tombstones_local",
            f"CREATE MATERIALIZED VIEW IF NOT EXISTS pg_embeddings_ann_256_feed ON CLUSTER '{CLUSTER}' "
            "TO pg_embeddings_ann_256_local",
        ]
        for feed in feeds:
            assert " FROM pg_embeddings_local WHERE " in feed
            assert " FROM pg_embeddings_ann_groups_local" in feed

    @pytest.mark.parametrize(
        "cluster", [pytest.param("", id="one-server"), pytest.param(CLUSTER, id="cluster")]
    )
    def test_every_statement_is_valid_clickhouse_sql(
        self, embedded_store: EmbeddingStore, cluster: str
    ) -> None:
        schema = Schema("pg_embeddings", cluster)
        statements = [
            *schema.create_main(),
            *schema.create_terms(),
            *schema.add_text_columns(),
            *schema.materialize_text(index=True),
            *schema.create_index_tables(1536),
            schema.materialize_index(1536),
            schema.truncate("pg_embeddings"),
        ]

        for statement in statements:
            # One line: the embedded store's text parameters cannot carry newlines.
            ((formatted,),) = embedded_store._query(  # type: ignore[attr-defined]
                "SELECT formatQuery({statement:String})", {"statement": " ".join(statement.split())}
            )
            assert ("ON CLUSTER" in formatted) == bool(cluster)


class RecordingClient:
    """Stands in for a clickhouse-connect client on a cluster: records what the store sends."""

    def __init__(self, group_rows: int = 0) -> None:
        self.statements: list[tuple[str, dict[str, Any] | None]] = []
        self.inserts: list[tuple[str, dict[str, Any] | None]] = []
        self.group_rows = group_rows

    def command(self, cmd: str, parameters: dict[str, Any] | None = None, **_: Any) -> None:
        """Record a statement."""
        self.statements.append((cmd, parameters))

    def query(self, query: str, parameters: dict[str, Any] | None = None, **_: Any) -> Any:
        """Record a query; a group has `group_rows` rows, the index one candidate, the rest is empty."""
        self.statements.append((query, parameters))
        rows: list[tuple[Any, ...]] = []
        if query.startswith("SELECT count() FROM"):
            rows = [(self.group_rows,)]
        elif "{candidates:UInt32}" in query:
            rows = [("1",)]
        return type("Result", (), {"result_rows": rows})()

    def raw_insert(
        self, table: str | None, column_names: Any = None, insert_block: Any = None, **options: Any
    ) -> None:
        """Record an insert's table (named in the statement that leads the body) and settings."""
        if table is None:
            statement = insert_block.read(4096).split(b"\n", 1)[0].decode()
            table = re.match(r"INSERT INTO (\S+) ", statement).group(1)  # type: ignore[union-attr]
        self.inserts.append((table, options.get("settings")))

    def sql(self) -> list[str]:
        """Every statement and query sent, in order."""
        return [" ".join(statement.split()) for statement, _ in self.statements]


class TestClusterStore:
    """A server store on a cluster writes and reads through the Distributed tables."""

    def test_inserts_wait_for_the_shard_and_reads_stay_on_the_teams_shard(self) -> None:
        client = RecordingClient()
        store = ServerStore(client, "pg_embeddings", "node-1:8123", CLUSTER)

        store.insert([row("1", unit(1, 0, 0))])
        store.search("action", 7, unit(1, 0, 0), 10, 1)
        store.truncate()

        sent = client.sql()
        schema = Schema("pg_embeddings", CLUSTER)
        created = [statement for statement in sent if statement.startswith("CREATE ")]
        assert created == [
            " ".join(statement.split()) for statement in [*schema.create_main(), *schema.create_terms()]
        ]
        # The server has the text index (ClickHouse 26.2+): inserts build it, not the HNSW graph.
        assert client.inserts == [
            (
                "pg_embeddings",
                {
                    "materialize_skip_indexes_on_insert": "1",
                    "exclude_materialize_skip_indexes_on_insert": "'vectors'",
                    "distributed_foreground_insert": "1",
                },
            )
        ]
        (search,) = [
            statement
            for statement in sent
            if statement.startswith("SELECT") and "cosineDistance" in statement
        ]
        assert "FROM pg_embeddings FINAL" in search
        assert "distributed_product_mode = 'local'" in search and "optimize_skip_unused_shards = 1" in search
        assert f"TRUNCATE TABLE IF EXISTS pg_embeddings_local ON CLUSTER '{CLUSTER}'" in sent

    def test_a_large_group_is_copied_through_the_distributed_tables(self, settings: Any) -> None:
        settings.ENTITY_VECTORS_APPROXIMATE_SEARCH_MIN_ROWS = 1000
        client = RecordingClient(group_rows=5000)
        store = ServerStore(client, "pg_embeddings", "node-1:8123", CLUSTER)

        store.search("action", 7, unit(1, 0, 0), 10, 1)

        sent = client.sql()
        copies = [statement for statement in sent if statement.startswith("INSERT INTO")]
        assert [copy.split(" (")[0] for copy in copies] == [
            "INSERT INTO pg_embeddings_ann_groups",
            "INSERT INTO pg_embeddings_ann_3",
            "INSERT INTO pg_embeddings_ann_tombstones",
            "INSERT INTO pg_embeddings_ann_groups",
        ]
        assert all(copy.endswith("distributed_foreground_insert = 1") for copy in copies)
        assert any(
            statement.startswith(
                f"ALTER TABLE pg_embeddings_ann_3_local ON CLUSTER '{CLUSTER}' MATERIALIZE INDEX"
            )
            for statement in sent
        )
        candidates, search = [
            statement
            for statement in sent
            if statement.startswith("SELECT") and "cosineDistance" in statement
        ]
        assert candidates.startswith("SELECT id FROM pg_embeddings_ann_3 WHERE")
        assert (
            "FROM pg_embeddings_ann_3 WHERE" in search and "FROM pg_embeddings_ann_tombstones WHERE" in search
        )
        assert all("distributed_product_mode = 'local'" in statement for statement in (candidates, search))


class TestClusterSetting:
    """The cluster name is checked, and the embedded engine refuses one."""

    def test_a_bad_name_is_an_error_naming_the_setting(self, settings: Any) -> None:
        from entity_vectors import conf

        settings.ENTITY_VECTORS_CLICKHOUSE_CLUSTER = "analytics'; DROP TABLE x"

        with pytest.raises(ConfigurationError, match="ENTITY_VECTORS_CLICKHOUSE_CLUSTER"):
            conf.clickhouse_cluster()

    def test_the_embedded_engine_is_one_node(self, settings: Any, tmp_path: Any) -> None:
        settings.ENTITY_VECTORS_CLICKHOUSE_CLUSTER = CLUSTER

        with pytest.raises(ConfigurationError, match="needs a ClickHouse server"):
            open_store(f"chdb://{tmp_path}", "pg_embeddings")
