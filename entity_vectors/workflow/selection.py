"""Which entities a run must look at: a snapshot of primary keys, taken once when the run starts.

The union of:
- the config's own filter (the seed's selection: new or re-summarizable entities), live ones only;
- the change log (every insert, update and delete of the host's rows since it was last handled);
- ledger repairs: writes attempted but never confirmed, rows live in ClickHouse whose entity may
  no longer have one (deleted, consent revoked), entities held back that may now have one;
- for a version whose backfill is not complete, every live entity without a live row at it.

Nothing here reads the host's mirror columns to decide that an entity is done; an entity that
turns out to need nothing is skipped by its batch at the cost of a few lookups.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from django.core.exceptions import ValidationError
from django.db import connection, models
from django.db.models import CharField, Exists, OuterRef, Q, Value
from django.db.models.functions import Cast, Concat, Substr

from entity_vectors.configs import EntityConfig
from entity_vectors.models import EntityChange, LedgerEntry
from entity_vectors.workflow.context import RunContext

# Primary keys are read in keyset pages of this size.
PAGE = 10_000


def eligible_filter(config: EntityConfig[Any]) -> Q:
    """Entities that should have a live row: consent given and not soft-deleted."""
    eligible = config.get_consent_filter()
    deleted = config.get_deleted_filter()
    return eligible & ~deleted if deleted is not None else eligible


def key_expression(model: type[models.Model], ref: str = "pk") -> Any:
    """The database's text form of a primary key, equal to `str(pk)` (the ledger and ClickHouse key)."""
    pk = model._meta.pk
    if connection.vendor == "sqlite" and isinstance(pk, models.UUIDField):
        # SQLite keeps UUIDs as 32 hex digits: put the dashes back.
        column = Cast(ref, CharField())
        parts: list[Any] = []
        for start, length in ((1, 8), (9, 4), (13, 4), (17, 4), (21, 12)):
            if parts:
                parts.append(Value("-"))
            parts.append(Substr(column, start, length))
        return Concat(*parts, output_field=CharField())
    return Cast(ref, CharField())


def _ledger(domain: str, **filters: Any) -> Exists:
    return Exists(LedgerEntry.objects.filter(domain=domain, entity_id=OuterRef("entity_key"), **filters))


def _pks(queryset: models.QuerySet[Any]) -> Iterable[Any]:
    """Primary keys of a queryset, read in keyset pages (stable under concurrent edits)."""
    last: Any = None
    while True:
        page = queryset if last is None else queryset.filter(pk__gt=last)
        chunk = list(page.order_by("pk").values_list("pk", flat=True)[:PAGE])
        yield from chunk
        if len(chunk) < PAGE:
            return
        last = chunk[-1]


def to_pks(config: EntityConfig[Any], keys: Iterable[str]) -> list[Any]:
    """Ledger / change-log keys back to primary key values (keys that cannot be one are dropped)."""
    field = config.model_class._meta.pk
    assert field is not None
    pks = []
    for key in keys:
        try:
            pks.append(field.to_python(key))
        except ValidationError:
            continue
    return pks


def select_entity_ids(context: RunContext) -> list[Any]:
    """Snapshot the primary keys of a run's work (sorted, unique)."""
    config = context.config
    domain = context.domain
    base = config.get_queryset().annotate(entity_key=key_expression(config.model_class))
    eligible = eligible_filter(config)
    found: set[Any] = set()

    # 1. The config's own selection, as of start_dt (the seed's contract).
    found.update(_pks(config.get_queryset().filter(config.get_queryset_filter(context.start_dt) & eligible)))

    # 2. The change log. An explicit start_dt is a cut-off for it too; later changes wait.
    changes = EntityChange.objects.filter(domain=domain)
    if context.inputs.start_dt is not None:
        changes = changes.filter(changed_at__lte=context.start_dt)
    found.update(to_pks(config, changes.values_list("entity_id", flat=True)))

    # 3. Ledger repairs.
    pending = LedgerEntry.objects.filter(domain=domain, pending_version__isnull=False)
    found.update(to_pks(config, pending.values_list("entity_id", flat=True).distinct()))
    found.update(_pks(base.filter(_ledger(domain, has_live=True)).exclude(eligible)))
    found.update(_pks(base.filter(eligible).filter(_ledger(domain, blocked__in=["consent", "deleted"]))))

    # 4. Backfills: live entities without a live row at a version not yet complete.
    for version in context.backfilling:
        found.update(
            _pks(base.filter(eligible).exclude(_ledger(domain, embedding_version=version, is_live=True)))
        )
    return sorted(found)
