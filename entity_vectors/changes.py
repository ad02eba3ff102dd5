"""The change log: which entities changed since the pipeline last looked, however they changed.

Database triggers on each registered model's table (PostgreSQL and SQLite) record every insert,
update and delete in `EntityChange`, so `QuerySet.update()`, raw SQL and cascades are seen as
well as `save()`. An update that only touches the mirror columns (`summary`, ...) is not a change.
On other databases, or with ENTITY_VECTORS_CHANGE_TRIGGERS=false, `post_save` and `post_delete`
signals record what goes through the ORM, and the sweeper's reconcile catches the rest.

After a transaction that changed an entity commits, the fast lane is asked (by task name, so this
module imports no task) to process the changed entities within seconds.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Any

import structlog
from django.db import connection, models, transaction
from django.db.models import F, Q
from django.db.models.signals import post_delete, post_save
from django.utils import timezone

from entity_vectors import conf
from entity_vectors.bulk import delete_matching, select_by_keys, upsert_rows
from entity_vectors.models import EntityChange
from entity_vectors.versions import COUNTER, SEQUENCE, next_row_version

log = structlog.get_logger("entity_vectors")

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


def key_of(pk: Any) -> str:
    """The text form of a primary key used everywhere outside the host's table (ClickHouse `id`)."""
    return str(pk)


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


def record_changes(domain: str, keys: Iterable[str], keep_existing: bool = False) -> int:
    """Mark entities as changed now (signals without triggers, the fast lane, commands).

    `keep_existing`: an entity already in the log keeps its entry (queued work, not a new change).
    """
    keys = list(dict.fromkeys(keys))
    if not keys:
        return 0
    seq = next_row_version()
    now = timezone.now()
    # Plain rows, not model instances: a run's first selection queues every entity of a domain.
    upsert_rows(
        EntityChange,
        ["domain", "entity_id"],
        [{"domain": domain, "entity_id": key, "seq": seq, "changed_at": now} for key in keys],
        [] if keep_existing else ["seq", "changed_at"],
    )
    return len(keys)


def pending_changes(domain: str, limit: int | None = None, fresh: bool = False) -> dict[str, int]:
    """Changed entities of a domain not yet handled by every tracked version: key -> sequence, oldest
    change first.

    `fresh` (the fast lane): only changes no batch has set aside since (`hold_changes`), so that
    entities that cannot go now never fill the window that a new edit needs.
    """
    rows = EntityChange.objects.filter(domain=domain)
    if fresh:
        rows = rows.filter(Q(held_seq__isnull=True) | Q(held_seq__lt=F("seq")))
    ordered = rows.order_by("seq").values_list("entity_id", "seq")
    if limit is not None:
        ordered = ordered[:limit]
    return {str(entity_id): int(seq) for entity_id, seq in ordered}


def hold_changes(domain: str, held: dict[str, int]) -> None:
    """Set aside, for the fast lane, the changes of entities that cannot go now (parked, failed,
    over budget, left to a Batch API job), as of the change each was seen at: a newer change of the
    entity makes it fresh again. Runs still take them."""
    if not held:
        return
    seen = Q()
    for key, seq in held.items():
        seen |= Q(entity_id=key, seq=seq)
    EntityChange.objects.filter(domain=domain).filter(seen).update(held_seq=F("seq"))


def change_seqs(domain: str, keys: Iterable[str]) -> dict[str, int]:
    """The current change sequence number of each key that has one."""
    rows = select_by_keys(EntityChange, {"domain": domain}, "entity_id", list(keys), ["entity_id", "seq"])
    return {str(entity_id): int(seq) for entity_id, seq in rows}


def clear_changes(domain: str, handled: dict[str, int]) -> None:
    """Drop change rows handled up to the given sequence numbers (a newer change stays)."""
    delete_matching(EntityChange, {"domain": domain}, "entity_id", "seq", handled)


# -- signals: the fallback recorder and the fast lane's trigger ------------------------------------


def _after_commit(domain: str) -> None:
    """Queue the fast lane for `domain` once the current transaction commits (once per transaction)."""
    if not conf.fast_lane() or conf.inline_by_default():
        return
    current = transaction.get_connection()
    if any(getattr(entry[1], "fast_lane_domain", None) == domain for entry in current.run_on_commit):
        return

    def kick() -> None:
        try:
            from entity_vectors.fastlane import kick_fast_lane

            kick_fast_lane(domain)
        except Exception as exc:  # the change is in the log: the next run takes it
            log.warning("sync.fast_lane_unavailable", domain=domain, error=conf.redact(str(exc)))

    kick.fast_lane_domain = domain  # type: ignore[attr-defined]
    transaction.on_commit(kick)


def watch_model(domain: str, model: type[models.Model]) -> None:
    """Record a registered model's changes made through the ORM, and kick the fast lane.

    Per model, not for every model: Django gives up its fast (SQL-only) cascade delete for any
    model with a delete receiver, and the host's other models must keep it.
    """

    def on_save(sender: type[Any], instance: Any, **kwargs: Any) -> None:
        if kwargs.get("raw"):
            return  # loaddata
        update_fields = kwargs.get("update_fields")
        if update_fields is not None and set(update_fields) <= set(MIRROR_FIELDS):
            return
        key = key_of(instance.pk)
        if not triggers_supported():
            record_changes(domain, [key])
        _after_commit(domain)

    def on_delete(sender: type[Any], instance: Any, **kwargs: Any) -> None:
        key = key_of(instance.pk)
        if not triggers_supported():
            record_changes(domain, [key])
        _after_commit(domain)

    uid = f"entity_vectors.{domain}.{model._meta.label_lower}"
    post_save.connect(on_save, sender=model, weak=False, dispatch_uid=f"{uid}.save")
    post_delete.connect(on_delete, sender=model, weak=False, dispatch_uid=f"{uid}.delete")
