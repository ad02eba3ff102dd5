"""The SQL both stores run, as templates: `{table}` is the table, `{name:Type}` a bound parameter.

A key is (team_id, domain, embedding_version, id); its latest row is the one with the highest
`version`. Every read picks the latest row per key first (`_LATEST_KEYS`) and only then drops
tombstones, so an older live row never wins over a newer tombstone before a merge.
"""

from __future__ import annotations

STRUCTURE = (
    "domain LowCardinality(String), team_id Int64, id String, vector Array(Float32), text String, "
    "properties String, embedding_version UInt32, timestamp DateTime64(6, 'UTC'), version UInt64, "
    "is_deleted UInt8"
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
    version UInt64,
    is_deleted UInt8
)
ENGINE = ReplacingMergeTree(version, is_deleted)
ORDER BY (team_id, domain, embedding_version, id)
"""

TABLE_COLUMNS = "SELECT name FROM system.columns WHERE database = currentDatabase() AND table = {name:String}"

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

# The latest row of each key of one team, domain and version: (id, version) pairs.
_LATEST_KEYS = """
SELECT id, max(version) FROM {table}
WHERE team_id = {team_id:Int64} AND domain = {domain:String} AND embedding_version = {version:UInt32}
GROUP BY id
"""

# The team's live rows: the latest of each key, tombstones dropped after it is chosen, one row
# per id even if the same row was inserted twice and not merged yet.
_LIVE_ROWS = f"""
SELECT id, team_id, domain, text, properties, vector
FROM {{table}}
WHERE team_id = {{team_id:Int64}} AND domain = {{domain:String}} AND embedding_version = {{version:UInt32}}
  AND (id, version) IN ({_LATEST_KEYS})
  AND is_deleted = 0
LIMIT 1 BY id
"""

# How much of the query a row's name and text contain: the share of the query's character
# 4-grams found (partial names, misspellings); a query shorter than a 4-gram must appear whole.
_TEXT_SCORE = """
if(lengthUTF8({q:String}) < 4,
   toFloat64(positionCaseInsensitiveUTF8(concat(JSONExtractString(properties, 'name'), ' ', text), {q:String}) > 0),
   ngramSearchCaseInsensitiveUTF8(concat(JSONExtractString(properties, 'name'), ' ', text), {q:String}))
"""

SEARCH = f"""
SELECT id, team_id, domain, text, properties, cosineDistance(vector, {{query:Array(Float32)}}) AS distance
FROM ({_LIVE_ROWS})
WHERE length(vector) = {{dimensions:UInt32}}
ORDER BY distance ASC, id ASC
LIMIT {{limit:UInt32}}
"""

TEXT_SEARCH = f"""
SELECT id, team_id, domain, text, properties, 1 - score AS distance
FROM (SELECT *, {_TEXT_SCORE} AS score FROM ({_LIVE_ROWS}))
WHERE score > 0
ORDER BY score DESC, id ASC
LIMIT {{limit:UInt32}}
"""

# Reciprocal rank fusion of the vector and text rankings (k = 60, as in the original paper).
HYBRID_SEARCH = f"""
SELECT id, team_id, domain, text, properties, distance
FROM (
    SELECT *,
           1 / (60 + rank() OVER (ORDER BY distance ASC)) +
           if(score > 0, 1 / (60 + rank() OVER (ORDER BY score DESC)), 0) AS fused
    FROM (
        SELECT id, team_id, domain, text, properties,
               cosineDistance(vector, {{query:Array(Float32)}}) AS distance, {_TEXT_SCORE} AS score
        FROM ({_LIVE_ROWS})
        WHERE length(vector) = {{dimensions:UInt32}}
    )
)
ORDER BY fused DESC, distance ASC, id ASC
LIMIT {{limit:UInt32}}
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
