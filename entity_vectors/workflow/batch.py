"""One batch: load its entities (`load.load_batch`) and what the ledger says of them, decide,
summarize and embed, stage.

Idempotent: a staged batch is not redone, and a redelivered batch reuses the summaries its
first attempt saved. A row version is taken before any state is read, so a later plan that read
later state always carries a higher version. Staging moves the batch pending -> staged exactly
once, and only while its run is still running (a closed run's batch stages nothing). In a
distributed run, the batch that finds a full insert's worth of staged rows then flushes them
(see `flush.flush_ready`).

A batch's fixed cost is its statements (about fifteen, two commits): lookups by key are one index
lookup per key, writes are one statement per table.
"""

from __future__ import annotations

import gc
import os
import uuid
from typing import Any

import structlog
from django.db import connection, transaction
from django.db.models import Count, Exists, F, Min, OuterRef
from django.utils import timezone

from entity_vectors import aio, budget, conf
from entity_vectors.configs import consenting_entities
from entity_vectors.models import BatchApiJob, SyncRun, SyncRunBatch
from entity_vectors.store import get_store
from entity_vectors.versions import next_row_version
from entity_vectors.workflow import ledger
from entity_vectors.workflow.access import ProviderAccess
from entity_vectors.workflow.awaiting import still_to_embed, take_batch_api_results
from entity_vectors.workflow.context import BatchOutcome, RunContext
from entity_vectors.workflow.flush import flush_ready
from entity_vectors.workflow.load import load_batch
from entity_vectors.workflow.memory import record_failures, save_summaries
from entity_vectors.workflow.plan import (
    EMBED,
    REUSE,
    SKIP,
    TOMBSTONE,
    EntityWork,
    decide_gone,
    decide_live,
)
from entity_vectors.workflow.progress import lease_runs_low, progress
from entity_vectors.workflow.stage import fail_batch, plan_writes, stage_batch
from entity_vectors.workflow.vectorize import error_text, vectorize

log = structlog.get_logger("entity_vectors")


