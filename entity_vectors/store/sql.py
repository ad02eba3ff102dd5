"""The SQL both stores run, as templates: `{table}` is a table, `{name:Type}` a bound parameter.

A key is (team_id, domain, embedding_version, id); its latest row is the one with the highest
`version`. Searches read a group (one team, domain and embedding version) with FINAL, which is
ReplacingMergeTree's own rule applied at read time, before any merge: the latest row of each key
wins and a key whose latest row is a tombstone is dropped. Only sorting-key columns are filtered
before FINAL; every other condition is a WHERE, applied after it (`READ_SETTINGS` pins that), so
an older live row never wins over a newer tombstone. Large groups are searched through the HNSW
index of their own table (`APPROXIMATE_SEARCH`), with the same rules applied to its candidates;
full-text candidates, found through the text index, are checked against every row of their keys
(`TEXT_HITS`).
"""

from __future__ import annotations

STRUCTURE = (
    "domain LowCardinality(String), team_id Int64, id String, vector Array(Float32), text String, "
    "properties String, embedding_version UInt32, timestamp DateTime64(6, 'UTC'), version UInt64, "
    "is_deleted UInt8"
)

# A table's columns with their codecs ('' = the default), to know whether it needs migrating.
TABLE_COLUMNS = """
SELECT name, compression_codec FROM system.columns WHERE database = currentDatabase() AND table = {name:String}
"""
# Whether a table has the full-text index.
TEXT_INDEX_PRESENT = """
SELECT name FROM system.data_skipping_indices
WHERE database = currentDatabase() AND table = {name:String} AND name = 'tokens_index'
"""
# Tables whose names match a LIKE pattern (the index tables of a vectors table).
INDEX_TABLES = "SELECT name FROM system.tables WHERE database = currentDatabase() AND name LIKE {name:String}"

# A table made by the first release has no `version` column and is versioned by `timestamp`:
# copy it into the new layout (its rows versioned by their timestamps in microseconds, which
# keeps their order), then swap the names. The old table is kept as `<table>_pre_version`.
MIGRATE_COPY = """
INSERT INTO {new} (domain, team_id, id, vector, text, properties, embedding_version, timestamp, version, is_deleted)
SELECT domain, team_id, id, vector, text, properties, embedding_version, timestamp,
       toUInt64(toUnixTimestamp64Micro(timestamp)), is_deleted
FROM {old}
"""
MAX_VERSION = "SELECT max(version) FROM {table}"

_GROUP = "team_id = {team_id:Int64} AND domain = {domain:String} AND embedding_version = {version:UInt32}"

# The query vector travels as the hex of its float32 bytes: a 1536-value array as text takes
# longer to format and parse than the search of a small team takes to run.
_QUERY = "reinterpret(unhex({query:String}), 'Array(Float32)')"

# Exact: every live row of the group, nearest first. Text and properties are read for the rows
# returned only (ClickHouse materializes them after the ORDER BY ... LIMIT).
SEARCH = f"""
SELECT id, team_id, domain, text, properties, cosineDistance(vector, {_QUERY}) AS distance
FROM {{table}} FINAL
WHERE {_GROUP} AND length(vector) = {{dimensions:UInt32}}
ORDER BY distance ASC, id ASC
LIMIT {{limit:UInt32}}
"""

# Full-text search (see `fulltext`), in two statements:
# TEXT_TERMS: the group's vocabulary entries a query may stand for (its words, abbreviations'
# expansions, words they begin, stems, misspellings' originals), with their row counts, and the
# group's rows and length (the empty term). Name-marked terms are matched on their bare word.
TEXT_TERMS = """
WITH if(startsWith(term, '^'), substring(term, 2), term) AS bare
SELECT term, sum(rows), sum(length) FROM {terms}
WHERE team_id = {team_id:Int64} AND domain = {domain:String} AND embedding_version = {version:UInt32}
  AND (term = ''
       OR has({exact:Array(String)}, bare)
       OR arrayExists(p -> startsWith(bare, p), {prefixes:Array(String)})
       OR arrayExists(p -> startsWith(term, p), {name_prefixes:Array(String)})
       OR (lengthUTF8(bare) BETWEEN {min_length:UInt32} AND {max_length:UInt32}
           AND arrayExists(w -> damerauLevenshteinDistance(bare, w) <= 2, {fuzzy:Array(String)})))
GROUP BY term
"""

# TEXT_HITS: the candidates are the `{candidates}` best keys of the group holding any of the
# query's terms, found and scored through the text index alone (`{score}` and `{condition}` are
# built by `fulltext.score_sql` from `has(tokens, {tN:String})` calls, answered from the index's
# postings, so the team is not scanned), each with the version and score of its newest matching
# row. Rows as written: a key's newest row may not match (renamed, deleted). So the statement
# returns, with the candidates, every row of their keys: the store keeps a key only if its latest
# row is that matching row and is live (the latest-row rules, before any merge). Columns: part
# (1), id, version, is_deleted, team_id, domain, text, properties, number (0), candidates (id,
# version, score: the same on every row).
TEXT_HITS = f"""
SELECT 1 AS part, id, version, is_deleted, team_id, domain, text, properties, toFloat64(0) AS number,
       candidates
FROM (
    WITH (
        SELECT groupArray((id, newest, score)) FROM (
            SELECT id, max(version) AS newest, argMax({{score}}, version) AS score
            FROM {{table}} WHERE {_GROUP} AND {{condition}}
            GROUP BY id
            ORDER BY score DESC, id ASC
            LIMIT {{candidates:UInt32}}
        )
    ) AS candidates
    SELECT id, version, is_deleted, team_id, domain, text, properties, candidates FROM {{table}}
    WHERE {_GROUP} AND has(arrayMap(candidate -> candidate.1, candidates), id)
)
"""

