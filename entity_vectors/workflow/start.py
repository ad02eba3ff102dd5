"""Starting a run: validate, snapshot the work, order it team by team, record the run and batches."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import structlog
from django.utils import timezone

from entity_vectors import conf
from entity_vectors.capture.changelog import newest_change, set_aside
from entity_vectors.capture.triggers import install_triggers
from entity_vectors.core.embedding_versions import ensure_version, tracked_versions
from entity_vectors.core.inputs import SyncEntityVectorsInputs
from entity_vectors.core.registry import get_entity_config
from entity_vectors.models import DomainVersion, SyncRun, SyncRunBatch
from entity_vectors.workflow.batch_api.decide import hand_over_large_selection
from entity_vectors.workflow.context import EmbeddingVersionSpec, RunContext
from entity_vectors.workflow.finish import close_run, expire_abandoned_runs, flush_and_close
from entity_vectors.workflow.selection import PAGE, select_entity_ids

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


def _redelivered(task_id: str, domain: str) -> SyncRun | None:
    """The running run an earlier delivery of this same entry task started, if its chord went out;
    one whose chord never went out is closed (this delivery starts it again)."""
    if not task_id:
        return None
    for earlier in SyncRun.objects.filter(domain=domain, status=SyncRun.Status.RUNNING, task_id=task_id):
        if earlier.dispatched_at is not None:
            return earlier
        flush_and_close(earlier.id, error="superseded: its entry task was delivered again")
    return None


def _covering(inputs: SyncEntityVectorsInputs, versions: dict[str, Any]) -> SyncRun | None:
    """A running run of the same inputs whose snapshot covers everything pending now: it took its
    snapshot after the newest change there is, and left nothing for a later run."""
    newest = newest_change(inputs.domain)
    candidates = SyncRun.objects.filter(
        domain=inputs.domain,
        status=SyncRun.Status.RUNNING,
        kind=SyncRun.Kind.RUN,
        snapshot_seq__gte=newest,
        deferred=0,
    )
    wanted = inputs.as_dict()
    for run in candidates.order_by("-started_at"):
        if run.inputs == wanted and run.versions.get("backfilling") == versions["backfilling"]:
            return run
    return None


def _skip(
    inputs: SyncEntityVectorsInputs, start_dt: datetime, task_id: str, mode: str, covering: SyncRun
) -> StartedRun:
    reason = (
        f"skipped: run {covering.id} of {inputs.domain} (started {covering.started_at:%Y-%m-%d %H:%M:%S} UTC) "
        "has the same inputs and covers every change there is"
    )
    skipped = SyncRun.objects.create(
        domain=inputs.domain,
        status=SyncRun.Status.SKIPPED,
        mode=mode,
        kind=SyncRun.Kind.RUN,
        start_dt=start_dt,
        inputs=inputs.as_dict(),
        task_id=task_id,
        finished_at=timezone.now(),
        error=reason,
    )
    log.info("sync.run_skipped", domain=inputs.domain, run_id=str(skipped.id), reason=reason)
    return StartedRun(run=skipped, skipped=True)


def fair_order(pks: Sequence[Any], team_of: dict[Any, int], quantum: int) -> tuple[list[Any], int]:
    """Team round robin: the snapshot in turns, one entity of each team a turn, the smallest teams
    first; with a `quantum`, no team places more than that while others have work in the run.

    Returns the order and how many entities the quantum left for a later run.
    """
    by_team: dict[int, list[Any]] = {}
    for pk in pks:
        by_team.setdefault(team_of.get(pk, -1), []).append(pk)
    deferred = 0
    if quantum and len(by_team) > 1:
        for members in by_team.values():
            deferred += max(len(members) - quantum, 0)
            del members[quantum:]
    groups = sorted(by_team.values(), key=len)
    order = [pk for turn in itertools.zip_longest(*groups, fillvalue=_NONE) for pk in turn if pk is not _NONE]
    return order, deferred


_NONE = object()


def _teams_of(context: RunContext, pks: Sequence[Any]) -> dict[Any, int]:
    """Each entity's team (an entity gone from the host's table has none), read in pages."""
    found: dict[Any, int] = {}
    queryset = context.config.get_queryset()
    for offset in range(0, len(pks), PAGE):
        page = list(pks[offset : offset + PAGE])
        found.update(queryset.filter(pk__in=page).values_list("pk", "team_id"))
    return found


def _plan(
    run: SyncRun, inputs: SyncEntityVectorsInputs, entity_ids: Sequence[Any] | None, team_quantum: int
) -> list[PlannedBatch]:
    """Snapshot the run's entities (unless given), order them team by team, record the batches."""
    context = RunContext.of(run)
    if entity_ids is None:
        entity_ids = select_entity_ids(context)
        hand_over_large_selection(inputs, entity_ids)
    # The newest change the snapshot saw (after the selection, which may queue changes itself).
    snapshot_seq = newest_change(run.domain)
    if run.kind == SyncRun.Kind.RUN:
        # What the snapshot holds is this run's: fast-lane passes leave it to the run, and take
        # only the edits that come after (a newer change of an entity makes it theirs again).
        set_aside(run.domain, up_to=snapshot_seq, taken=())
    ordered, deferred = fair_order(entity_ids, _teams_of(context, entity_ids), team_quantum)
    planned = plan_run(ordered, inputs.summarize_batch_size, inputs.delay_between_batches, run.started_at)
    SyncRunBatch.objects.bulk_create(
        [
            SyncRunBatch(run=run, index=batch.index, entity_ids=batch.entity_ids, not_before=batch.not_before)
            for batch in planned
        ],
        batch_size=500,
    )
    run.selected = len(ordered)
    run.deferred = deferred
    run.snapshot_seq = snapshot_seq
    run.batches_total = len(planned)
    # The lease must outlast the last batch's planned start (delay_between_batches).
    last_start = planned[-1].not_before if planned else run.started_at
    run.lease_expires_at = max(last_start, timezone.now()) + timedelta(seconds=conf.run_lease_seconds())
    run.save(update_fields=["selected", "deferred", "snapshot_seq", "batches_total", "lease_expires_at"])
    return planned


