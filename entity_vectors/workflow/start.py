"""Starting a run: validate, take the domain's lock, snapshot the work, record the run and batches."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import structlog
from django.db import IntegrityError, transaction
from django.utils import timezone

from entity_vectors import conf
from entity_vectors.capture.triggers import install_triggers
from entity_vectors.core.embedding_versions import ensure_version, tracked_versions
from entity_vectors.core.inputs import SyncEntityVectorsInputs
from entity_vectors.core.registry import get_entity_config
from entity_vectors.models import DomainVersion, SyncRun, SyncRunBatch
from entity_vectors.workflow.batch_api.decide import hand_over_large_selection
from entity_vectors.workflow.context import EmbeddingVersionSpec, RunContext
from entity_vectors.workflow.finish import close_run, expire_abandoned_runs, flush_and_close
from entity_vectors.workflow.selection import select_entity_ids

log = structlog.get_logger("entity_vectors")


@dataclass(frozen=True)
class PlannedBatch:
    """One batch's share of a run."""

    index: int
    entity_ids: list[Any]
    not_before: datetime


def plan_run(
    entity_ids: Sequence[Any], batch_size: int, delay_between_batches: float, started_at: datetime
) -> list[PlannedBatch]:
    """Split the snapshot into batches; batch i may start `i * delay_between_batches` after the start."""
    return [
        PlannedBatch(
            index=index,
            entity_ids=list(entity_ids[offset : offset + batch_size]),
            not_before=started_at + timedelta(seconds=index * delay_between_batches),
        )
        for index, offset in enumerate(range(0, len(entity_ids), batch_size))
    ]


@dataclass(frozen=True)
class StartedRun:
    """What `start_run` did: a run with its batches, or a skip with the reason."""

    run: SyncRun
    batch_indexes: list[int] = field(default_factory=list)
    skipped: bool = False
    already_dispatched: bool = False

    @property
    def context(self) -> RunContext:
        """The run's typed context."""
        return RunContext.of(self.run)

    @property
    def message(self) -> str:
        """A one-line account for logs and the command line."""
        if self.skipped:
            return self.run.error
        return (
            f"run {self.run.id} of {self.run.domain}: {self.run.selected} entities "
            f"in {self.run.batches_total} batches"
        )


def _versions(inputs: SyncEntityVectorsInputs, whole_selection: bool) -> dict[str, Any]:
    """The versions a run writes: every tracked one (the requested one is tracked from now on).

    `completes`: the backfills this run may mark complete if it succeeds. Only a run that looks at
    the whole backfill selection may; a run of a given list of entities (a fast-lane pass, a Batch
    API writing run) saw only those, however well it went.
    """
    requested = ensure_version(inputs.domain, inputs.embedding_version)
    tracked = tracked_versions(inputs.domain)
    if requested.pk not in {record.pk for record in tracked}:
        tracked.append(requested)
    first = len(DomainVersion.objects.filter(domain=inputs.domain)) == 1
    # A domain's very first version relies on the config's own selection; a version added
    # beside others (or never completed) compares whole tables until a run completes it.
    backfilling = [
        record.embedding_version
        for record in tracked
        if record.backfilled_at is None and not (first and record.is_served)
    ]
    return {
        "write": [EmbeddingVersionSpec.of(record).as_json() for record in tracked],
        "backfilling": backfilling,
        "completes": backfilling if whole_selection else [],
    }


def _take_lock(
    inputs: SyncEntityVectorsInputs,
    start_dt: datetime,
    task_id: str,
    mode: str,
    versions: dict[str, Any],
    kind: str,
) -> SyncRun | None:
    """Create the domain's running SyncRun (the lock), or None if another run holds it.

    A run held by an earlier delivery of this same entry task is returned as is if its chord went
    out, else closed and the lock taken over, instead of skipping forever behind itself.
    """
    for _ in range(2):
        try:
            with transaction.atomic():
                return SyncRun.objects.create(
                    domain=inputs.domain,
                    start_dt=start_dt,
                    inputs=inputs.as_dict(),
                    versions=versions,
                    mode=mode,
                    kind=kind,
                    task_id=task_id,
                    lease_expires_at=timezone.now() + timedelta(seconds=conf.run_lease_seconds()),
                )
        except IntegrityError:
            holder = SyncRun.objects.filter(domain=inputs.domain, status=SyncRun.Status.RUNNING).first()
            if holder is None or not task_id or holder.task_id != task_id:
                return None
            if holder.dispatched_at is not None:
                return holder  # this task already sent its chord before being delivered again
            flush_and_close(holder.id, error="superseded: its entry task was delivered again")
    return None


