"""The change log: which entities changed since the pipeline last looked, however they changed.

Database triggers on each registered model's table (PostgreSQL and SQLite) record every insert,
update and delete in `EntityChange`, so `QuerySet.update()`, raw SQL and cascades are seen as
well as `save()`. An update that only touches the mirror columns (`summary`, ...) is not a change.
On other databases, or with ENTITY_VECTORS_CHANGE_TRIGGERS=false, `post_save` and `post_delete`
signals record what goes through the ORM, and the sweeper's reconcile catches the rest.

After a transaction that changed an entity commits, the fast lane is asked (by task name, so this
module imports no task) to process the changed entities within seconds."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import structlog
from django.db.models import F, Q
from django.utils import timezone

from entity_vectors.bulk import KeyLookup, delete_matching, upsert_rows
from entity_vectors.models import EntityChange
from entity_vectors.models.row_version import next_row_version

log = structlog.get_logger("entity_vectors")


def key_of(pk: Any) -> str:
    """The text form of a primary key used everywhere outside the host's table (ClickHouse `id`)."""
    return str(pk)


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
    rows = KeyLookup(EntityChange, {"domain": domain}, "entity_id", ["entity_id", "seq"]).rows(list(keys))
    return {str(entity_id): int(seq) for entity_id, seq in rows}


def clear_changes(domain: str, handled: dict[str, int]) -> None:
    """Drop change rows handled up to the given sequence numbers (a newer change stays)."""
    delete_matching(EntityChange, {"domain": domain}, "entity_id", "seq", handled)
