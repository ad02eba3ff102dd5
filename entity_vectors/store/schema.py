"""The tables' DDL and the settings of reads and writes: one ClickHouse server, or a cluster.

**One server** (ENTITY_VECTORS_CLICKHOUSE_CLUSTER empty, and always for the embedded store):
`{table}` is a ReplacingMergeTree(version, is_deleted).

**A cluster** (ENTITY_VECTORS_CLICKHOUSE_CLUSTER = a cluster of the servers' `remote_servers`):
every table is a Replicated*MergeTree named `<name>_local`, created ON CLUSTER (the `{shard}` and
`{replica}` macros must be defined on every node), with a Distributed table `<name>` in front of
it, sharded by `cityHash64(team_id)`. All rows of a team live on one shard, so every version of a
key meets in one ReplacingMergeTree: FINAL and the latest-row rules hold shard by shard, and a
team's search reads one shard only (`optimize_skip_unused_shards`). The store inserts into and
reads from the Distributed tables:

- inserts with `distributed_foreground_insert = 1`, so an insert returns once the shard holds the
  rows and the ledger never confirms a write still queued on the node that received it;
- reads with `distributed_product_mode = 'local'`: a subquery reads the shard's local table,
  which holds the whole team.

The approximate-search tables (see `SqlEmbeddingStore.search`) follow the same pattern, and the
materialized views that feed them are attached to each node's local tables, so a row reaches
them on the shard where it is inserted. Scaling out is adding shards (each a replica set) to the
cluster: new teams spread over them by the hash; existing rows stay where they are.

A table made by the first release (no `version` column) is migrated in place on one server only;
a cluster is created with the current layout.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from entity_vectors.store.fulltext import FULL_NAME_MARK, TEXT_COLUMNS, TEXT_INDEX

# The vector column is stored uncompressed: embeddings do not compress (LZ4 made them bigger),
# and reading them back without decompression is most of what an exact search costs.
MAIN_COLUMNS = """
    domain LowCardinality(String),
    team_id Int64,
    id String,
    vector Array(Float32) CODEC(NONE),
    text String,
    properties String,
    embedding_version UInt32,
    timestamp DateTime64(6, 'UTC'),
    version UInt64,
    is_deleted UInt8
