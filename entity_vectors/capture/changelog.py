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
from django.db.models import Exists, F, OuterRef, Q
from django.db.models.functions import Now
from django.utils import timezone

from entity_vectors.bulk import KeyLookup, delete_matching, upsert_rows
from entity_vectors.models import EntityChange, EntityClaim
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


def _fresh(domain: str) -> Any:
    """The domain's changes the fast lane takes: none set aside for the runs since (`hold_changes`,
    `set_aside`: a run's snapshot, a pass's overflow, an entity that cannot go now), of entities
    no writer holds now (`EntityClaim`)."""
    held = EntityClaim.objects.filter(domain=domain, entity_id=OuterRef("entity_id"), expires_at__gte=Now())
    return (
        EntityChange.objects.filter(domain=domain)
        .filter(Q(held_seq__isnull=True) | Q(held_seq__lt=F("seq")))
        .exclude(Exists(held))
    )


def pending_changes(domain: str, limit: int | None = None, fresh: bool = False) -> dict[str, int]:
    """Changed entities of a domain not yet handled by every tracked version: key -> sequence, oldest
    change first.

    `fresh` (the fast lane): newest change first, and only changes no batch or pass has set aside
    since, of entities no writer holds now: entities that cannot go now, or are being written,
    never fill the window a new edit needs.
    """
    rows = _fresh(domain) if fresh else EntityChange.objects.filter(domain=domain)
    ordered = rows.order_by("-seq" if fresh else "seq").values_list("entity_id", "seq")
    if limit is not None:
        ordered = ordered[:limit]
    return {str(entity_id): int(seq) for entity_id, seq in ordered}


def fresh_pending(domain: str) -> bool:
    """Whether the fast lane has work in `domain` (the poll's question: one query)."""
    return bool(_fresh(domain).exists())


def newest_change(domain: str) -> int:
    """The sequence number of the domain's newest pending change (0 when none is pending)."""
    newest = EntityChange.objects.filter(domain=domain).order_by("-seq").values_list("seq", flat=True).first()
    return int(newest or 0)


def set_aside(domain: str, up_to: int, taken: Iterable[str]) -> int:
    """Leave the fresh changes up to sequence `up_to` (but those `taken`) to the runs: a run's
    snapshot holds them, or more changed than a fast-lane pass takes (an import). The fast lane
    passes over them until a newer change. Returns how many."""
    rows = (
        EntityChange.objects.filter(domain=domain, seq__lte=up_to)
        .filter(Q(held_seq__isnull=True) | Q(held_seq__lt=F("seq")))
        .exclude(entity_id__in=list(taken))
    )
    return int(rows.update(held_seq=F("seq")))


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


def changed_since(domain: str, seen: dict[str, int]) -> list[str]:
    """The keys of `seen` changed again after the sequence number seen of each."""
    current = change_seqs(domain, list(seen))
    return [key for key, seq in current.items() if seq > seen[key]]


def clear_changes(domain: str, handled: dict[str, int]) -> None:
    """Drop change rows handled up to the given sequence numbers (a newer change stays)."""
    delete_matching(EntityChange, {"domain": domain}, "entity_id", "seq", handled)
