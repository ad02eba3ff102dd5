"""The run's tasks: the entry (and its legacy names), a distributed run's batch and finishing tasks.

Each task turns JSON kwargs into typed values, calls the workflow, returns a small dict.

The task policy is declared once, in `entity_task`: stable names, acks_late with
reject_on_worker_lost (every task here is idempotent), soft and hard time limits, and Celery's
own `autoretry_for` with exponential backoff and jitter for transient errors only. A batch that
may not start yet is deferred with short countdowns, kept apart from the retry budget: a batch's
attempts are counted in its own row. The package uses `shared_task` and never imports the host's
Celery app.

How a run executes is chosen once, by the entry task: inline (a plain loop in this process) when
the task runs eagerly (`task_always_eager`, `.apply()`) or the settings say so (the embedded
store), else distributed (a chord of batch tasks and a finishing task on the workers). No task
ever waits for another task's result."""

from __future__ import annotations

import dataclasses
from typing import Any

import structlog
from celery import chord

from entity_vectors import conf, workflow
from entity_vectors.core.inputs import SyncEntityVectorsInputs
from entity_vectors.exceptions import InvalidInputsError, ProviderUnreachable
from entity_vectors.models import SyncRun
from entity_vectors.providers.access import access_for
from entity_vectors.tasks.names import (
    BATCH_TASK,
    ENTRY_TASK,
    FINISH_TASK,
    LEGACY_ACTIONS_TASK,
    LEGACY_COHORTS_TASK,
)
from entity_vectors.tasks.policy import BATCH_SOFT_LIMIT, ENTRY_SOFT_LIMIT, FLUSH_SOFT_LIMIT, entity_task

log = structlog.get_logger("entity_vectors")


def _run_summary(run: SyncRun, status: str) -> dict[str, Any]:
    summary = {
        "status": status,
        "run_id": str(run.id),
        "domain": run.domain,
        "mode": run.mode,
        "run_status": str(run.status),
        **run.counts(),
    }
    if run.status == SyncRun.Status.SKIPPED:
        summary["reason"] = run.error
    return summary


def start_sync(task: Any, domain: str, options: dict[str, Any]) -> dict[str, Any]:
    """Validate, then run inline or dispatch the chord: the one place the execution mode is chosen."""
    # Every field is checked before anything reads the database: a domain with a NUL byte, or a
    # number out of range, is a clear error instead of the database's.
    inputs = SyncEntityVectorsInputs.from_kwargs(domain=domain, **options)
    if "embedding_version" not in options:
        # Not given: the version search serves (it lives in the database), not a fixed default.
        from entity_vectors.core.embedding_versions import served_version

        inputs = dataclasses.replace(inputs, embedding_version=served_version(inputs.domain))
    inline = bool(task.request.is_eager) or conf.inline_by_default()
    task_id = task.request.id or ""
    if inline:
        try:
            run = workflow.run_inline(inputs, task_id=task_id)
        except ProviderUnreachable as exc:
            # The run is closed, its work pending: the next run (beat's) tries again; a retry of
            # this task now would only knock on the same closed door.
            log.warning("sync.provider_unreachable", domain=inputs.domain, host=exc.host, error=str(exc))
            run = SyncRun.objects.get(pk=exc.run_id)
        labels: dict[str, str] = {SyncRun.Status.SKIPPED: "skipped", SyncRun.Status.RUNNING: "started"}
        status = labels.get(str(run.status), "finished")
        return _run_summary(run, status)
    started = workflow.start_run(inputs, task_id=task_id, mode=SyncRun.Mode.DISTRIBUTED)
    run = started.run
    if started.skipped:
        return {"status": "skipped", "run_id": str(run.id), "domain": domain, "reason": run.error}
    run_id = str(run.id)
    if not started.already_dispatched:
        try:
            _dispatch(started, inputs)
        except BaseException as exc:
            workflow.close_run(run_id, error=f"could not dispatch the run's tasks: {exc!r}")
            raise
    return {
        "status": "started",
        "run_id": run_id,
        "domain": domain,
        "mode": run.mode,
        "selected": run.selected,
        "batches": run.batches_total,
    }


def _dispatch(started: workflow.StartedRun, inputs: SyncEntityVectorsInputs) -> None:
    run = started.run
    run_id = str(run.id)
    if not started.batch_indexes:
        workflow.finish_run(run_id)
        return
    total = len(started.batch_indexes)
    header = [
        sync_batch.si(run_id=run_id, batch_index=index, domain=run.domain, batches=total).set(
            countdown=min(index * inputs.delay_between_batches, conf.max_countdown_seconds()),
            shadow=_batch_display({"domain": run.domain, "run_id": run_id, "batch_index": index, "batches": total}),
        )
        for index in started.batch_indexes
    ]
    # Named here too: the result backend sends the body itself, and the name must not depend on how.
    finishing = f"finish {run.domain} · run {run_id[:8]}"
    body = finish_sync.si(run_id=run_id, domain=run.domain).set(shadow=finishing)
    body.on_error(finish_sync.si(run_id=run_id, domain=run.domain, chord_failed=True).set(shadow=finishing))
    chord(header, body).apply_async()
    SyncRun.objects.filter(pk=run.pk).update(
        dispatched_at=run.started_at.__class__.now(run.started_at.tzinfo)
    )


