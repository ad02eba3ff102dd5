"""Finishing a run: flush what is staged, total the counts, set the status, release its claims.

Also the sweeper's work: close runs whose callback never came, prune old run history.
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import structlog
from django.db import transaction
from django.utils import timezone

from entity_vectors import conf
from entity_vectors.models import DomainVersion, SyncRun, SyncRunBatch
from entity_vectors.store import EmbeddingStore
from entity_vectors.workflow import budget, claims
from entity_vectors.workflow.context import RunContext
from entity_vectors.workflow.flush import flush_staged
from entity_vectors.workflow.tally import tally
from entity_vectors.workflow.vectorize import error_text

log = structlog.get_logger("entity_vectors")


def close_run(run_id: Any, error: str = "") -> SyncRun | None:
    """Total the counts, set the final status and release the run's claims (no ClickHouse work here).

    Batches still staged are not flushed by a closed run: their payloads are dropped and their
    entities stay eligible, so the next run takes them. Returns None if the run was not running
    (someone else closed it).
    """
    with transaction.atomic():
        run = SyncRun.objects.select_for_update().filter(pk=run_id).first()
        if run is None or run.status != SyncRun.Status.RUNNING:
            return None
        batches = list(run.batches.all())
        unflushed = [batch.pk for batch in batches if batch.status == SyncRunBatch.Status.STAGED]
        SyncRunBatch.objects.filter(pk__in=unflushed).update(
            status=SyncRunBatch.Status.DROPPED,
            error="not flushed before the run closed",
            rows=b"",
            vectors=b"",
        )
        for batch in batches:
            if batch.pk in unflushed:
                batch.status = SyncRunBatch.Status.DROPPED
        tally(run, batches, [conf.redact(error)] if error else [])
        run.finished_at = timezone.now()
        run.lease_expires_at = None
        run.save()
        if run.status == SyncRun.Status.SUCCEEDED and run.versions:
            # Every entity of the whole backfill selection was looked at without a failure: the
            # backfills this run covered are complete (never those of a run of a given list).
            DomainVersion.objects.filter(
                domain=run.domain,
                embedding_version__in=_completes(run),
                backfilled_at__isnull=True,
            ).update(backfilled_at=run.finished_at)
    # What its batches still hold is released: a batch that settles later books its spend all the
    # same, and one whose worker died never would; its claims go back to whoever wants them.
    budget.release(run_id=run.id)
    claims.release(run.id)
    log.info(
        "sync.run_finished", domain=run.domain, run_id=str(run.id), status=str(run.status), **run.counts()
    )
    return run


def _completes(run: SyncRun) -> list[int]:
    """The backfills a succeeded run may mark complete (a run recorded by an earlier release says
    nothing of it: only a run of the whole selection may)."""
    if run.held_elsewhere or run.deferred:
        return []  # some entities were left to other writers, or to a later run: not looked at here
    if "completes" in run.versions:
        return [int(version) for version in run.versions["completes"]]
    return [int(v) for v in run.versions.get("backfilling", [])] if run.kind == SyncRun.Kind.RUN else []


def finish_run(run_id: Any, store: EmbeddingStore | None = None) -> SyncRun | None:
    """The last step of a run (the chord body): flush, then close. Flush errors propagate, for a retry."""
    run = SyncRun.objects.filter(pk=run_id, status=SyncRun.Status.RUNNING).first()
    if run is None:
        return None
    flush_staged(RunContext.of(run), store)
    return close_run(run_id)


def flush_and_close(run_id: Any, error: str, store: EmbeddingStore | None = None) -> SyncRun | None:
    """Close a run that will not finish on its own, flushing what it staged if ClickHouse allows."""
    run = SyncRun.objects.filter(pk=run_id, status=SyncRun.Status.RUNNING).first()
    if run is None:
        return None
    try:
        flush_staged(RunContext.of(run), store)
    except Exception as exc:
        error = f"{error}; flush failed: {error_text(exc)}"
        log.warning("sync.flush_failed", run_id=str(run_id), error=conf.redact(error_text(exc)))
    return close_run(run_id, error=error)


def expire_abandoned_runs(domain: str | None = None) -> list[SyncRun]:
    """Close running runs whose lease ran out (their worker died); frees their locks."""
    stale = SyncRun.objects.filter(status=SyncRun.Status.RUNNING, lease_expires_at__lt=timezone.now())
    if domain is not None:
        stale = stale.filter(domain=domain)
    expired = []
    for run in stale:
        closed = flush_and_close(
            run.id, error=f"abandoned: its lease ran out at {run.lease_expires_at:%Y-%m-%d %H:%M:%S} UTC"
        )
        if closed is not None:
            expired.append(closed)
    return expired


def prune_runs() -> int:
    """Drop old run history: keep the last ENTITY_VECTORS_KEEP_RUNS finished runs per domain, and
    failed or partial ones for ENTITY_VECTORS_KEEP_FAILED_DAYS."""
    keep = conf.keep_runs()
    failed_cutoff = timezone.now() - timedelta(days=conf.keep_failed_days())
    finished = SyncRun.objects.exclude(status=SyncRun.Status.RUNNING)
    doomed: list[uuid.UUID] = []
    for domain in finished.values_list("domain", flat=True).distinct():
        old = (
            finished.filter(domain=domain)
            .order_by("-started_at")
            .values_list("pk", "status", "started_at")[keep:]
        )
        for pk, status, started_at in old:
            troubled = status in (SyncRun.Status.FAILED, SyncRun.Status.PARTIAL)
            if not troubled or started_at < failed_cutoff:
                doomed.append(pk)
    deleted = 0
    for offset in range(0, len(doomed), 500):
        deleted += (
            SyncRun.objects.filter(pk__in=doomed[offset : offset + 500])
            .delete()[1]
            .get(SyncRun._meta.label, 0)
        )
    if deleted:
        log.info("sync.runs_pruned", runs=deleted)
    return deleted
