"""A run's figures and status from its batches: what each batch did and what its flush confirmed."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import structlog
from django.db import transaction

from entity_vectors.models import SyncRun, SyncRunBatch
from entity_vectors.workflow.context import BatchOutcome

log = structlog.get_logger("entity_vectors")


def tally(run: SyncRun, batches: list[SyncRunBatch], errors: list[str]) -> None:
    """Set the run's counts, errors and status from its batches (and `errors` of its own).

    Rows inserted are counted from the batches flushed, each with what its flush confirmed in
    ClickHouse: the counts say what landed, whoever flushed it and whenever.
    """
    by_status: dict[str, list[SyncRunBatch]] = {}
    for batch in batches:
        by_status.setdefault(batch.status, []).append(batch)
    never_ran = by_status.get(SyncRunBatch.Status.PENDING, [])
    failed = by_status.get(SyncRunBatch.Status.FAILED, [])
    dropped = by_status.get(SyncRunBatch.Status.DROPPED, []) + by_status.get(SyncRunBatch.Status.STAGED, [])
    flushed = by_status.get(SyncRunBatch.Status.FLUSHED, [])
    total = BatchOutcome()
    for batch in batches:
        total.add(BatchOutcome.from_counts(batch.counts))
    errors = list(errors)
    errors.extend(f"batch {batch.index} failed: {batch.error}" for batch in failed[:5])
    if never_ran:
        errors.append(f"{len(never_ran)} batches did not finish; their entities wait for the next run")
    if dropped:
        errors.append(f"{len(dropped)} staged batches were not flushed; their entities wait for the next run")
    if total.failures:
        item_errors = [item for batch in batches for item in batch.item_errors][:5]
        detail = "; ".join(f"{item['id']}: {item['error']}" for item in item_errors)
        errors.append(f"{total.failures} entities failed and stay eligible ({detail})")
    if not errors:
        run.status = SyncRun.Status.SUCCEEDED
    else:
        run.status = SyncRun.Status.PARTIAL if flushed else SyncRun.Status.FAILED
    for name in BatchOutcome.COUNTS:
        if name != "tombstoned":
            setattr(run, name, getattr(total, name))
    for name, value in total.usage.as_counts().items():
        setattr(run, name, value)
    run.cost_usd = total.usage.cost_usd.quantize(Decimal("0.000001"))
    run.inserted = sum(batch.inserted for batch in flushed)
    run.tombstoned = sum(batch.tombstoned for batch in flushed)
    run.batches_failed = len(failed) + len(never_ran) + len(dropped)
    run.batches_done = len(flushed)
    run.error = "\n".join(errors)[:10_000]


def recount_closed_run(run_id: Any) -> None:
    """A flush confirmed rows of a run that was closed meanwhile (the sweeper took it for abandoned):
    count them in, so that the run says what landed."""
    with transaction.atomic():
        run = SyncRun.objects.select_for_update().filter(pk=run_id).first()
        if run is None or run.status == SyncRun.Status.RUNNING:
            return
        own = run.error.split("\n", 1)[0] if run.error else ""
        batches = list(run.batches.all())
        tally(run, batches, [own, "some rows were flushed after the run closed"] if own else [])
        run.save()
    log.info("sync.run_recounted", run_id=str(run_id), status=str(run.status), inserted=run.inserted)