class BatchDeferred(Exception):
    """The batch may not start yet (delay_between_batches); try again in `seconds`."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"batch may start in {seconds:.1f}s")
        self.seconds = seconds


_heap_frozen = False


def _freeze_heap_once() -> None:
    """Exempt what the process holds before its first batch from the cyclic GC's full passes.

    That heap (modules, Django, the host's own state) lives as long as the process, and every
    full collection walks all of it again: at batch rates, ~8% of a run's time went there.
    Later objects are collected as usual; this runs once per process (a forked pool process
    runs it at its own first batch).
    """
    global _heap_frozen
    if not _heap_frozen:
        _heap_frozen = True
        gc.freeze()  # no collection first: it would cost a full pass, the very thing avoided


def process_batch(
    context: RunContext, index: int, access: ProviderAccess, max_attempts: int | None = None
) -> BatchOutcome | None:
    """Summarize, embed and stage one batch; None if it was done already, its run is closed, or it
    gave up after `max_attempts` attempts (recorded as failed, its entities wait for the next run).

    Raises BatchDeferred before the batch's start time.
    """
    _freeze_heap_once()
    batch = (
        SyncRunBatch.objects.select_related("run")
        .annotate(
            ev_batch_api=Exists(
                BatchApiJob.objects.filter(domain=OuterRef("run__domain"), status__in=BatchApiJob.ACTIVE)
            )
        )
        .get(run_id=uuid.UUID(context.run_id), index=index)
    )
    if batch.run.status != SyncRun.Status.RUNNING or batch.status != SyncRunBatch.Status.PENDING:
        return None
    now = timezone.now()
    if batch.not_before and batch.not_before > now:
        raise BatchDeferred((batch.not_before - now).total_seconds())
    if max_attempts is not None and batch.attempts >= max_attempts:
        fail_batch(
            context.run_id,
            index,
            f"gave up after {batch.attempts} attempts: {batch.error or 'no error recorded'}",
        )
        return None
    attempt = {"attempts": F("attempts") + 1, "worker_pid": os.getpid(), "started_at": now}
    if lease_runs_low(batch.run.lease_expires_at, now):
        with transaction.atomic():  # one commit for both: the attempt counts, and so does the run's lease
            SyncRunBatch.objects.filter(pk=batch.pk).update(**attempt)
            progress(context.run_id)  # a batch at work keeps the run's lock alive
    else:
        SyncRunBatch.objects.filter(pk=batch.pk).update(**attempt)
    carried = BatchOutcome.from_counts(batch.counts)
    outcome = BatchOutcome()
    try:
        _process(context, batch, access, outcome, carried, batch_api=batch.ev_batch_api)
    except BaseException as exc:
        # What a failed attempt paid for still counts: the retry adds it to the batch's totals.
        carried.add(outcome.carried())
        SyncRunBatch.objects.filter(pk=batch.pk, status=SyncRunBatch.Status.PENDING).update(
            counts=carried.as_counts(), error=conf.redact(error_text(exc))
        )
        raise
    outcome.add(carried)
    if context.mode == SyncRun.Mode.DISTRIBUTED:
        _flush_if_ready(context)
    return outcome


def _flush_if_ready(context: RunContext) -> None:
    """A distributed run's staged rows go to ClickHouse as soon as they fill an insert, or once
    the oldest has waited ENTITY_VECTORS_FLUSH_INTERVAL.

    A failure here fails nothing: the rows stay staged for the next flush (the callback's at the
    latest), and this batch is done. The wait is read on this worker's clock against the one that
    staged the batch: a skew between hosts moves when the rows go in, never whether.
    """
    if connection.vendor != "postgresql":
        return  # one flusher at a time needs an advisory lock
    staged = SyncRunBatch.objects.filter(
        run_id=uuid.UUID(context.run_id), status=SyncRunBatch.Status.STAGED
    ).aggregate(count=Count("pk"), oldest=Min("finished_at"))
    oldest_wait = (timezone.now() - staged["oldest"]).total_seconds() if staged["oldest"] else None
    try:
        flush_ready(context, staged["count"] * context.inputs.summarize_batch_size, oldest_wait)
    except Exception as exc:
        log.warning("sync.flush_deferred", run_id=context.run_id, error=conf.redact(error_text(exc)))


def _process(
    context: RunContext,
    batch: SyncRunBatch,
    access: ProviderAccess,
    outcome: BatchOutcome,
    carried: BatchOutcome,
    batch_api: bool,
) -> None:
    """The batch's work; `batch_api`: whether a Batch API job of the domain was active when it began."""
    row_version = next_row_version()  # before any state is read: a later plan reads later state
    read_at = timezone.now()
    works = load_batch(context, batch.entity_ids, outcome)
    entries = ledger.load_entries(
        context.domain, [work.key for work in works], [s.version for s in context.versions]
    )

    def entries_of(work: EntityWork) -> dict[int, Any]:
        return {spec.version: entries.get((work.key, spec.version)) for spec in context.versions}

    def decide(work: EntityWork) -> None:
        decide_live(context.config, work, entries_of(work), context.versions)

    to_summarize: list[EntityWork] = []
    for work in works:
        if not work.live:
            decide_gone(work, entries_of(work), context.versions)
        elif work.parked or work.error:
            continue
        elif work.summary is None:
            to_summarize.append(work)
        else:
            decide(work)
    _fetch_reused_vectors(context, works)
    to_embed = [w for w in works if w.live and w.summary is not None and still_to_embed(w)]
    if batch_api and (to_summarize or to_embed):
        take_batch_api_results(context.domain, to_summarize, to_embed)
        to_summarize = [work for work in to_summarize if not work.awaiting_batch_api]
        to_embed = [work for work in to_embed if not work.awaiting_batch_api and still_to_embed(work)]
    if to_summarize or to_embed:
        # Right before anything is sent: a revocation committed since the batch loaded its entities
        # stops them here (they are tombstoned instead).
        revoked = _revoked(context, [*to_summarize, *to_embed])
        for work in revoked:
            work.state, work.versions = "consent", {}
            decide_gone(work, entries_of(work), context.versions)
        to_summarize = [work for work in to_summarize if work.live]
        to_embed = [work for work in to_embed if work.live]
    reservation = None
    if (to_summarize or to_embed) and budget.enabled():
        reservation, refused = budget.reserve(
            context.config, [*to_summarize, *to_embed], context.versions, holder=context.run_id
        )
        for work in refused:
            work.over_budget = True
        to_summarize = [work for work in to_summarize if not work.over_budget]
        to_embed = [work for work in to_embed if not work.over_budget]
    fault = None
    try:
        if to_summarize or to_embed:
            fault = aio.run(
                vectorize(
                    context.config,
                    access,
                    {spec.version: spec.embedder for spec in context.versions},
                    to_summarize,
                    to_embed,
                    decide,
                    outcome.usage,
                    context.inputs.embed_batch_size,
                    {"run_id": context.run_id, "domain": context.domain, "batch_index": batch.index},
                    context.start_dt.isoformat(),
                )
            )
    finally:
        budget.settle(reservation, outcome.usage.cost_usd)
    _count(works, to_summarize, outcome)
    # Everything the batch writes, in one transaction (one commit per batch).
    with transaction.atomic():
        save_summaries(context, works)
        if fault is None:
            record_failures(context, works)
            staged = plan_writes(context, works, row_version, outcome)
            total = BatchOutcome.from_counts(outcome.as_counts())
            total.item_errors = outcome.item_errors
            total.add(carried)
            stage_batch(context, batch, works, staged, row_version, read_at, total)
    if fault is not None:
        # A service or the provider failed, not these entities: the summaries are saved, nothing is
        # counted toward parking, and the batch is retried (a transient fault) or fails.
        raise fault


def _revoked(context: RunContext, works: list[EntityWork]) -> list[EntityWork]:
    """The entities whose data may no longer be sent to a provider (consent revoked meanwhile)."""
    consented = consenting_entities(
        context.config, {work.pk: work.team_id for work in works if work.team_id is not None}
    )
    return [work for work in works if work.pk not in consented]


def _fetch_reused_vectors(context: RunContext, works: list[EntityWork]) -> None:
    """Vectors of rows rewritten without a provider call, taken from ClickHouse.

    Only a row of exactly the expected version is copied (the ledger's confirmed row, or an
    unconfirmed write that did land); anything else is embedded again.
    """
    wanted: dict[tuple[int, str, int], Any] = {}
    for work in works:
        for version, version_work in work.versions.items():
            if version_work.action == REUSE:
                assert version_work.source_team is not None
                wanted[(version_work.source_team, work.key, version)] = version_work
    if not wanted:
        return
    found = get_store().vectors(context.domain, list(wanted))
    for key, version_work in wanted.items():
        vector, row_version = found.get(key, (None, 0))
        if (
            vector is None
            or row_version != version_work.source_version
            or vector.shape != (version_work.spec.embedder.dimensions,)
        ):
            version_work.action = EMBED
        else:
            version_work.vector = vector


def _count(works: list[EntityWork], to_summarize: list[EntityWork], outcome: BatchOutcome) -> None:
    for work in works:
        if work.parked:
            outcome.parked += 1
            continue
        if work.over_budget:
            outcome.over_budget += 1
            continue
        if work.awaiting_batch_api:
            outcome.awaiting_batch_api += 1
            continue
        if work.error:
            outcome.summary_failures += 1
            outcome.item_error(work.key, work.error)
            continue
        if work.live and work.summarized_now:
            outcome.summarized += 1
        elif work.live:
            outcome.summaries_reused += 1
        for version_work in work.versions.values():
            if version_work.error:
                outcome.embedding_failures += 1
                outcome.item_error(work.key, version_work.error)
            elif version_work.action == EMBED and version_work.vector is not None:
                outcome.embedded += 1
            elif version_work.action == REUSE:
                outcome.vectors_reused += 1
        if any(v.action == TOMBSTONE for v in work.versions.values()):
            outcome.tombstoned += 1
        if not work.failed and all(v.action == SKIP for v in work.versions.values()):
            outcome.skipped += 1
