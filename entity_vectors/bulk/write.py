"""Updates, upserts and deletes of many rows in one statement (see the package docstring)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from django.db import connections, models, router

from entity_vectors.bulk.cursor import binary_cursor
from entity_vectors.bulk.values import column_name, generic, prepared, unnest


def update_rows(
    model: type[models.Model], rows: Mapping[Any, Mapping[str, Any]], fields: Sequence[str]
) -> int:
    """Set `fields` on each row of `model` whose primary key is a key of `rows`; returns rows matched."""
    if not rows:
        return 0
    using = router.db_for_write(model)
    connection = connections[using]
    if generic(connection):
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
    quote = connection.ops.quote_name
    table = quote(meta.db_table)
    pk_column = quote(column_name(pk))
    with binary_cursor(connection) as cursor:
        if connection.vendor == "sqlite":
            assignments = ", ".join(f"{quote(column_name(field))} = %s" for field in targets)
            page = [(*(values[name] for name in fields), key) for key, values in rows.items()]
            cursor.executemany(
                f"UPDATE {table} SET {assignments} WHERE {pk_column} = %s",
                prepared([*targets, pk], page, connection),
            )
            return int(max(cursor.rowcount, 0))
        names = ["ev_pk", *(f"ev_{index}" for index in range(len(targets)))]
        assignments = ", ".join(
            f"{quote(column_name(field))} = v.{name}" for field, name in zip(targets, names[1:], strict=True)
        )
        source, params = unnest(
            names,
            [pk, *targets],  # type: ignore[list-item]
            [(key, *(values[name] for name in fields)) for key, values in rows.items()],
            connection,
        )
        cursor.execute(
            f"{source} UPDATE {table} SET {assignments} FROM v WHERE {table}.{pk_column} = v.ev_pk", params
        )
        return int(max(cursor.rowcount, 0))


def upsert_rows(
    model: type[models.Model], unique: Sequence[str], rows: Sequence[Mapping[str, Any]], update: Sequence[str]
) -> None:
    """Insert `rows` (every field they name); where `unique` already exists, set only `update`
    (nothing, if `update` is empty: the existing row stays as it is).

    A row must name every column without a database default that the model requires.
    """
    if not rows:
        return
    using = router.db_for_write(model)
    connection = connections[using]
    if generic(connection):
        if not update:
            model._default_manager.using(using).bulk_create(
                [model(**row) for row in rows], ignore_conflicts=True
            )
            return
        model._default_manager.using(using).bulk_create(
            [model(**row) for row in rows],
            update_conflicts=True,
            unique_fields=list(unique),
            update_fields=list(update),
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
    defaults = [field.get_default() for field in missing]
    fields += missing
    quote = connection.ops.quote_name
    columns = ", ".join(quote(column_name(field)) for field in fields)
    conflict = ", ".join(quote(column_name(meta.get_field(name))) for name in unique)
    assignments = ", ".join(
        f"{quote(column_name(meta.get_field(name)))} = excluded.{quote(column_name(meta.get_field(name)))}"
        for name in update
    )
    action = f"DO UPDATE SET {assignments}" if update else "DO NOTHING"
    page = [(*(row[name] for name in names), *defaults) for row in rows]
    with binary_cursor(connection) as cursor:
        if connection.vendor == "sqlite":
            cursor.executemany(
                f"INSERT INTO {quote(meta.db_table)} ({columns}) VALUES ({', '.join(['%s'] * len(fields))}) "
                f"ON CONFLICT ({conflict}) {action}",
                prepared(fields, page, connection),
            )
            return
        aliases = [f"ev_{index}" for index in range(len(fields))]
        source, params = unnest(aliases, fields, page, connection)
        cursor.execute(
            f"{source} INSERT INTO {quote(meta.db_table)} ({columns}) SELECT {', '.join(aliases)} FROM v "
            f"ON CONFLICT ({conflict}) {action}",
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
    fixed_fields = [meta.get_field(name) for name in fixed]
    quote = connection.ops.quote_name
    table = quote(meta.db_table)
    conditions = " AND ".join(f"{table}.{quote(column_name(field))} = %s" for field in fixed_fields)
    fixed_params = list(prepared(fixed_fields, [list(fixed.values())], connection)[0])
    key_column = f"{table}.{quote(column_name(key_field))}"
    bound_column = f"{table}.{quote(column_name(bound_field))}"
    with binary_cursor(connection) as cursor:
        if connection.vendor == "postgresql":
            source, params = unnest(
                ["ev_key", "ev_bound"], [key_field, bound_field], list(pairs.items()), connection
            )
            cursor.execute(
                f"{source} DELETE FROM {table} USING v WHERE {conditions} "
                f"AND {key_column} = v.ev_key AND {bound_column} <= v.ev_bound",
                [*params, *fixed_params],
            )
            return int(max(cursor.rowcount, 0))
        cursor.executemany(
            f"DELETE FROM {table} WHERE {conditions} AND {key_column} = %s AND {bound_column} <= %s",
            [
                (*fixed_params, *pair)
                for pair in prepared([key_field, bound_field], list(pairs.items()), connection)
            ],
        )
        return int(max(cursor.rowcount, 0))
