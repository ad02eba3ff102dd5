"""Bulk writes of per-row values (Django's `bulk_update` is a CASE per row and field).

`update_rows` sets different values on many rows, `upsert_rows` inserts or updates
(`INSERT ... ON CONFLICT`), and `delete_matching` deletes rows matching (key, bound) pairs.
PostgreSQL gets one statement whose rows `v` come from one array parameter per column (`unnest`:
a handful of parameters whatever the number of rows, one round trip), cast to the columns' types.
SQLite gets one prepared statement run for every row (`executemany`): in-process there is no
round trip to save, and a statement SQLite prepares once beats parsing a `VALUES` list of
thousands of rows ~7 times over. Values go through each field's own preparation, skipped for
values that are already what the driver takes (a `str` for a CharField, an `int` for an
IntegerField, ...): that preparation is most of the Python time of a write of 10,000 rows.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from django.conf import settings
from django.db import connections, models, router

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


def _prepare_column(field: Any, values: Sequence[Any], connection: Any) -> Sequence[Any]:
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


def _prepared(fields: Sequence[Any], rows: Sequence[Sequence[Any]], connection: Any) -> list[tuple[Any, ...]]:
    """Every row's values, prepared for the database."""
    if not rows:
        return []
    columns = [
        _prepare_column(field, column, connection)
        for field, column in zip(fields, zip(*rows, strict=True), strict=True)
    ]
    return list(zip(*columns, strict=True))


def _column(field: Any) -> str:
    column = getattr(field, "column", None)
    assert isinstance(column, str), field
    return column


def _cast(field: models.Field[Any, Any], connection: Any) -> str:
    db_type = field.cast_db_type(connection) or field.db_type(connection) or "text"
    if connection.vendor == "postgresql" and isinstance(field, models.JSONField):
        return "jsonb"
    return db_type


def _unnest(
    names: Sequence[str],
    fields: Sequence[models.Field[Any, Any]],
    rows: Sequence[Sequence[Any]],
    connection: Any,
) -> tuple[str, list[Any]]:
    """PostgreSQL: `v(names...)` as a CTE over the rows (one array parameter per column)."""
    prepared = _prepared(fields, rows, connection)
    arrays = [list(column) for column in zip(*prepared, strict=True)] if prepared else [[] for _ in fields]
    unnest = ", ".join(f"%s::{_cast(field, connection)}[]" for field in fields)
    return f"WITH v({', '.join(names)}) AS (SELECT * FROM unnest({unnest}))", arrays


@contextmanager
def binary_cursor(connection: Any, results: bool = False) -> Iterator[Any]:
    """A cursor of `connection` that sends bytes and lists (arrays) as binary parameters (and,
    with `results`, reads binary results) on PostgreSQL; the connection's own cursor elsewhere.

    Django's psycopg backend binds parameters client-side unless told otherwise for the whole
    database: a bytea parameter then travels as escaped text twice its size, which its server
    parses back, and an array is quoted element by element in Python (a batch's per-column arrays
    of 96 rows: ~2 ms a statement as text, ~0.7 ms binary). This cursor binds on the server, like
    the backend's `server_side_binding`, for the statements that move payloads and arrays only;
    it is wrapped like any Django cursor, so query logging and execute wrappers see its statements.
    """
    if connection.vendor != "postgresql":
        with connection.cursor() as cursor:
            yield cursor
        return
    from django.db.backends.postgresql.base import ServerBindingCursor
    from psycopg import pq
    from psycopg.types.array import ListBinaryDumper

    connection.ensure_connection()
    connection.validate_thread_sharing()
    raw: Any = ServerBindingCursor(connection.connection)  # type: ignore[call-arg]
    raw.adapters.register_dumper(list, ListBinaryDumper)
    if results:
        raw.format = pq.Format.BINARY
    wrap = connection.make_debug_cursor if connection.queries_logged else connection.make_cursor
    with wrap(raw) as cursor:
        yield cursor


def _fallback(connection: Any) -> bool:
    return connection.vendor not in ("postgresql", "sqlite")


