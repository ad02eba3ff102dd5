"""Bulk writes of per-row values in one statement (Django's `bulk_update` is a CASE per row and field).

`update_rows` sets different values on many rows (`UPDATE ... FROM v`), `upsert_rows` inserts or
updates (`INSERT ... ON CONFLICT`), and `delete_matching` deletes rows matching (key, bound)
pairs. The rows `v` come from one array parameter per column on PostgreSQL (`unnest`: a handful
of parameters whatever the number of rows) and from a `VALUES` list on SQLite (3.33+). Values go
through each field's own preparation and are cast to the column's type.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from django.db import connections, models, router

# Rows per statement: PostgreSQL takes 65535 parameters, SQLite 32766 (3.32+).
_MAX_PARAMS = 30_000
_DELETE_PAGE = 500


def _column(field: Any) -> str:
    column = getattr(field, "column", None)
    assert isinstance(column, str), field
    return column


def _cast(field: models.Field[Any, Any], connection: Any) -> str:
    db_type = field.cast_db_type(connection) or field.db_type(connection) or "text"
    if connection.vendor == "postgresql" and isinstance(field, models.JSONField):
        return "jsonb"
    return db_type


def _values(
    fields: Sequence[models.Field[Any, Any]], rows: Sequence[Sequence[Any]], connection: Any
) -> tuple[str, list[Any]]:
    placeholders = "(" + ", ".join(f"CAST(%s AS {_cast(field, connection)})" for field in fields) + ")"
    params: list[Any] = []
    for row in rows:
        for field, value in zip(fields, row, strict=True):
            params.append(field.get_db_prep_save(value, connection))
    return ", ".join([placeholders] * len(rows)), params


def _source(
    names: Sequence[str], fields: Sequence[models.Field[Any, Any]], rows: Sequence[Sequence[Any]], connection: Any
) -> tuple[str, list[Any]]:
    """`v(names...)` as a CTE over the rows, and its parameters."""
    if connection.vendor == "postgresql":
        arrays: list[list[Any]] = [[] for _ in fields]
        for row in rows:
            for column, field, value in zip(arrays, fields, row, strict=True):
                column.append(field.get_db_prep_save(value, connection))
        unnest = ", ".join(f"%s::{_cast(field, connection)}[]" for field in fields)
        return f"WITH v({', '.join(names)}) AS (SELECT * FROM unnest({unnest}))", arrays
    values_sql, params = _values(fields, rows, connection)
    return f"WITH v({', '.join(names)}) AS (VALUES {values_sql})", params


def _per_statement(connection: Any, columns: int, cap: int = 1_000_000) -> int:
    """Rows per statement: PostgreSQL's arrays have no parameter limit; SQLite binds every value."""
    return cap if connection.vendor == "postgresql" else max(1, _MAX_PARAMS // columns)


def update_rows(model: type[models.Model], rows: Mapping[Any, Mapping[str, Any]], fields: Sequence[str]) -> int:
    """Set `fields` on each row of `model` whose primary key is a key of `rows`; returns rows matched."""
    if not rows:
        return 0
    using = router.db_for_write(model)
    connection = connections[using]
    if connection.vendor not in ("postgresql", "sqlite"):
        objects = []
        for pk, values in rows.items():
            instance = model(pk=pk)
            for name in fields:
                setattr(instance, name, values[name])
            objects.append(instance)
        return model._default_manager.using(using).bulk_update(objects, list(fields), batch_size=500)
    meta = model._meta
    pk = meta.pk
    assert pk is not None
    targets = [meta.get_field(name) for name in fields]
    columns: list[models.Field[Any, Any]] = [pk, *targets]  # type: ignore[list-item]
    quote = connection.ops.quote_name
    table = quote(meta.db_table)
    names = ["ev_pk", *(f"ev_{index}" for index in range(len(targets)))]
    assignments = ", ".join(f"{quote(_column(field))} = v.{name}" for field, name in zip(targets, names[1:], strict=True))
    items = list(rows.items())
    per_statement = _per_statement(connection, len(columns))
    matched = 0
    with connection.cursor() as cursor:
        for offset in range(0, len(items), per_statement):
            page = [(key, *(values[name] for name in fields)) for key, values in items[offset : offset + per_statement]]
            source, params = _source(names, columns, page, connection)
            cursor.execute(
                f"{source} UPDATE {table} SET {assignments} FROM v WHERE {table}.{quote(_column(pk))} = v.ev_pk",
                params,
            )
            matched += max(cursor.rowcount, 0)
    return matched


def upsert_rows(
    model: type[models.Model], unique: Sequence[str], rows: Sequence[Mapping[str, Any]], update: Sequence[str]
) -> None:
    """Insert `rows` (every field they name); where `unique` already exists, set only `update`.

    A row must name every column without a database default that the model requires.
    """
    if not rows:
        return
    using = router.db_for_write(model)
    connection = connections[using]
    if connection.vendor not in ("postgresql", "sqlite"):
        model._default_manager.using(using).bulk_create(
            [model(**row) for row in rows], update_conflicts=True, unique_fields=list(unique), update_fields=list(update)
        )
        return
    meta = model._meta
    names = list(rows[0])
    fields: list[Any] = [meta.get_field(name) for name in names]
    missing = [
        field
        for field in meta.concrete_fields
        if field.name not in names and not field.primary_key and field.column
    ]
    names += [field.name for field in missing]
    fields += missing
    quote = connection.ops.quote_name
    columns = ", ".join(quote(_column(field)) for field in fields)
    conflict = ", ".join(quote(_column(meta.get_field(name))) for name in unique)
    assignments = ", ".join(
        f"{quote(_column(meta.get_field(name)))} = excluded.{quote(_column(meta.get_field(name)))}" for name in update
    )
    aliases = [f"ev_{index}" for index in range(len(fields))]
    per_statement = _per_statement(connection, len(fields))
    with connection.cursor() as cursor:
        for offset in range(0, len(rows), per_statement):
            page = [
                [row[name] if name in row else field.get_default() for name, field in zip(names, fields, strict=True)]
                for row in rows[offset : offset + per_statement]
            ]
            source, params = _source(aliases, fields, page, connection)
            # `WHERE true`: SQLite needs it to tell the upsert clause from a join's ON.
            cursor.execute(
                f"{source} INSERT INTO {quote(meta.db_table)} ({columns}) SELECT {', '.join(aliases)} FROM v "
                f"WHERE true ON CONFLICT ({conflict}) DO UPDATE SET {assignments}",
                params,
            )


def delete_matching(
    model: type[models.Model], fixed: Mapping[str, Any], key: str, bound: str, pairs: Mapping[Any, Any]
) -> int:
    """Delete rows of `model` matching `fixed` whose `key` is in `pairs` and `bound` <= its value there."""
    if not pairs:
        return 0
    using = router.db_for_write(model)
    connection = connections[using]
    meta = model._meta
    key_field, bound_field = meta.get_field(key), meta.get_field(bound)
    assert isinstance(key_field, models.Field) and isinstance(bound_field, models.Field)
    quote = connection.ops.quote_name
    table = quote(meta.db_table)
    conditions = " AND ".join(f"{table}.{quote(_column(meta.get_field(name)))} = %s" for name in fixed)
    fixed_params = [
        meta.get_field(name).get_db_prep_save(value, connection)  # type: ignore[union-attr]
        for name, value in fixed.items()
    ]
    items = list(pairs.items())
    key_column = f"{table}.{quote(_column(key_field))}"
    bound_column = f"{table}.{quote(_column(bound_field))}"
    deleted = 0
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            source, params = _source(["ev_key", "ev_bound"], [key_field, bound_field], items, connection)
            cursor.execute(
                f"{source} DELETE FROM {table} USING v WHERE {conditions} "
                f"AND {key_column} = v.ev_key AND {bound_column} <= v.ev_bound",
                [*params, *fixed_params],
            )
            return int(max(cursor.rowcount, 0))
        # Small pages: each row's bound is looked up in the VALUES list, which has no index.
        for offset in range(0, len(items), _DELETE_PAGE):
            page = items[offset : offset + _DELETE_PAGE]
            source, params = _source(["ev_key", "ev_bound"], [key_field, bound_field], page, connection)
            keys = [key_field.get_db_prep_save(item[0], connection) for item in page]
            cursor.execute(
                # The IN list lets the database use its index on the key; the VALUES hold each bound.
                f"{source} DELETE FROM {table} WHERE {conditions} "
                f"AND {key_column} IN ({', '.join(['%s'] * len(keys))}) "
                f"AND {bound_column} <= (SELECT v.ev_bound FROM v WHERE v.ev_key = {key_column})",
                [*params, *fixed_params, *keys],
            )
            deleted += max(cursor.rowcount, 0)
    return deleted
