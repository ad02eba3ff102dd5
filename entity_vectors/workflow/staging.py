"""The end of a batch: its planned writes, staged for the flush while its run is still running."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

import structlog
from django.db import transaction
from django.db.models import F, Value
from django.db.models.functions import Greatest
from django.utils import timezone

from entity_vectors import conf
from entity_vectors.capture.changelog import clear_changes, hold_changes
from entity_vectors.models import SyncRun, SyncRunBatch
from entity_vectors.workflow import claims, ledger
from entity_vectors.workflow.context import BatchOutcome, RunContext
from entity_vectors.workflow.payload import StagedEntity, pack_batch, store_payload
from entity_vectors.workflow.plan import EMBED, REUSE, SKIP, EntityWork
from entity_vectors.workflow.progress import progress
from entity_vectors.workflow.vectorize import error_text

log = structlog.get_logger("entity_vectors")


@dataclass(frozen=True)
class BatchWrites:
    """What a batch will write: its entities' rows and ledger writes, at one row version, read at
    `read_at`."""

    entities: list[StagedEntity]
    row_version: int
    read_at: datetime
    looked_at: int


def plan_writes(
    context: RunContext, works: list[EntityWork], row_version: int, read_at: datetime
) -> BatchWrites:
    """What the flush will write, per entity: its rows and ledger writes (failed versions left out).

    An entity that cannot go now (parked, failed, over budget, left to a Batch API job) has its
    change set aside for the fast lane (`changes.hold_changes`); runs still take it.
    """
    staged = []
    skips: dict[tuple[str, int], int] = {}
    cleared: dict[str, int] = {}
    held: dict[str, int] = {}
    for work in works:
        if work.parked or work.error or work.deferred:
            held[work.key] = work.seq
            continue
        writes = []
        for version, version_work in work.versions.items():
            if version_work.error:
                continue
            if version_work.action == SKIP:
                skips[(work.key, version)] = work.seq
                continue
            live = version_work.action in (EMBED, REUSE)
            writes.append(
                ledger.LedgerWrite(
                    entity_id=work.key,
                    version=version,
                    row_version=row_version,
                    live_team=work.team_id if live else None,
                    tombstone_teams=version_work.tombstone_teams,
                    content_hash=version_work.content_hash if live else "",
                    text_hash=version_work.text_hash if live else "",
                    summary_input_hash=work.input_hash if live else "",
                    source_seq=work.seq,
                    blocked="" if live else work.state,
                )
            )
        if writes:
            staged.append(StagedEntity(work=work, writes=writes, clear=not work.failed))
        elif not work.failed:
            cleared[work.key] = work.seq
        if work.failed:
            held[work.key] = work.seq
    ledger.record_skips(context.domain, skips)
    clear_changes(context.domain, cleared)
    hold_changes(context.domain, {key: seq for key, seq in held.items() if seq})
    return BatchWrites(entities=staged, row_version=row_version, read_at=read_at, looked_at=len(works))


class _RunClosed(Exception):
    """The batch's run was closed while the batch worked: what it would stage is rolled back."""


def _count_staged(run_id: str) -> bool:
    """Count one more staged batch and extend the lease, if the run is still running.

    The UPDATE locks the run's row until the batch's transaction commits: the sweeper's
    `close_run`, which takes the same lock, sees the batch either not staged or staged.
    """
    lease = timezone.now() + timedelta(seconds=conf.run_lease_seconds())
    return bool(
        SyncRun.objects.filter(pk=uuid.UUID(run_id), status=SyncRun.Status.RUNNING).update(
            batches_done=F("batches_done") + 1,
            lease_expires_at=Greatest(F("lease_expires_at"), Value(lease)),
        )
    )


def stage_batch(context: RunContext, batch: SyncRunBatch, writes: BatchWrites, outcome: BatchOutcome) -> None:
    """Move the batch pending -> staged with its payload, if its run is still running.

    The staged writes are recorded in the ledger as attempted in the same transaction: from the
    moment a row may reach ClickHouse, the ledger knows which teams may hold it. The run's row is
    locked last, just before the commit, so that batches of other workers wait for it as briefly
    as possible; if the run was closed meanwhile, all of it is rolled back.
    """
    staged = writes.entities
    meta, vectors = pack_batch(staged, writes.row_version, writes.read_at)
    try:
        with transaction.atomic():
            ledger.record_attempts(context.domain, [write for entity in staged for write in entity.writes])
            moved = store_payload(
                batch.pk,
                meta,
                vectors,
                counts=outcome.as_counts(),
                item_errors=[{**item, "error": conf.redact(item["error"])} for item in outcome.item_errors],
                finished_at=timezone.now(),
                error="",
            )
            # A batch staged meanwhile (a redelivery) is not counted twice; a closed run stages nothing.
            if moved and not _count_staged(context.run_id):
                raise _RunClosed
    except _RunClosed:
        # The run was closed meanwhile (the sweeper): keep nothing; the entities wait.
        SyncRunBatch.objects.filter(pk=batch.pk, status=SyncRunBatch.Status.PENDING).update(
            status=SyncRunBatch.Status.DROPPED,
            counts=outcome.as_counts(),
            error="its run was closed before this batch finished; its entities wait for the next run",
            finished_at=timezone.now(),
        )
        return
    log.info(
        "sync.batch_staged",
        domain=context.domain,
        run_id=context.run_id,
        batch=batch.index,
        entities=writes.looked_at,
        summarized=outcome.summarized,
        embedded=outcome.embedded,
        failed=outcome.failures,
        requests=outcome.usage.requests,
    )


def fail_batch(run_id: str, index: int, error: BaseException | str) -> None:
    """Record a batch that gave up; the rest of the run proceeds and its entities stay eligible."""
    text = conf.redact(error if isinstance(error, str) else error_text(error))
    moved = SyncRunBatch.objects.filter(
        run_id=uuid.UUID(str(run_id)), index=index, status=SyncRunBatch.Status.PENDING
    ).update(status=SyncRunBatch.Status.FAILED, error=text, finished_at=timezone.now())
    if moved:
        progress(run_id, batches_failed=1)
    claims.release(run_id, [index])  # its entities go back to whoever wants them
    log.warning("sync.batch_failed", run_id=str(run_id), batch=index, error=text)
