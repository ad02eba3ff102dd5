"""The sweeper's reconcile: what the change log cannot see, one bounded page per tick.

Triggers record every change of a registered model's rows, but a table truncated, a trigger
dropped, a database without triggers or a row written outside the pipeline can leave a live row
behind, and a config's own selection may depend on more than the row (time, other tables).
Each sweep, per domain, reads:
- one page of the live keys in ClickHouse (in key order, from where the last one stopped) and
  queues every key whose entity is gone, or that the ledger does not know to be live (it is
  added to the ledger, so the run can tombstone it);
- one page of the host's table (in primary-key order) and queues every entity the config
  selects or whose ledger contradicts its eligibility (`selection.mismatches`).
Queued means in the change log: the next run (or fast-lane pass) takes it.
"""

from __future__ import annotations

from typing import Any

import structlog
from django.db import transaction
from django.utils import timezone

from entity_vectors import conf
from entity_vectors.capture.changelog import key_of, record_changes
from entity_vectors.core.entity_config import EntityConfig
from entity_vectors.models import LedgerEntry, SweepState
from entity_vectors.store import EmbeddingStore, VectorKey
from entity_vectors.workflow.selection import eligible_filter, mismatches, to_pks

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


def scan_page(config: EntityConfig[Any], limit: int | None = None) -> int:
    """Check one page of the host's table (primary-key order); returns how many entities were queued."""
    domain = config.domain_name
    limit = limit or conf.reconcile_page()
    cursor, _ = SweepState.objects.get_or_create(name=f"scan:{domain}")
    pk_field = config.model_class._meta.pk
    assert pk_field is not None
    queryset = config.get_queryset()
    after = cursor.state.get("after")
    if after is not None:
        queryset = queryset.filter(pk__gt=pk_field.to_python(after))
    pks = list(queryset.order_by("pk").values_list("pk", flat=True)[:limit])
    cursor.state = {"after": str(pks[-1])} if len(pks) == limit else {}
    cursor.save(update_fields=["state", "updated_at"])
    if not pks:
        return 0
    page = config.get_queryset().filter(pk__in=pks)
    selected = config.get_queryset_filter(timezone.now()) & eligible_filter(config)
    found = set(page.filter(selected).values_list("pk", flat=True)) | mismatches(config, page)
    record_changes(domain, [key_of(pk) for pk in sorted(found)], keep_existing=True)
    if found:
        log.info("sync.scanned", domain=domain, checked=len(pks), queued=len(found))
    return len(found)
