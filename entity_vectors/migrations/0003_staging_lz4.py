"""Staged payloads compressed with LZ4 on a PostgreSQL server built with it.

0002 stored the vectors uncompressed because pglz, PostgreSQL's default, costs more than it saves
on dense float32. LZ4 gives up on such data about as fast as storing it as it is (a 600 KB
payload of dense vectors: 2.4 ms to write with LZ4, 2.5 ms uncompressed, 2.8 ms with pglz), and
compresses sparse vectors (the offline hashing embedder's: 0.7 ms instead of 2.4 ms) and the JSON
metadata at a fraction of pglz's cost. A server built without LZ4 keeps what it had.
"""

from django.db import migrations

_TABLE = "entity_vectors_syncrunbatch"


def compress_with_lz4(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    # feature_not_supported: "compression method lz4 not supported" (a server built without it).
    schema_editor.execute(
        f"DO $$ BEGIN ALTER TABLE {_TABLE} ALTER COLUMN rows SET COMPRESSION lz4, "
        "ALTER COLUMN vectors SET COMPRESSION lz4, ALTER COLUMN vectors SET STORAGE EXTENDED; "
        "EXCEPTION WHEN feature_not_supported THEN NULL; END $$"
    )


def back_to_uncompressed(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(
            f"ALTER TABLE {_TABLE} ALTER COLUMN rows SET COMPRESSION default, "
            "ALTER COLUMN vectors SET COMPRESSION default, ALTER COLUMN vectors SET STORAGE EXTERNAL"
        )


class Migration(migrations.Migration):
    dependencies = [("entity_vectors", "0002_ledger_versions_changes")]

    operations = [migrations.RunPython(compress_with_lz4, back_to_uncompressed)]
