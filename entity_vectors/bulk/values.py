"""Values prepared for the database, column casts, and the `unnest` source of a bulk statement."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from django.conf import settings
from django.db import models

# Fields whose preparation leaves a value of this exact type as it is (on SQLite and PostgreSQL).
_PLAIN_TYPES: dict[type[Any], type[Any]] = {
    models.CharField: str,
    models.TextField: str,
    models.BooleanField: bool,
    models.IntegerField: int,
    models.SmallIntegerField: int,
    models.BigIntegerField: int,
    models.PositiveIntegerField: int,
    models.PositiveSmallIntegerField: int,
    models.PositiveBigIntegerField: int,
    models.AutoField: int,
    models.BigAutoField: int,
}


def prepare_column(field: Any, values: Sequence[Any], connection: Any) -> Sequence[Any]:
    """`field.get_db_prep_save` of each value, skipped where the values need none.

    Column by column: a column of plain values (all `str` for a CharField, ...) is checked at C
    speed and kept as it is; only other columns pay a Python call per value.
    """

    def slow(value: Any) -> Any:
        return field.get_db_prep_save(value, connection)

    kinds = set(map(type, values))
    plain = _PLAIN_TYPES.get(type(field))
    if plain is not None:
        if kinds <= {plain, type(None)}:
            return values
        return [value if value is None or type(value) is plain else slow(value) for value in values]
    if type(field) is models.DateTimeField and settings.USE_TZ and kinds == {datetime}:
        # Aware datetimes need no preparation but the backend's adaptation (often of one value).
        adapt = connection.ops.adapt_datetimefield_value
        adapted: dict[datetime, Any] = {}
        prepared = []
        for value in values:
            if value.tzinfo is None:
                prepared.append(slow(value))
                continue
            if value not in adapted:
                adapted[value] = adapt(value)
            prepared.append(adapted[value])
        return prepared
    if type(field) is models.JSONField and kinds <= {list, dict}:
        adapt_json = connection.ops.adapt_json_value
        return [adapt_json(value, field.encoder) for value in values]
    return [slow(value) for value in values]


def prepared(fields: Sequence[Any], rows: Sequence[Sequence[Any]], connection: Any) -> list[tuple[Any, ...]]:
    """Every row's values, prepared for the database."""
    if not rows:
        return []
    columns = [
        prepare_column(field, column, connection)
        for field, column in zip(fields, zip(*rows, strict=True), strict=True)
    ]
    return list(zip(*columns, strict=True))


def column_name(field: Any) -> str:
    column = getattr(field, "column", None)
    assert isinstance(column, str), field
    return column


def cast_type(field: models.Field[Any, Any], connection: Any) -> str:
    db_type = field.cast_db_type(connection) or field.db_type(connection) or "text"
    if connection.vendor == "postgresql" and isinstance(field, models.JSONField):
        return "jsonb"
    return db_type


def unnest(
    names: Sequence[str],
    fields: Sequence[models.Field[Any, Any]],
    rows: Sequence[Sequence[Any]],
    connection: Any,
) -> tuple[str, list[Any]]:
    """PostgreSQL: `v(names...)` as a CTE over the rows (one array parameter per column)."""
    values = prepared(fields, rows, connection)
    arrays = [list(column) for column in zip(*values, strict=True)] if values else [[] for _ in fields]
    casts = ", ".join(f"%s::{cast_type(field, connection)}[]" for field in fields)
    return f"WITH v({', '.join(names)}) AS (SELECT * FROM unnest({casts}))", arrays


def generic(connection: Any) -> bool:
    """A database without the PostgreSQL or SQLite statements: Django's bulk methods instead."""
    return connection.vendor not in ("postgresql", "sqlite")