def start_run(
    inputs: SyncEntityVectorsInputs,
    task_id: str = "",
    mode: str = "inline",
    entity_ids: Sequence[Any] | None = None,
    kind: str | None = None,
) -> StartedRun:
    """Snapshot the ids to process, record the run and its batches: beside any other run, fast-lane
    pass or job of the domain (each batch claims its entities), unless a running run of the same
    inputs already covers everything pending (a skip, recorded with the reason).

    `entity_ids` (the fast lane, a Batch API job's writing run) replaces the selection with
    exactly these entities. A distributed run orders its snapshot by team round robin and takes at
    most ENTITY_VECTORS_TEAM_QUANTUM entities of a team while others have work; the rest waits for
    the next run (`deferred`), which the run's finishing task queues. A run whose selection reaches
    ENTITY_VECTORS_BATCH_API_THRESHOLD first hands its OpenAI work to a Batch API job (see
    `entity_vectors.workflow.batch_api.submit`).
    """
    if kind is None:
        kind = SyncRun.Kind.RUN if entity_ids is None else SyncRun.Kind.FAST_LANE
    config = get_entity_config(inputs.domain)
    start_dt = inputs.resolved_start_dt()
    versions = _versions(inputs, whole_selection=entity_ids is None)
    install_triggers(inputs.domain, config.model_class)
    expire_abandoned_runs(inputs.domain)
    earlier = _redelivered(task_id, inputs.domain)
    if earlier is not None:
        return StartedRun(run=earlier, already_dispatched=True)
    if kind == SyncRun.Kind.RUN and (covering := _covering(inputs, versions)) is not None:
        return _skip(inputs, start_dt, task_id, mode, covering)
    run = SyncRun.objects.create(
        domain=inputs.domain,
        start_dt=start_dt,
        inputs=inputs.as_dict(),
        versions=versions,
        mode=mode,
        kind=kind,
        task_id=task_id,
        lease_expires_at=timezone.now() + timedelta(seconds=conf.run_lease_seconds()),
    )
    try:
        planned = _plan(
            run, inputs, entity_ids, team_quantum=conf.team_quantum() if mode == "distributed" else 0
        )
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