"""
# The full-text columns (`fulltext`): computed by ClickHouse from each row as it is written
# (MATERIALIZED), so every writer gets them and a table made by an earlier release gets them by
# an ALTER, its older parts computing them when read until a mutation writes them.
TEXT_MAIN_COLUMNS = "".join(f",\n    {name} {definition}" for name, definition in TEXT_COLUMNS)

KEY = "(team_id, domain, embedding_version, id)"
GROUP_KEY = "(team_id, domain, embedding_version)"
# Granules of at most 1 MiB (~170 vectors of 1536 dims) instead of ClickHouse's 10 MiB: a merge
# holds a granule of every part it reads, and merging five parts of 10,000 such rows took ~300 MB
# more memory with 10 MiB granules, ~70 MB with 1 MiB (chdb): memory of the ClickHouse server or,
# for the embedded store, of the host's own process. Flush and search figures did not change
# (`make bench`). Fixed when a table is created (ClickHouse refuses to change it later):
# a table made by an earlier release keeps its granules.
MAIN_SETTINGS = "index_granularity_bytes = 1048576"

# Settings every read runs with. The FINAL queries rely on WHERE being applied after FINAL (an
# older live row must never win over a newer tombstone): ClickHouse's default, pinned here in
# case a server profile changes it. mmap reads the hot vector column without a copy per query.
READ_SETTINGS = {
    "optimize_move_to_prewhere_if_final": "0",
    "local_filesystem_read_method": "'mmap'",
    "min_bytes_to_use_mmap_io": "1",
}
# Inserts leave the HNSW index of the approximate-search table to merges (and to the explicit
# MATERIALIZE INDEX after a group is copied in): building a graph on every insert would make a
# flush of 10k rows take seconds. Parts without it are searched exactly until merged.
INSERT_SETTINGS = {"materialize_skip_indexes_on_insert": "0"}
# Where the server has the full-text index: inserts build it (a part without it would be searched
# by reading its tokens), and leave only the HNSW graph (`vectors`) to merges.
TEXT_INDEX_INSERT_SETTINGS = {
    "materialize_skip_indexes_on_insert": "1",
    "exclude_materialize_skip_indexes_on_insert": "'vectors'",
}


# The HNSW graph: bf16 vectors, 64 links per node, a candidate list of 256 while building.
# ClickHouse's defaults (32, 128) gave recall@10 0.92 at 100k random 256-dimension vectors against
# exact search, and 0.83 at 1M; these gave 0.995 at 100k for twice the build time (`make bench`).
HNSW_GRAPH = "'bf16', 64, 256"

# The index table's rows are read a granule of 32 at a time (the candidates' keys, then their
# rows for the exact re-ranking): compressed blocks of at most 8 KiB, instead of ClickHouse's
# 64 KiB-1 MiB, so that reading a granule of `id`, `text` or `properties` does not decompress
# a block of thousands of rows. The re-ranking of 200 candidates among 100,000 rows of 256
# dims: p50 29-31 ms -> 22-23 ms (chdb); the index search itself did not change.
ANN_SETTINGS = "index_granularity = 32, min_compress_block_size = 1024, max_compress_block_size = 8192"


def settings_clause(settings: dict[str, str]) -> str:
    """` SETTINGS a = 1, b = 'x'` for settings whose values are SQL literals (constants of this module)."""
    return " SETTINGS " + ", ".join(f"{name} = {value}" for name, value in settings.items())


@dataclass(frozen=True)
class TableDefinition:
    """A table of the MergeTree family: its columns, engine and clauses."""

    name: str
    columns: str
    engine: str
    engine_arguments: str
    order_by: str
    partition: str = ""
    settings: str = ""


@dataclass(frozen=True)
class Schema:
    """Table names and DDL for one vectors table, on one server (`cluster=""`) or a cluster."""

    table: str
    cluster: str = ""
    # Whether the server has the full-text index (known once the store has asked it).
    text_index: bool = False
    names: dict[str, str] = field(init=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(
            self,
            "names",
            {
                "{table}": self.table,
                "{groups}": f"{self.table}_ann_groups",
                "{tombstones}": f"{self.table}_ann_tombstones",
                "{terms}": f"{self.table}_terms",
            },
        )

    @property
    def main_local(self) -> str:
        """The vectors table that holds the rows (on a cluster, each node's local table)."""
        return self._local(self.table)

    @property
    def on_cluster(self) -> str:
        """` ON CLUSTER '<cluster>'` for DDL on a cluster, else ''."""
        return self._on_cluster()

    def ann(self, dimensions: int) -> str:
        """The approximate-search table of vectors of `dimensions` values."""
        return f"{self.table}_ann_{dimensions}"

    def sql(self, template: str, dimensions: int = 0) -> str:
        """`template` with its table placeholders replaced (`{ann}` needs `dimensions`)."""
        for placeholder, name in self.names.items():
            template = template.replace(placeholder, name)
        return template.replace("{ann}", self.ann(dimensions)) if dimensions else template

    @property
    def read_settings(self) -> dict[str, str]:
        """SETTINGS of every read."""
        if not self.cluster:
            return READ_SETTINGS
        return READ_SETTINGS | {"distributed_product_mode": "'local'", "optimize_skip_unused_shards": "1"}

    @property
    def insert_settings(self) -> dict[str, str]:
        """SETTINGS of every insert."""
        settings = TEXT_INDEX_INSERT_SETTINGS if self.text_index else INSERT_SETTINGS
        if not self.cluster:
            return settings
        return settings | {"distributed_foreground_insert": "1"}

    def create_main(self, text_index: bool = True) -> list[str]:
        """The vectors table (idempotent), with its full-text index where the server has one."""
        columns = (
            MAIN_COLUMNS.rstrip()
            + TEXT_MAIN_COLUMNS
            + (f",\n    INDEX {TEXT_INDEX}\n" if text_index else "\n")
        )
        return self._table(
            TableDefinition(
                self.table,
                columns,
                "ReplacingMergeTree",
                "version, is_deleted",
                KEY,
                settings=MAIN_SETTINGS,
            )
        )

    def add_text_columns(self, text_index: bool = True) -> list[str]:
        """Give a table made by an earlier release the full-text columns (and index): metadata only;
        `materialize_text` then writes them into its parts in the background."""
        statements = []
        for name in (self.table, self._local(self.table)) if self.cluster else (self.table,):
            for column, definition in TEXT_COLUMNS:
                statements.append(
                    f"ALTER TABLE {name}{self._on_cluster()} ADD COLUMN IF NOT EXISTS {column} {definition}"
                )
        if text_index:
            statements.append(self.add_text_index())
        return statements

    def add_text_index(self) -> str:
        """Add the full-text index to a table that has its columns (an earlier release's, or one
        made on a server without the index, since upgraded)."""
        return (
            f"ALTER TABLE {self._local(self.table)}{self._on_cluster()} ADD INDEX IF NOT EXISTS {TEXT_INDEX}"
        )

    def materialize_text(self, index: bool) -> list[str]:
        """Write the full-text columns (and build the index) into the parts written before they
        existed: mutations, not waited for; until they finish, those parts compute the tokens when
        read and are searched without the index (same answers, slower)."""
        table = f"{self._local(self.table)}{self._on_cluster()}"
        statements = [
            f"ALTER TABLE {table} MATERIALIZE COLUMN {column} SETTINGS mutations_sync = 0"
            for column, _ in TEXT_COLUMNS
        ]
        if index:
            statements.append(
                f"ALTER TABLE {table} MATERIALIZE INDEX tokens_index SETTINGS mutations_sync = 0"
            )
        return statements

    def create_terms(self) -> list[str]:
        """The terms table (each token's rows per group, and the group's rows and length under the
        empty term) and the materialized view that counts every row written (idempotent)."""
        terms = self.names["{terms}"]
        return [
            *self._table(
                TableDefinition(
                    terms,
                    "team_id Int64, domain LowCardinality(String), embedding_version UInt32, term String, "
                    "rows UInt64, length UInt64",
                    "SummingMergeTree",
                    "(rows, length)",
                    "(team_id, domain, embedding_version, term)",
                )
            ),
            self._feed(f"{terms}_feed", terms, self.count_terms(self._local(self.table))),
        ]

    def count_terms(self, source: str) -> str:
        """The terms of the rows of `source`, counted per group (what the terms table sums). Whole
        names are left out: one per entity, they would make the vocabulary as long as the group."""
        return (
            "team_id, domain, embedding_version, term, count() AS rows, "
            "sum(if(term = '', tokens_count, 0)) AS length "
            f"FROM {source} ARRAY JOIN arrayConcat([''], arrayFilter(t -> NOT startsWith(t, '{FULL_NAME_MARK}'), "
            "arrayDistinct(tokens))) AS term WHERE is_deleted = 0 GROUP BY team_id, domain, embedding_version, term"
        )

    def create_index_tables(self, dimensions: int) -> list[str]:
        """The approximate-search tables for vectors of `dimensions` values (idempotent).

        `_ann_groups` lists the (team, domain, embedding version) groups searched through the index,
        `ready` once their rows are copied in. `_ann_<dims>` holds the live rows of those groups with
        an HNSW index, partitioned by group: ClickHouse uses a vector index only on parts whose rows
        all pass the other filters, so each group needs parts of its own. Small granules keep the
        exact re-ranking of a few hundred candidates to a few hundred small reads. Its rows are
        never tombstones (the index needs every row to be a vector of its size), so deletes go to
        `_ann_tombstones`. Materialized views on the vectors table feed both with every new row of
        an indexed group, in the same INSERT.
        """
        size = int(dimensions)
        groups, tombstones, ann = self.names["{groups}"], self.names["{tombstones}"], self.ann(size)
        indexed = f"{GROUP_KEY} IN (SELECT team_id, domain, embedding_version FROM {self._local(groups)}"
        source = self._local(self.table)
        return [
            *self._table(
                TableDefinition(
                    groups,
                    "team_id Int64, domain LowCardinality(String), embedding_version UInt32, dimensions UInt32, "
                    "ready UInt8",
                    "ReplacingMergeTree",
                    "ready",
                    GROUP_KEY,
                )
            ),
            *self._table(
                TableDefinition(
                    tombstones,
                    "team_id Int64, domain LowCardinality(String), embedding_version UInt32, id String, "
                    "version UInt64",
                    "ReplacingMergeTree",
                    "version",
                    KEY,
                    settings="index_granularity = 256",
                )
            ),
            *self._table(
                TableDefinition(
                    ann,
                    "team_id Int64, domain LowCardinality(String), embedding_version UInt32, id String, "
                    "version UInt64, vector Array(Float32) CODEC(NONE), text String, properties String, "
                    f"INDEX vectors vector TYPE vector_similarity('hnsw', 'cosineDistance', {size}, {HNSW_GRAPH})",
                    "ReplacingMergeTree",
                    "version",
                    KEY,
                    partition=GROUP_KEY,
                    settings=ANN_SETTINGS,
                )
            ),
            self._feed(
                f"{tombstones}_feed",
                tombstones,
                f"team_id, domain, embedding_version, id, version FROM {source} "
                f"WHERE is_deleted = 1 AND {indexed})",
            ),
            self._feed(
                f"{ann}_feed",
                ann,
                f"team_id, domain, embedding_version, id, version, vector, text, properties FROM {source} "
                f"WHERE is_deleted = 0 AND length(vector) = {size} AND {indexed} WHERE dimensions = {size})",
            ),
        ]

    def materialize_index(self, dimensions: int) -> str:
        """Build the HNSW index of one group's parts (group bound as parameters) in the background.

        A mutation, not waited for (`mutations_sync = 0`; chdb's default waits): building the
        graph of a million vectors takes minutes, and until it is built the group's parts are
        searched exactly.
        """
        return (
            f"ALTER TABLE {self._local(self.ann(int(dimensions)))}{self._on_cluster()} MATERIALIZE INDEX vectors "
            "IN PARTITION ({team_id:Int64}, {domain:String}, {version:UInt32}) SETTINGS mutations_sync = 0"
        )

    def truncate(self, name: str) -> str:
        """Empty a table if it exists (on every node of a cluster)."""
        return f"TRUNCATE TABLE IF EXISTS {self._local(name)}{self._on_cluster()}"

    def _local(self, name: str) -> str:
        return f"{name}_local" if self.cluster else name

    def _on_cluster(self) -> str:
        return f" ON CLUSTER '{self.cluster}'" if self.cluster else ""

    def _table(self, table: TableDefinition) -> list[str]:
        """A table (idempotent); on a cluster, its replicated local table and a Distributed one."""
        local = self._local(table.name)
        engine, arguments = table.engine, table.engine_arguments
        if self.cluster:
            engine = f"Replicated{engine}"
            arguments = f"'/clickhouse/tables/{{shard}}/{{database}}/{local}', '{{replica}}', {arguments}"
        clauses = f"ORDER BY {table.order_by}"
        if table.partition:
            clauses = f"PARTITION BY {table.partition} {clauses}"
        if table.settings:
            clauses += f" SETTINGS {table.settings}"
        statements = [
            f"CREATE TABLE IF NOT EXISTS {local}{self._on_cluster()} ({table.columns}) "
            f"ENGINE = {engine}({arguments}) {clauses}"
        ]
        if self.cluster:
            statements.append(
                f"CREATE TABLE IF NOT EXISTS {table.name}{self._on_cluster()} AS {local} "
                f"ENGINE = Distributed('{self.cluster}', currentDatabase(), '{local}', cityHash64(team_id))"
            )
        return statements

    def _feed(self, view: str, target: str, select: str) -> str:
        return (
            f"CREATE MATERIALIZED VIEW IF NOT EXISTS {view}{self._on_cluster()} "
            f"TO {self._local(target)} AS SELECT {select}"
        )


CREATE_TABLE = Schema("{table}").create_main()[0]