# Hybrid search of a group searched exactly: the vector ranking (part 0, `SEARCH` with the
# columns of TEXT_HITS, the distance as the number) and TEXT_HITS in one statement, so that the
# store makes one round trip for both.
VECTOR_AND_TEXT_HITS = f"""
SELECT 0 AS part, id, toUInt64(0) AS version, toUInt8(0) AS is_deleted, team_id, domain, text, properties,
       distance AS number, CAST([], 'Array(Tuple(String, UInt64, Float64))') AS candidates
FROM (
    SELECT id, team_id, domain, text, properties, cosineDistance(vector, {_QUERY}) AS distance
    FROM {{table}} FINAL
    WHERE {_GROUP} AND length(vector) = {{dimensions:UInt32}}
    ORDER BY distance ASC, id ASC
    LIMIT {{limit:UInt32}}
)
UNION ALL
{TEXT_HITS}
"""

# Approximate, for a group in the index table `{ann}`, in two statements (the candidates'
# query must run once: inlined twice as a subquery, ClickHouse would search the index twice).
# CANDIDATES: the keys of the index's nearest rows. APPROXIMATE_SEARCH: for each candidate key,
# its newest row in `{ann}` and its newest tombstone decide (the newest wins, so a superseded or
# deleted candidate is dropped, and a key whose newer row the index did not return is ranked by
# that newer row); the survivors are ranked by their exact distance. The candidates' rows are
# read once, by key, with their distances. Every statement reads the group only, whose rows are
# a partition of `{ann}`.
CANDIDATES = f"""
SELECT id FROM {{ann}} WHERE {_GROUP}
ORDER BY cosineDistance(vector, {_QUERY})
LIMIT {{candidates:UInt32}}
"""

APPROXIMATE_SEARCH = f"""
SELECT id, team_id, domain, text, properties, distance FROM (
    SELECT * FROM (
        SELECT id, version, 1 AS live, team_id, domain, text, properties,
            cosineDistance(vector, {_QUERY}) AS distance
        FROM {{ann}} WHERE {_GROUP} AND id IN {{ids:Array(String)}}
        UNION ALL
        SELECT id, version, 0 AS live, team_id, domain, '' AS text, '' AS properties, 0 AS distance
        FROM {{tombstones}} WHERE {_GROUP} AND id IN {{ids:Array(String)}}
    )
    ORDER BY id ASC, version DESC, live ASC
    LIMIT 1 BY id
)
WHERE live = 1
ORDER BY distance ASC, id ASC
LIMIT {{limit:UInt32}}
"""

# Groups in the index and whether their rows are copied in.
INDEXED_GROUPS = """
SELECT team_id, domain, embedding_version, any(dimensions), max(ready) FROM {groups}
GROUP BY team_id, domain, embedding_version
"""
GROUP_STATE = """
INSERT INTO {groups} (team_id, domain, embedding_version, dimensions, ready)
SELECT {team_id:Int64}, {domain:String}, {version:UInt32}, {dimensions:UInt32}, {ready:UInt8}
"""
GROUP_ROWS = f"SELECT count() FROM {{table}} WHERE {_GROUP}"
# Copy a group into the index tables: its latest live rows, and its tombstones (a row of the
# group inserted late, with an older version, must still lose to them).
COPY_GROUP_ROWS = f"""
INSERT INTO {{ann}} (team_id, domain, embedding_version, id, version, vector, text, properties)
SELECT team_id, domain, embedding_version, id, version, vector, text, properties
FROM {{table}} FINAL WHERE {_GROUP} AND length(vector) = {{dimensions:UInt32}}
"""
COPY_GROUP_TOMBSTONES = f"""
INSERT INTO {{tombstones}} (team_id, domain, embedding_version, id, version)
SELECT team_id, domain, embedding_version, id, version FROM {{table}} WHERE {_GROUP} AND is_deleted = 1
"""

# Latest rows of given keys, for rewriting a row with new properties (or in a new team) without
# embedding its unchanged text again.
VECTORS = """
SELECT team_id, id, embedding_version, argMax(vector, version), argMax(is_deleted, version), max(version)
FROM {table}
WHERE domain = {domain:String} AND has({keys:Array(Tuple(Int64, String, UInt32))}, (team_id, id, embedding_version))
GROUP BY team_id, id, embedding_version
"""

LIVE_KEYS_PAGE = """
SELECT team_id, id, embedding_version
FROM {table}
WHERE domain = {domain:String} AND (team_id, id, embedding_version) > ({after_team:Int64}, {after_id:String}, {after_version:UInt32})
GROUP BY team_id, id, embedding_version
HAVING argMax(is_deleted, version) = 0
ORDER BY team_id, id, embedding_version
LIMIT {limit:UInt32}
"""

LATEST_ROWS = """
SELECT team_id, domain, id, embedding_version,
       argMax(text, version), argMax(properties, version), argMax(vector, version),
       argMax(timestamp, version), max(version), argMax(is_deleted, version)
FROM {table}
WHERE domain = {domain:String}
GROUP BY team_id, domain, id, embedding_version
ORDER BY team_id, id, embedding_version
"""

COUNT_ROWS = "SELECT count() FROM {table} WHERE domain = {domain:String}"
