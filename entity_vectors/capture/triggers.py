"""Capture triggers: every insert, update and delete of a registered model's rows is recorded."""

from __future__ import annotations

import threading
from typing import Any

from django.db import connection, models, transaction

from entity_vectors import conf
from entity_vectors.models import EntityChange
from entity_vectors.models.row_version import COUNTER, SEQUENCE

# Mirror columns the pipeline writes with update(): a change of only these is not an edit.
MIRROR_FIELDS = (
    "summary",
    "last_summarized_at",
    "summary_input_hash",
    "summarized_by",
    "embedding_last_synced_at",
    "embedding_version",
)


_installed: set[tuple[str, str, str]] = set()


_install_lock = threading.Lock()


def trigger_name(domain: str) -> str:
    """The name of a domain's capture trigger (and function)."""
    return f"entity_vectors_capture_{domain.replace('-', '_')}"


def _mirror_columns(model: type[models.Model]) -> list[str]:
    columns = []
    for name in MIRROR_FIELDS:
        field = model._meta.get_field(name)
        assert isinstance(field, models.Field) and field.column
        columns.append(field.column)
    return columns


def _quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


def _postgres_watched(cursor: Any, table: str, model: type[models.Model]) -> str:
    """The condition under which an UPDATE of `table` is a change: a column other than the
    mirror columns differs (every column of the table as it is now, the model's or not).

    A column whose type has no `=` of its own (json, point, ...) is compared as text.
    """
    cursor.execute(
        "SELECT a.attname, EXISTS (SELECT 1 FROM pg_operator o WHERE o.oprname = '=' "
        "AND o.oprleft = a.atttypid AND o.oprright = a.atttypid) "
        "FROM pg_attribute a WHERE a.attrelid = to_regclass(%s) AND a.attnum > 0 AND NOT a.attisdropped "
        "ORDER BY a.attnum",
        [_quote(table)],
    )
    mirror = set(_mirror_columns(model))
    conditions = [
        f"NEW.{_quote(name)} IS DISTINCT FROM OLD.{_quote(name)}"
        if comparable
        else f"NEW.{_quote(name)}::text IS DISTINCT FROM OLD.{_quote(name)}::text"
        for name, comparable in cursor.fetchall()
        if name not in mirror
    ]
    return " OR ".join(conditions) or "false"


def _postgres_statements(domain: str, model: type[models.Model], watched: str) -> list[str]:
    """The capture function, its insert/delete trigger, and its update trigger.

    The update trigger's WHEN condition is checked as each row is updated: an update of the
    mirror columns only (the pipeline's own, twice per entity and run) queues no trigger event
    and calls no function. Comparing the whole row as JSON inside the function cost an update
    of 10,000 host rows 110-150 ms more than no trigger; the condition costs 3-4 ms.
    """
    table = connection.ops.quote_name(model._meta.db_table)
    assert model._meta.pk is not None and model._meta.pk.column
    pk = connection.ops.quote_name(model._meta.pk.column)
    name = trigger_name(domain)
    change = EntityChange._meta.db_table
    return [
        f"""
CREATE OR REPLACE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    key text;
BEGIN
    IF TG_OP = 'DELETE' THEN key := OLD.{pk}::text; ELSE key := NEW.{pk}::text; END IF;
    INSERT INTO {change} (domain, entity_id, seq, changed_at)
    VALUES ('{domain}', key, nextval('{SEQUENCE}'), now())
    ON CONFLICT (domain, entity_id) DO UPDATE SET seq = EXCLUDED.seq, changed_at = EXCLUDED.changed_at;
    RETURN NULL;
END
$$""",
        f"CREATE OR REPLACE TRIGGER {name} AFTER INSERT OR DELETE ON {table} "
        f"FOR EACH ROW EXECUTE FUNCTION {name}()",
        f"CREATE OR REPLACE TRIGGER {name}_update AFTER UPDATE ON {table} "
        f"FOR EACH ROW WHEN ({watched}) EXECUTE FUNCTION {name}()",
    ]


def _sqlite_key(model: type[models.Model], ref: str) -> str:
    pk = model._meta.pk
    assert pk is not None
    column = f'{ref}."{pk.column}"'
    if isinstance(pk, models.UUIDField):
        # Django keeps UUIDs as 32 hex digits in SQLite; the key everywhere else has dashes.
        parts = ((1, 8), (9, 4), (13, 4), (17, 4), (21, 12))
        return " || '-' || ".join(f"substr({column}, {start}, {length})" for start, length in parts)
    return f"CAST({column} AS TEXT)"


def _sqlite_statements(domain: str, model: type[models.Model]) -> list[str]:
    table = f'"{model._meta.db_table}"'
    change = EntityChange._meta.db_table
    counter = "entity_vectors_counter"
    mirror = set(_mirror_columns(model))
    watched = ", ".join(
        f'"{field.column}"'
        for field in model._meta.concrete_fields
        if field.column not in mirror and not field.primary_key
    )
    name = trigger_name(domain)

    def body(ref: str) -> str:
        return (
            f"INSERT INTO {counter} (name, value) VALUES ('{COUNTER}', 1) "
            "ON CONFLICT(name) DO UPDATE SET value = value + 1; "
            f"INSERT INTO {change} (domain, entity_id, seq, changed_at) VALUES ('{domain}', "
            f"{_sqlite_key(model, ref)}, (SELECT value FROM {counter} WHERE name = '{COUNTER}'), "
            "strftime('%Y-%m-%d %H:%M:%f', 'now')) "
            "ON CONFLICT(domain, entity_id) DO UPDATE SET seq = excluded.seq, changed_at = excluded.changed_at;"
        )

    return [
        f"CREATE TRIGGER IF NOT EXISTS {name}_insert AFTER INSERT ON {table} BEGIN {body('NEW')} END",
        f"CREATE TRIGGER IF NOT EXISTS {name}_update AFTER UPDATE OF {watched} ON {table} BEGIN {body('NEW')} END",
        f"CREATE TRIGGER IF NOT EXISTS {name}_delete AFTER DELETE ON {table} BEGIN {body('OLD')} END",
    ]


def triggers_supported() -> bool:
    """Whether this database gets capture triggers (and they are wanted)."""
    return conf.change_triggers() and connection.vendor in ("postgresql", "sqlite")


def install_triggers(domain: str, model: type[models.Model]) -> bool:
    """Create (or replace) a domain's capture triggers; False where they are not supported.

    Run after every migration and by each process before its first run of the domain: the
    columns an update is compared on are the table's at that moment (as on SQLite).
    """
    if not triggers_supported():
        return False
    key = (connection.alias, connection.settings_dict.get("NAME") or "", domain)
    with _install_lock:
        if key in _installed:
            return True
        with transaction.atomic(), connection.cursor() as cursor:
            if connection.vendor == "postgresql":
                watched = _postgres_watched(cursor, model._meta.db_table, model)
                statements = _postgres_statements(domain, model, watched)
            else:
                statements = _sqlite_statements(domain, model)
            for statement in statements:
                cursor.execute(statement)
        _installed.add(key)
    return True


def forget_installed() -> None:
    """Forget which triggers this process installed (after a test database is rebuilt)."""
    with _install_lock:
        _installed.clear()
