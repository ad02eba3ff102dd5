"""Rows looked up by key, one index lookup per key on PostgreSQL."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from django.db import connections, models, router

from entity_vectors.bulk.cursor import binary_cursor
from entity_vectors.bulk.values import cast_type, column_name, prepared


@dataclass(frozen=True)
class KeyLookup:
    """`columns` of the rows of `model` matching `fixed` whose `key` is one of the keys asked for (and
    whose `also_in` fields are among their values), as the driver returns them (`rows`).

    On PostgreSQL each key is one index lookup (a LATERAL subquery per key): the plain
    `key = ANY(...)` is planned from the table's statistics, and a table that grew since it was
    last analyzed (every table of a first run) gets its whole `fixed` range scanned instead,
    ~20 ms for 96 keys among 100,000 rows, every batch.
    """

    model: type[models.Model]
    fixed: Mapping[str, Any]
    key: str
    columns: Sequence[str]
    also_in: Mapping[str, Sequence[Any]] = field(default_factory=dict)

    def rows(self, keys: Sequence[Any], lock: bool = False) -> list[tuple[Any, ...]]:
        """The rows of `keys`; `lock`: locked (SELECT ... FOR UPDATE, in primary key order) where the
        database can."""
        if not keys:
            return []
        model = self.model
        connection = connections[router.db_for_write(model) if lock else router.db_for_read(model)]
        where, params = self._where(connection)
        with binary_cursor(connection) as cursor:
            if connection.vendor == "postgresql":
                return self._postgres(cursor, connection, where, params, keys, lock)
            return self._paged(cursor, connection, where, params, keys, lock)

    def _column(self, connection: Any, name: str) -> str:
        return str(connection.ops.quote_name(column_name(self.model._meta.get_field(name))))

    def _prepare(self, connection: Any, name: str, values: Sequence[Any]) -> list[Any]:
        field_ = self.model._meta.get_field(name)
        return [value[0] for value in prepared([field_], [(v,) for v in values], connection)]

    def _where(self, connection: Any) -> tuple[str, list[Any]]:
        """The conditions besides the key, and their parameters."""
        conditions = [f"{self._column(connection, name)} = %s" for name in self.fixed]
        params: list[Any] = [
            value for name, value in self.fixed.items() for value in self._prepare(connection, name, [value])
        ]
        for name, values in self.also_in.items():
            if connection.vendor == "postgresql":
                conditions.append(f"{self._column(connection, name)} = ANY(%s)")
                params.append(self._prepare(connection, name, values))
            else:
                conditions.append(f"{self._column(connection, name)} IN ({', '.join(['%s'] * len(values))})")
                params.extend(self._prepare(connection, name, values))
        return " AND ".join(conditions) or "TRUE", params

    def _selected(self, connection: Any) -> str:
        return ", ".join(f"t.{self._column(connection, name)}" for name in self.columns)

    def _postgres(
        self, cursor: Any, connection: Any, where: str, params: list[Any], keys: Sequence[Any], lock: bool
    ) -> list[tuple[Any, ...]]:
        meta = self.model._meta
        quote = connection.ops.quote_name
        table = quote(meta.db_table)
        cast = cast_type(meta.get_field(self.key), connection)  # type: ignore[arg-type]
        per_key = (
            f"SELECT t.* FROM unnest(%s::{cast}[]) AS k(ev_key) CROSS JOIN LATERAL "
            f"(SELECT * FROM {table} WHERE {where} AND {self._column(connection, self.key)} = k.ev_key "
            "OFFSET 0) AS t"
        )
        key_params = [self._prepare(connection, self.key, keys), *params]
        selected = self._selected(connection)
        if lock:
            assert meta.pk is not None
            pk_column = quote(column_name(meta.pk))
            cursor.execute(
                f"SELECT {selected} FROM {table} AS t WHERE t.{pk_column} = ANY(ARRAY("
                f"SELECT s.{pk_column} FROM ({per_key}) AS s)) ORDER BY t.{pk_column} FOR UPDATE",
                key_params,
            )
        else:
            cursor.execute(f"SELECT {selected} FROM ({per_key}) AS t", key_params)
        return list(cursor.fetchall())

    def _paged(
        self, cursor: Any, connection: Any, where: str, params: list[Any], keys: Sequence[Any], lock: bool
    ) -> list[tuple[Any, ...]]:
        meta = self.model._meta
        quote = connection.ops.quote_name
        assert meta.pk is not None
        order = f" ORDER BY t.{quote(column_name(meta.pk))}" if lock else ""
        found: list[tuple[Any, ...]] = []
        # SQLite binds at most 32766 parameters.
        page_size = max(1, 30_000 - len(params))
        for offset in range(0, len(keys), page_size):
            page = keys[offset : offset + page_size]
            placeholders = ", ".join(["%s"] * len(page))
            cursor.execute(
                f"SELECT {self._selected(connection)} FROM {quote(meta.db_table)} AS t WHERE {where} "
                f"AND {self._column(connection, self.key)} IN ({placeholders}){order}",
                [*params, *self._prepare(connection, self.key, page)],
            )
            found.extend(cursor.fetchall())
        return found