def select_by_keys(
    model: type[models.Model],
    fixed: Mapping[str, Any],
    key: str,
    keys: Sequence[Any],
    columns: Sequence[str],
    *,
    also_in: Mapping[str, Sequence[Any]] | None = None,
    not_null: Sequence[str] = (),
    lock: bool = False,
) -> list[tuple[Any, ...]]:
    """`columns` of the rows of `model` matching `fixed` whose `key` is one of `keys` (and whose
    `also_in` fields are among their values, `not_null` fields set), as the driver returns them.

    `lock`: the rows are locked (SELECT ... FOR UPDATE, in primary key order) where the database
    can. On PostgreSQL each key is one index lookup (a LATERAL subquery per key): the plain
    `key = ANY(...)` is planned from the table's statistics, and a table that grew since it was
    last analyzed (every table of a first run) gets its whole `fixed` range scanned instead,
    ~20 ms for 96 keys among 100,000 rows, every batch.
    """
    if not keys:
        return []
    connection = connections[router.db_for_write(model) if lock else router.db_for_read(model)]
    meta = model._meta
    quote = connection.ops.quote_name

    def column(name: str) -> str:
        return str(quote(_column(meta.get_field(name))))

    def prepare(name: str, values: Sequence[Any]) -> list[Any]:
        return [value[0] for value in _prepared([meta.get_field(name)], [(v,) for v in values], connection)]

    table = quote(meta.db_table)
    selected = ", ".join(f"t.{column(name)}" for name in columns)
    conditions = [f"{column(name)} = %s" for name in fixed]
    params: list[Any] = [value for name, value in fixed.items() for value in prepare(name, [value])]
    postgres = connection.vendor == "postgresql"
    for name, values in (also_in or {}).items():
        if postgres:
            conditions.append(f"{column(name)} = ANY(%s)")
            params.append(prepare(name, values))
        else:
            conditions.append(f"{column(name)} IN ({', '.join(['%s'] * len(values))})")
            params.extend(prepare(name, values))
    conditions += [f"{column(name)} IS NOT NULL" for name in not_null]
    where = " AND ".join(conditions) or "TRUE"
    key_field = meta.get_field(key)
    pk = meta.pk
    assert pk is not None
    found: list[tuple[Any, ...]] = []
    with binary_cursor(connection) as cursor:
        if postgres:
            cast = _cast(key_field, connection)  # type: ignore[arg-type]
            per_key = (
                f"SELECT t.* FROM unnest(%s::{cast}[]) AS k(ev_key) CROSS JOIN LATERAL "
                f"(SELECT * FROM {table} WHERE {where} AND {column(key)} = k.ev_key OFFSET 0) AS t"
            )
            key_params = [prepare(key, keys), *params]
            if lock:
                pk_column = quote(_column(pk))
                cursor.execute(
                    f"SELECT {selected} FROM {table} AS t WHERE t.{pk_column} = ANY(ARRAY("
                    f"SELECT s.{pk_column} FROM ({per_key}) AS s)) ORDER BY t.{pk_column} FOR UPDATE",
                    key_params,
                )
            else:
                cursor.execute(f"SELECT {selected} FROM ({per_key}) AS t", key_params)
            return list(cursor.fetchall())
        # SQLite binds at most 32766 parameters.
        page_size = max(1, 30_000 - len(params))
        for offset in range(0, len(keys), page_size):
            page = keys[offset : offset + page_size]
            placeholders = ", ".join(["%s"] * len(page))
            order = f" ORDER BY t.{quote(_column(pk))}" if lock else ""
            cursor.execute(
                f"SELECT {selected} FROM {table} AS t WHERE {where} AND {column(key)} IN ({placeholders}){order}",
                [*params, *prepare(key, page)],
            )
            found.extend(cursor.fetchall())
    return found


def update_rows(
    model: type[models.Model], rows: Mapping[Any, Mapping[str, Any]], fields: Sequence[str]
) -> int:
    """Set `fields` on each row of `model` whose primary key is a key of `rows`; returns rows matched."""
    if not rows:
        return 0
    using = router.db_for_write(model)
    connection = connections[using]
    if _fallback(connection):
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
    pk_column = quote(_column(pk))
    with binary_cursor(connection) as cursor:
        if connection.vendor == "sqlite":
            assignments = ", ".join(f"{quote(_column(field))} = %s" for field in targets)
            page = [(*(values[name] for name in fields), key) for key, values in rows.items()]
            cursor.executemany(
                f"UPDATE {table} SET {assignments} WHERE {pk_column} = %s",
                _prepared([*targets, pk], page, connection),
            )
            return int(max(cursor.rowcount, 0))
        names = ["ev_pk", *(f"ev_{index}" for index in range(len(targets)))]
        assignments = ", ".join(
            f"{quote(_column(field))} = v.{name}" for field, name in zip(targets, names[1:], strict=True)
        )
        source, params = _unnest(
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
    if _fallback(connection):
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
    columns = ", ".join(quote(_column(field)) for field in fields)
    conflict = ", ".join(quote(_column(meta.get_field(name))) for name in unique)
    assignments = ", ".join(
        f"{quote(_column(meta.get_field(name)))} = excluded.{quote(_column(meta.get_field(name)))}"
        for name in update
    )
    action = f"DO UPDATE SET {assignments}" if update else "DO NOTHING"
    page = [(*(row[name] for name in names), *defaults) for row in rows]
    with binary_cursor(connection) as cursor:
        if connection.vendor == "sqlite":
            cursor.executemany(
                f"INSERT INTO {quote(meta.db_table)} ({columns}) VALUES ({', '.join(['%s'] * len(fields))}) "
                f"ON CONFLICT ({conflict}) {action}",
                _prepared(fields, page, connection),
            )
            return
        aliases = [f"ev_{index}" for index in range(len(fields))]
        source, params = _unnest(aliases, fields, page, connection)
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
    conditions = " AND ".join(f"{table}.{quote(_column(field))} = %s" for field in fixed_fields)
    fixed_params = list(_prepared(fixed_fields, [list(fixed.values())], connection)[0])
    key_column = f"{table}.{quote(_column(key_field))}"
    bound_column = f"{table}.{quote(_column(bound_field))}"
    with binary_cursor(connection) as cursor:
        if connection.vendor == "postgresql":
            source, params = _unnest(
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
                for pair in _prepared([key_field, bound_field], list(pairs.items()), connection)
            ],
        )
        return int(max(cursor.rowcount, 0))
