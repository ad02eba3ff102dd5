"""Bulk reads and writes of per-row values (Django's `bulk_update` is a CASE per row and field).

`update_rows` sets different values on many rows, `upsert_rows` inserts or updates
(`INSERT ... ON CONFLICT`), and `delete_matching` deletes rows matching (key, bound) pairs.
PostgreSQL gets one statement whose rows `v` come from one array parameter per column (`unnest`:
a handful of parameters whatever the number of rows, one round trip), cast to the columns' types.
SQLite gets one prepared statement run for every row (`executemany`): in-process there is no
round trip to save, and a statement SQLite prepares once beats parsing a `VALUES` list of
thousands of rows ~7 times over. Values go through each field's own preparation, skipped for
values that are already what the driver takes (a `str` for a CharField, an `int` for an
IntegerField, ...): that preparation is most of the Python time of a write of 10,000 rows.
`KeyLookup` reads rows by key, one index lookup per key on PostgreSQL.

The package: `values` prepares values and casts, `cursor` the binary cursor on PostgreSQL,
`read` looks rows up by key, `write` updates, upserts and deletes them.
"""

from __future__ import annotations

from entity_vectors.bulk.cursor import binary_cursor
from entity_vectors.bulk.read import KeyLookup
from entity_vectors.bulk.write import delete_matching, update_rows, upsert_rows

__all__ = ["KeyLookup", "binary_cursor", "delete_matching", "update_rows", "upsert_rows"]
