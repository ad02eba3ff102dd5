"""Failures of an entity, counted run after run; an entity that keeps failing is parked."""

from __future__ import annotations

from dataclasses import dataclass

from django.db import transaction
from django.utils import timezone

from entity_vectors import conf
from entity_vectors.models import EntityFailure
from entity_vectors.workflow.context import RunContext
from entity_vectors.workflow.plan import EntityWork


@dataclass(frozen=True)
class Failure:
    """One entity's failure in a run (or a Batch API job): what failed, for which input."""

    key: str
    team_id: int | None
    input_hash: str
    error: str


def record_failures(context: RunContext, works: list[EntityWork]) -> None:
    """Count consecutive failures per entity of a batch (see `count_failures`): only the entity's own
    (a summary or vector refused or malformed), never a provider's or a service's fault."""
    failed = [
        Failure(
            work.key,
            work.team_id,
            work.input_hash,
            work.error or next(v.error for v in work.versions.values() if v.error),
        )
        for work in works
        if work.failed and not work.faulted and not work.parked and not work.deferred
    ]
    # Only an entity with failures counted has a count to clear (no statement for a batch without).
    succeeded = [
        work.key
        for work in works
        if work.live and work.failures_counted and not work.failed and not work.parked and not work.deferred
    ]
    count_failures(context.domain, failed, succeeded)


def count_failures(domain: str, failed: list[Failure], succeeded: list[str]) -> None:
    """Count consecutive failures per entity; park one that failed ENTITY_VECTORS_PARK_AFTER times.

    A success clears the count; a failure for another input (the content changed) starts it anew.
    """
    if succeeded:
        EntityFailure.objects.filter(domain=domain, entity_id__in=succeeded).delete()
    if not failed:
        return
    now = timezone.now()
    limit = conf.park_after()
    with transaction.atomic():
        existing = {
            row.entity_id: row
            for row in EntityFailure.objects.select_for_update().filter(
                domain=domain, entity_id__in=[failure.key for failure in failed]
            )
        }
        for failure in failed:
            row = existing.get(failure.key) or EntityFailure(domain=domain, entity_id=failure.key)
            same_input = row.input_hash == failure.input_hash
            row.failures = (row.failures if same_input else 0) + 1
            row.team_id = failure.team_id
            row.last_error = conf.redact(failure.error)[:2000]
            row.input_hash = failure.input_hash
            row.last_failed_at = now
            row.parked_at = now if row.failures >= limit else None
            row.save()
