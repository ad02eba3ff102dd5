"""Which entities a run must look at: a snapshot of primary keys, taken once when the run starts.

The union of:
- the change log (every insert, update and delete of the host's rows not yet handled, and every
  entity a run selected but did not finish);
- writes attempted but never confirmed (the ledger's pending entries);
- entities of teams whose consent changed since the last run;
- for a version whose backfill is not complete, every live entity without a live row at it.

So a run costs O(changes): a run with nothing to do sends a few indexed queries. The whole-table
selection (the config's own filter, the seed's selection of new or re-summarizable entities,
and ledger repairs: live rows whose entity should have none, held-back entities that should have
one) runs once per domain, when capture triggers start feeding the change log (and on every run
where there are none); after that the sweeper repeats it one key range per tick, a safety net
for what triggers cannot see. Its finds go to the change log, so nothing it found is lost to a
failed batch.

Nothing here reads the host's mirror columns to decide that an entity is done; an entity that
turns out to need nothing is skipped by its batch at the cost of a few lookups.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from django.core.exceptions import FieldDoesNotExist, ValidationError
from django.db import connection, models
from django.db.models import CharField, Exists, OuterRef, Q, Subquery, Value
from django.db.models.functions import Cast, Concat, Substr

from entity_vectors.capture.changelog import key_of, record_changes
from entity_vectors.capture.triggers import triggers_supported
from entity_vectors.core.entity_config import EntityConfig
from entity_vectors.models import EntityChange, LedgerEntry, SweepState
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


def select_entity_ids(context: RunContext, record: bool = True) -> list[Any]:
    """Snapshot the primary keys of a run's work (sorted, unique).

    `record=False` (a dry run) reads only: nothing is queued, no state is kept.
    """
    config = context.config
    domain = context.domain
    found: set[Any] = set()
    incremental = _incremental(domain)
    # Always, so that a full selection also leaves the teams' consent to compare the next run with.
    found.update(_consent_changes(context, record))
    if not incremental:
        full = _full_selection(context)
        found.update(full)
        if record:
            # Queued in the change log: an entity this run does not finish stays selected.
            record_changes(domain, [key_of(pk) for pk in full], keep_existing=True)
            if triggers_supported():
                SweepState.objects.update_or_create(
                    name=_baseline(domain), defaults={"state": {"full": True}}
                )

    # The change log. An explicit start_dt is a cut-off for it too: later changes wait, except
    # that an entity deleted (or no longer eligible) since is never left live.
    changes = EntityChange.objects.filter(domain=domain)
    if context.inputs.start_dt is not None:
        later = to_pks(
            config, changes.filter(changed_at__gt=context.start_dt).values_list("entity_id", flat=True)
        )
        waiting = set(
            config.get_queryset()
            .filter(pk__in=later)
            .filter(eligible_filter(config))
            .values_list("pk", flat=True)
        )
        found.update(pk for pk in later if pk not in waiting)
        changes = changes.filter(changed_at__lte=context.start_dt)
    found.update(to_pks(config, changes.values_list("entity_id", flat=True)))

    # Writes attempted but never confirmed (an index on the pending ones).
    pending = LedgerEntry.objects.filter(domain=domain, pending_version__isnull=False)
    found.update(to_pks(config, pending.values_list("entity_id", flat=True).distinct()))

    # Backfills: live entities without a live row at a version not yet complete.
    base = config.get_queryset().annotate(entity_key=key_expression(config.model_class))
    for version in context.backfilling:
        found.update(
            _pks(
                base.filter(eligible_filter(config)).exclude(
                    _ledger(domain, embedding_version=version, is_live=True)
                )
            )
        )
    return sorted(found)


def _baseline(domain: str) -> str:
    return f"selection:{domain}"


def _incremental(domain: str) -> bool:
    """Whether the change log holds every change since a full selection (capture triggers on)."""
    return triggers_supported() and SweepState.objects.filter(name=_baseline(domain)).exists()


def _full_selection(context: RunContext) -> set[Any]:
    """Every entity the config selects, and every one whose ledger contradicts its eligibility.

    Whole-table queries: a domain's first run, a database without capture triggers, and the
    sweeper's pages (`mismatches`, one key range at a time).
    """
    config = context.config
    eligible = eligible_filter(config)
    found = set(_pks(config.get_queryset().filter(config.get_queryset_filter(context.start_dt) & eligible)))
    found.update(mismatches(config, config.get_queryset()))
    return found


def mismatches(config: EntityConfig[Any], queryset: models.QuerySet[Any]) -> set[Any]:
    """Entities of `queryset` whose ledger contradicts their eligibility: live rows that should be
    gone (deleted, consent revoked), or held-back ones that should be back."""
    domain = config.domain_name
    eligible = eligible_filter(config)
    base = queryset.annotate(entity_key=key_expression(config.model_class))
    found = set(_pks(base.filter(_ledger(domain, has_live=True)).exclude(eligible)))
    found.update(_pks(base.filter(eligible).filter(_ledger(domain, blocked__in=["consent", "deleted"]))))
    return found


def _consent_changes(context: RunContext, record: bool) -> set[Any]:
    """Entities of teams whose consent changed since the last run (the change log does not see it:
    consent lives on other tables, an organization's approval for instance).

    One entity per team is probed (consent is a team's, the privacy rule says an organization's),
    so a run costs one query over the teams, not one over the entities; consent that varies
    within a team is left to the sweeper's pages. A config without a `team` relation gets the
    whole-table check instead.
    """
    config = context.config
    try:
        team_model = config.model_class._meta.get_field("team").related_model
    except FieldDoesNotExist:
        team_model = None
    if team_model is None or isinstance(team_model, str):
        return mismatches(config, config.get_queryset())
    first = config.get_queryset().filter(team=OuterRef("pk")).order_by("pk").values("pk")[:1]
    probes = dict(
        team_model._default_manager.annotate(probe=Subquery(first))
        .filter(probe__isnull=False)
        .values_list("probe", "pk")
    )
    consenting = set(
        config.get_queryset()
        .filter(pk__in=list(probes))
        .filter(config.get_consent_filter())
        .values_list("pk", flat=True)
    )
    refused = sorted(str(team) for probe, team in probes.items() if probe not in consenting)
    state = SweepState.objects.filter(name=_consent_state(context.domain)).first()
    before = set(state.state.get("refused", [])) if state is not None else set(refused)
    flipped = before.symmetric_difference(refused)
    found: set[Any] = set()
    if flipped:
        found = set(_pks(config.get_queryset().filter(team__in=[int(team) for team in flipped])))
    if record and (state is None or flipped):
        if found:
            record_changes(context.domain, [key_of(pk) for pk in found], keep_existing=True)
        SweepState.objects.update_or_create(
            name=_consent_state(context.domain), defaults={"state": {"refused": refused}}
        )
    return found


def _consent_state(domain: str) -> str:
    return f"consent:{domain}"
