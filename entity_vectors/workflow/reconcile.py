"""The sweeper's reconcile: live rows in ClickHouse the pipeline would not otherwise revisit.

Triggers record every change of a registered model's rows, but a table truncated, a trigger
dropped, a database without triggers or a row written outside the pipeline can leave a live row
behind. Each sweep reads one page of a domain's live keys (in key order, from where the last
one stopped) and queues for the next run every key whose entity is gone, or that the ledger
does not know to be live (it is added to the ledger, so the run can tombstone it).
"""

from __future__ import annotations

from typing import Any

import structlog
from django.db import transaction

from entity_vectors import conf
from entity_vectors.changes import record_changes
from entity_vectors.configs import EntityConfig
from entity_vectors.models import LedgerEntry, SweepState
from entity_vectors.store import EmbeddingStore, VectorKey
from entity_vectors.workflow.selection import to_pks

log = structlog.get_logger("entity_vectors")


def reconcile_page(config: EntityConfig[Any], store: EmbeddingStore, limit: int | None = None) -> int:
    """Check one page of a domain's live keys; returns how many entities were queued."""
    domain = config.domain_name
    cursor, _ = SweepState.objects.get_or_create(name=f"reconcile:{domain}")
    after = cursor.state.get("after")
    page = store.live_keys_page(domain, tuple(after) if after else None, limit or conf.reconcile_page())
    cursor.state = {"after": list(page[-1])} if len(page) == (limit or conf.reconcile_page()) else {}
    cursor.save(update_fields=["state", "updated_at"])
    if not page:
        return 0
    ids = sorted({entity_id for _, entity_id, _ in page})
    present = {
        str(pk)
        for pk in config.model_class._default_manager.filter(pk__in=to_pks(config, ids)).values_list(
            "pk", flat=True
        )
    }
    queued: set[str] = set()
    with transaction.atomic():
        entries = {
            (entry.entity_id, entry.embedding_version): entry
            for entry in LedgerEntry.objects.select_for_update().filter(domain=domain, entity_id__in=ids)
        }
        unknown: list[VectorKey] = []
        for team_id, entity_id, version in page:
            entry = entries.get((entity_id, version))
            if entry is None or team_id not in entry.live_teams:
                unknown.append((team_id, entity_id, version))
            elif entity_id not in present:
                queued.add(entity_id)
        for team_id, entity_id, version in unknown:
            entry = entries.get((entity_id, version)) or LedgerEntry(
                domain=domain, entity_id=entity_id, embedding_version=version
            )
            entry.live_teams = sorted({*entry.live_teams, team_id})
            entry.has_live = True
            entry.save()
            entries[(entity_id, version)] = entry
            queued.add(entity_id)
    record_changes(domain, sorted(queued))
    if queued:
        log.info("sync.reconciled", domain=domain, checked=len(page), queued=len(queued))
    return len(queued)