def _skip(
    inputs: SyncEntityVectorsInputs, start_dt: datetime, task_id: str, mode: str, kind: str
) -> StartedRun:
    holder = SyncRun.objects.filter(domain=inputs.domain, status=SyncRun.Status.RUNNING).first()
    reason = (
        f"skipped: run {holder.id} of {inputs.domain} is still running "
        f"(started {holder.started_at:%Y-%m-%d %H:%M:%S} UTC)"
        if holder
        else f"skipped: another run of {inputs.domain} is starting"
    )
    skipped = SyncRun.objects.create(
        domain=inputs.domain,
        status=SyncRun.Status.SKIPPED,
        mode=mode,
        kind=kind,
        start_dt=start_dt,
        inputs=inputs.as_dict(),
        task_id=task_id,
        finished_at=timezone.now(),
        error=reason,
    )
    log.info("sync.run_skipped", domain=inputs.domain, run_id=str(skipped.id), reason=reason)
    return StartedRun(run=skipped, skipped=True)


def start_run(
    inputs: SyncEntityVectorsInputs,
    task_id: str = "",
    mode: str = "inline",
    entity_ids: Sequence[Any] | None = None,
    kind: str | None = None,
) -> StartedRun:
    """Take the domain's lock, snapshot the ids to process, record the run and its batches.

    `entity_ids` (the fast lane, a Batch API job's writing run) replaces the selection with
    exactly these entities. A run whose selection reaches ENTITY_VECTORS_BATCH_API_THRESHOLD
    first hands its OpenAI work to a Batch API job (see `entity_vectors.workflow.batch_api.submit`).
    """
    if kind is None:
        kind = SyncRun.Kind.RUN if entity_ids is None else SyncRun.Kind.FAST_LANE
    config = get_entity_config(inputs.domain)
    start_dt = inputs.resolved_start_dt()
    versions = _versions(inputs, whole_selection=entity_ids is None)
    install_triggers(inputs.domain, config.model_class)
    expire_abandoned_runs(inputs.domain)
    run = _take_lock(inputs, start_dt, task_id, mode, versions, kind)
    if run is not None and run.dispatched_at is not None:
        return StartedRun(run=run, already_dispatched=True)
    if run is None:
        return _skip(inputs, start_dt, task_id, mode, kind)
    try:
        if entity_ids is None:
            entity_ids = select_entity_ids(RunContext.of(run))
            hand_over_large_selection(inputs, entity_ids)
        planned = plan_run(
            entity_ids, inputs.summarize_batch_size, inputs.delay_between_batches, run.started_at
        )
        SyncRunBatch.objects.bulk_create(
            [
                SyncRunBatch(
                    run=run, index=batch.index, entity_ids=batch.entity_ids, not_before=batch.not_before
                )
                for batch in planned
            ],
            batch_size=500,
        )
        run.selected = len(entity_ids)
        run.batches_total = len(planned)
        # The lease must outlast the last batch's planned start (delay_between_batches).
        last_start = planned[-1].not_before if planned else run.started_at
        run.lease_expires_at = max(last_start, timezone.now()) + timedelta(seconds=conf.run_lease_seconds())
        run.save(update_fields=["selected", "batches_total", "lease_expires_at"])
    except BaseException as exc:
        close_run(run.id, error=f"planning failed: {conf.redact(repr(exc))}")
        raise
    log.info(
        "sync.run_started",
        domain=inputs.domain,
        run_id=str(run.id),
        mode=str(mode),
        selected=run.selected,
        batches=run.batches_total,
        versions=[spec["version"] for spec in versions["write"]],
    )
    return StartedRun(run=run, batch_indexes=[batch.index for batch in planned])
