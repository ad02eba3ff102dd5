"""Row versions and change sequence numbers: one counter in the Django database.

PostgreSQL: the sequence `entity_vectors_row_version`. Other databases: the `Counter` row named
`row_version`, bumped atomically. Every number is taken when a write is planned, so later plans
win in ClickHouse's ReplacingMergeTree whatever the clocks of the hosts say.
"""

from __future__ import annotations

from django.db import connection, transaction

SEQUENCE = "entity_vectors_row_version"
COUNTER = "row_version"


def next_row_version() -> int:
    """A new number, greater than every number taken before it."""
    return raise_row_version_floor(0)


def raise_row_version_floor(floor: int) -> int:
    """A new number, greater than every number taken before it and greater than `floor`.

    A floor is given when rows written by an earlier release (versioned by their timestamps in
    microseconds) must stay older than every new write.
    """
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            if floor:
                cursor.execute(
                    f"SELECT setval('{SEQUENCE}', GREATEST(%s, (SELECT last_value FROM {SEQUENCE})))", [floor]
                )
            cursor.execute(f"SELECT nextval('{SEQUENCE}')")
            row = cursor.fetchone()
        assert row is not None
        return int(row[0])
    from entity_vectors.models import Counter

    if connection.vendor == "sqlite" and connection.features.can_return_columns_from_insert:
        # One statement (SQLite 3.35+), as atomic as the row lock below: a batch takes a number
        # before anything else, so this is a fixed cost of every batch.
        table = connection.ops.quote_name(Counter._meta.db_table)
        with connection.cursor() as cursor:
            cursor.execute(
                f"INSERT INTO {table} (name, value) VALUES (%s, %s) "
                "ON CONFLICT (name) DO UPDATE SET value = MAX(value, %s) + 1 RETURNING value",
                [COUNTER, floor + 1, floor],
            )
            row = cursor.fetchone()
        assert row is not None
        return int(row[0])
    with transaction.atomic():
        counter, _ = Counter.objects.select_for_update().get_or_create(name=COUNTER)
        counter.value = max(counter.value, floor) + 1
        counter.save(update_fields=["value"])
        return int(counter.value)