@entity_task(ENTRY_TASK, soft_time_limit=ENTRY_SOFT_LIMIT, display=lambda kw: f"sync {kw['domain']} · start")
def sync_entities(self: Any, domain: str, **options: Any) -> dict[str, Any]:
    """Start a run of one domain: `sync_entities.delay("cohort", embedding_version=1)`."""
    return start_sync(self, domain, options)


def _legacy(options: dict[str, Any]) -> dict[str, Any]:
    options = dict(options)
    options.pop("domain", None)
    if "batch_size" in options:  # the legacy workflows' name for summarize_batch_size
        options.setdefault("summarize_batch_size", options.pop("batch_size"))
    return options


@entity_task(LEGACY_ACTIONS_TASK, soft_time_limit=ENTRY_SOFT_LIMIT)
def sync_action_vectors(self: Any, **options: Any) -> dict[str, Any]:
    """Legacy name: a run of the `action` domain."""
    return start_sync(self, "action", _legacy(options))


@entity_task(LEGACY_COHORTS_TASK, soft_time_limit=ENTRY_SOFT_LIMIT)
def sync_cohort_vectors(self: Any, **options: Any) -> dict[str, Any]:
    """Legacy name: a run of the `cohort` domain."""
    return start_sync(self, "cohort", _legacy(options))


def _context(run_id: str, domain: str) -> workflow.RunContext:
    context = workflow.RunContext.load(run_id)
    if context.domain != domain:
        raise InvalidInputsError("domain", domain, f"run {run_id} is a run of {context.domain!r}")
    return context


def _batch_gave_up(kwargs: dict[str, Any], error: BaseException) -> None:
    if "run_id" in kwargs and "batch_index" in kwargs:
        workflow.fail_batch(str(kwargs["run_id"]), int(kwargs["batch_index"]), error)


def _batch_display(kwargs: dict[str, Any]) -> str:
    """A batch's name, also when it comes back (a deferral, a retry): the same as when it was sent."""
    of = f"/{kwargs['batches']}" if kwargs.get("batches") else ""
    return f"sync {kwargs['domain']} · run {str(kwargs['run_id'])[:8]} · batch {int(kwargs['batch_index']) + 1}{of}"


@entity_task(
    BATCH_TASK,
    soft_time_limit=BATCH_SOFT_LIMIT,
    on_give_up=_batch_gave_up,
    max_retries=None,
    display=_batch_display,
)
def sync_batch(self: Any, run_id: str, batch_index: int, domain: str, batches: int = 0) -> dict[str, Any]:
    """Chord header: summarize, embed and stage one batch; returns counts only. `batches`: how
    many the run has (for its name in Flower; 0 from a sender that did not say)."""
    context = _context(run_id, domain)
    access = access_for(context.mode, context.run_id, context.inputs.max_parallel_requests)
    try:
        outcome = workflow.process_batch(
            context, batch_index, access, max_attempts=conf.task_max_retries() + 1
        )
    except workflow.BatchDeferred as deferred:
        # Short hops instead of one long ETA: a Redis broker redelivers any message
        # unacknowledged past its visibility timeout.
        _defer(self, min(deferred.seconds, conf.max_countdown_seconds()))
        raise
    except ProviderUnreachable as exc:
        # Not retried: the whole run stops (what was staged is flushed, the rest stays pending),
        # and its other batches find it closed and do nothing.
        log.warning("sync.provider_unreachable", domain=domain, run_id=run_id, host=exc.host, error=str(exc))
        workflow.flush_and_close(
            run_id, error=f"{exc}; the run stopped, and its entities not synced wait for the next run"
        )
        return {"status": "provider_unreachable", "run_id": run_id, "batch_index": batch_index}
    if outcome is None:
        return {"status": "done", "run_id": run_id, "batch_index": batch_index}
    return {"status": "staged", "run_id": run_id, "batch_index": batch_index, **outcome.as_counts()}


def _finish_gave_up(kwargs: dict[str, Any], error: BaseException) -> None:
    if "run_id" in kwargs:
        workflow.close_run(kwargs["run_id"], error=f"flush failed: {type(error).__name__}: {error}")


@entity_task(
    FINISH_TASK,
    soft_time_limit=FLUSH_SOFT_LIMIT,
    on_give_up=_finish_gave_up,
    display=lambda kw: f"finish {kw['domain']} · run {str(kw['run_id'])[:8]}",
)
def finish_sync(self: Any, run_id: str, domain: str, chord_failed: bool = False) -> dict[str, Any]:
    """Chord body (and its errback): flush staged rows, confirm them, close the run, release its
    claims; a run that left entities to a later run (the team quantum) queues that run."""
    _context(run_id, domain)
    run = workflow.finish_run(run_id)
    if run is None:
        return {"status": "already_closed", "run_id": run_id, "domain": domain}
    moved = run.inserted + run.tombstoned + run.skipped
    if run.deferred and moved and not chord_failed:  # a run that moved nothing queues none
        options = {name: value for name, value in run.inputs.items() if name != "domain"}
        sync_entities.apply_async(kwargs={"domain": domain, **options}, queue=conf.queue())
    return _run_summary(run, "finished") | {"chord_failed": chord_failed}


def _defer(task: Any, countdown: float, limit: int | None = None) -> None:
    """Come back later without using up the retry budget (a wait, not a failure)."""
    waits = int(task.request.retries or 0)
    if limit is not None and waits >= limit:
        return
    try:
        raise task.retry(countdown=countdown, max_retries=waits + 1)
    finally:
        if hasattr(task, "override_max_retries"):
            delattr(task, "override_max_retries")
