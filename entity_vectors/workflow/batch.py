"""One batch: claim its entities (`claims`), load them (`load.load_batch`) and what the ledger says
of them, decide, summarize and embed, stage.

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
from collections.abc import Callable
from typing import Any

import structlog
from django.db import connection, transaction
from django.db.models import Count, Exists, F, Min, OuterRef
from django.utils import timezone

from entity_vectors import conf
from entity_vectors.capture.changelog import key_of
from entity_vectors.core.entity_config import consenting_entities
from entity_vectors.models import BatchApiJob, SyncRun, SyncRunBatch
from entity_vectors.models.row_version import next_row_version
from entity_vectors.providers.access import ProviderAccess
from entity_vectors.runtime import aio
from entity_vectors.store import get_store
from entity_vectors.workflow import budget, claims, ledger
from entity_vectors.workflow.batch_api.results import still_to_embed, take_batch_api_results
from entity_vectors.workflow.context import BatchOutcome, RunContext
from entity_vectors.workflow.failures import record_failures
from entity_vectors.workflow.flush import flush_ready
from entity_vectors.workflow.load import load_batch
from entity_vectors.workflow.plan import (
    AWAITING_BATCH_API,
    EMBED,
    FAILING,
    OVER_BUDGET,
    PARKED,
    REUSE,
    SKIP,
    TOMBSTONE,
    EntityWork,
    decide_gone,
    decide_live,
    disposition,
)
from entity_vectors.workflow.progress import lease_runs_low, progress
from entity_vectors.workflow.staging import fail_batch, plan_writes, stage_batch
from entity_vectors.workflow.summaries import save_summaries
from entity_vectors.workflow.vectorize import ProviderRequests, error_text, vectorize

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
    # One writer per entity: what another writer holds is left to it (its change stays logged).
    keys = [key_of(pk) for pk in batch.entity_ids]
    held = claims.claim(context.domain, keys, context.run_id, batch.index)
    pks = [pk for pk, key in zip(batch.entity_ids, keys, strict=True) if key in held]
    outcome.held_elsewhere = len(keys) - len(pks)
    row_version = next_row_version()  # before any state is read: a later plan reads later state
    read_at = timezone.now()
    work = _BatchWork(context, load_batch(context, pks, outcome))
    work.decide_known()  # against the ledger: what is known needs no provider
    _fetch_reused_vectors(context, work.works)
    work.collect_provider_work()
    if batch_api:
        work.leave_to_batch_api()
    work.drop_revoked()  # right before anything is sent
    fault = work.send(access, outcome, batch.index)  # reserve, summarize and embed, settle
    _count(work.works, outcome)
    # Everything the batch writes, in one transaction (one commit per batch).
    with transaction.atomic():
        save_summaries(context, work.works)
        if fault is None:
            record_failures(context, work.works)
            writes = plan_writes(context, work.works, row_version, read_at)
            total = BatchOutcome.from_counts(outcome.as_counts())
            total.item_errors = outcome.item_errors
            total.add(carried)
            stage_batch(context, batch, writes, total)
    if fault is not None:
        # A service or the provider failed, not these entities: the summaries are saved, nothing is
        # counted toward parking, and the batch is retried (a transient fault) or fails.
        raise fault


class _BatchWork:
    """A batch's entities on their way: decided against the ledger, and what still needs a provider."""

    def __init__(self, context: RunContext, works: list[EntityWork]) -> None:
        self.context = context
        self.works = works
        self.entries = ledger.load_entries(
            context.domain, [work.key for work in works], [spec.version for spec in context.versions]
        )
        self.to_summarize: list[EntityWork] = []
        self.to_embed: list[EntityWork] = []

    def entries_of(self, work: EntityWork) -> dict[int, Any]:
        """The ledger's entries of `work`, by embedding version."""
        return {spec.version: self.entries.get((work.key, spec.version)) for spec in self.context.versions}

    def decide(self, work: EntityWork) -> None:
        """Decide a live entity with its summary, at every version."""
        decide_live(self.context.config, work, self.entries_of(work), self.context.versions)

    def decide_known(self) -> None:
        """Decide what needs no summary now: gone entities, and live ones whose summary is kept."""
        for work in self.works:
            if not work.live:
                decide_gone(work, self.entries_of(work), self.context.versions)
            elif work.parked or work.error:
                continue
            elif work.summary is None:
                self.to_summarize.append(work)
            else:
                self.decide(work)

    def collect_provider_work(self) -> None:
        """The entities with a summary that still need a vector made at some version."""
        self.to_embed = [w for w in self.works if w.live and w.summary is not None and still_to_embed(w)]

    @property
    def pending(self) -> bool:
        """Whether anything is left to send."""
        return bool(self.to_summarize or self.to_embed)

    def _keep(self, keep: Callable[[EntityWork], bool]) -> None:
        self.to_summarize = [work for work in self.to_summarize if keep(work)]
        self.to_embed = [work for work in self.to_embed if keep(work) and still_to_embed(work)]

    def leave_to_batch_api(self) -> None:
        """Take a Batch API job's ready vectors, and leave to it what it has on the way."""
        if self.pending:
            take_batch_api_results(self.context.domain, self.to_summarize, self.to_embed)
            self._keep(lambda work: not work.awaiting_batch_api)

    def drop_revoked(self) -> None:
        """A consent revocation committed since the batch loaded its entities stops them: they are
        tombstoned instead of sent."""
        if not self.pending:
            return
        for work in _revoked(self.context, [*self.to_summarize, *self.to_embed]):
            work.state, work.versions = "consent", {}
            decide_gone(work, self.entries_of(work), self.context.versions)
        self._keep(lambda work: work.live)

    def send(self, access: ProviderAccess, outcome: BatchOutcome, index: int) -> BaseException | None:
        """Reserve the owners' budget, summarize and embed, settle what was spent; the fault that
        kept the providers from answering, if any (see `vectorize`)."""
        context = self.context
        reservation = None
        if self.pending and budget.enabled():
            reservation, refused = budget.reserve(
                context.config, [*self.to_summarize, *self.to_embed], context.versions, holder=context.run_id
            )
            for work in refused:
                work.over_budget = True
            self._keep(lambda work: not work.over_budget)
        requests = ProviderRequests(
            config=context.config,
            embedders={spec.version: spec.embedder for spec in context.versions},
            embed_batch_size=context.inputs.embed_batch_size,
            decide=self.decide,
            usage=outcome.usage,
            properties={"run_id": context.run_id, "domain": context.domain, "batch_index": index},
            start_dt=context.start_dt.isoformat(),
        )
        try:
            if self.pending:
                return aio.run(vectorize(requests, access, self.to_summarize, self.to_embed))
            return None
        finally:
            budget.settle(reservation, outcome.usage.cost_usd)


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


def _count(works: list[EntityWork], outcome: BatchOutcome) -> None:
    waiting = {PARKED: "parked", OVER_BUDGET: "over_budget", AWAITING_BATCH_API: "awaiting_batch_api"}
    for work in works:
        kind = disposition(work)
        if kind in waiting:
            setattr(outcome, waiting[kind], getattr(outcome, waiting[kind]) + 1)
            continue
        if kind == FAILING:
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
