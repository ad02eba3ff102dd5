"""Celery adapters: each task turns JSON kwargs into typed values, calls workflow, returns a small dict.

The task policy is declared once, in `entity_task`: stable names, acks_late with
reject_on_worker_lost (every task here is idempotent), soft and hard time limits, and retries
with exponential backoff and jitter for transient errors only. The package uses `shared_task`
and never imports the host's Celery app.
"""

from __future__ import annotations

import functools
import random
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar, cast

import structlog
from celery import chord, shared_task
from celery.exceptions import SoftTimeLimitExceeded
from celery.signals import worker_init
from django.db import InterfaceError, OperationalError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from entity_vectors import conf, workflow
from entity_vectors.exceptions import TransientError
from entity_vectors.inputs import BatchSpec, SyncEntityVectorsInputs
from entity_vectors.limiter import LocalLimiter, RedisLimiter, limiter_key
from entity_vectors.providers import Limiter
from entity_vectors.workflow import BatchDeferred, LimiterFactory

log = structlog.get_logger("entity_vectors")

ENTRY_TASK = "ai-sync-entity-vectors"
BATCH_TASK = "ai-sync-entity-vectors-batch"
FINISH_TASK = "ai-sync-entity-vectors-finish"
SWEEP_TASK = "ai-sync-entity-vectors-sweep"
TOMBSTONE_TASK = "ai-sync-entity-vectors-tombstone"
LEGACY_ACTIONS_TASK = "ai-sync-vectors"
LEGACY_COHORTS_TASK = "ai-sync-cohort-vectors"

# A batch is ~96 LLM calls a few at a time, with retries: 20 minutes is generous, and the
# broker's visibility timeout (celeryconfig) stays above it plus the longest countdown.
BATCH_SOFT_LIMIT = 20 * 60
FLUSH_SOFT_LIMIT = 30 * 60
ENTRY_SOFT_LIMIT = 10 * 60
HARD_LIMIT_MARGIN = 60
BACKOFF_MAX = 300.0

F = TypeVar("F", bound=Callable[..., Any])

# Worth another attempt later: our transient errors, a soft time limit, and the database or
# Redis dropping a connection. Everything else fails the task at once.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    TransientError,
    SoftTimeLimitExceeded,
    OperationalError,
    InterfaceError,
    RedisConnectionError,
    RedisTimeoutError,
)


def backoff_seconds(failures: int, error: BaseException | None = None) -> float:
    """Exponential backoff with jitter; a provider's Retry-After wins when it is longer."""
    ceiling = min(BACKOFF_MAX, conf.task_retry_backoff() * (2**failures))
    delay = random.uniform(ceiling / 2, ceiling)
    retry_after = getattr(error, "retry_after", None)
    if isinstance(retry_after, int | float) and retry_after > delay:
        delay = min(float(retry_after), BACKOFF_MAX)
    return delay


def entity_task(
    name: str,
    soft_time_limit: int,
    on_give_up: Callable[[dict[str, Any], BaseException], None] | None = None,
) -> Callable[[F], Any]:
    """Declare a task with the project's one policy (see the module docstring)."""

    def decorate(function: F) -> Any:
        @functools.wraps(function)
        def run(self: Any, *args: Any, _failures: int = 0, **kwargs: Any) -> Any:
            while True:
                try:
                    return function(self, *args, **kwargs)
                except BatchDeferred as deferred:
                    if self.request.is_eager:
                        time.sleep(deferred.seconds)
                        continue
                    # Short hops instead of one long ETA: a Redis broker redelivers any message
                    # unacknowledged past its visibility timeout.
                    countdown = min(deferred.seconds, conf.max_countdown_seconds())
                    raise self.retry(kwargs={**kwargs, "_failures": _failures}, countdown=countdown) from None
                except TRANSIENT_ERRORS as error:
                    if _failures >= conf.task_max_retries():
                        _give_up(name, kwargs, error, on_give_up)
                        raise
                    delay = backoff_seconds(_failures, error)
                    _failures += 1
                    log.warning(
                        "task.retry", task=name, attempt=_failures, delay=round(delay, 1), error=str(error)
                    )
                    if self.request.is_eager:
                        time.sleep(delay)
                        continue
                    raise self.retry(
                        exc=error, kwargs={**kwargs, "_failures": _failures}, countdown=delay
                    ) from None
                except Exception as error:
                    if not _is_celery_control(error):
                        _give_up(name, kwargs, error, on_give_up)
                    raise

        return shared_task(
            name=name,
            bind=True,
            acks_late=True,
            reject_on_worker_lost=True,
            soft_time_limit=soft_time_limit,
            time_limit=soft_time_limit + HARD_LIMIT_MARGIN,
            max_retries=None,  # counted by `_failures` above, so deferrals do not use retries up
            track_started=True,
        )(cast(Any, run))

    return decorate


def _is_celery_control(error: BaseException) -> bool:
    from celery.exceptions import Ignore, Retry

    return isinstance(error, Retry | Ignore)


def _give_up(
    name: str,
    kwargs: dict[str, Any],
    error: BaseException,
    on_give_up: Callable[[dict[str, Any], BaseException], None] | None,
) -> None:
    log.error("task.gave_up", task=name, error=f"{type(error).__name__}: {error}", **_loggable(kwargs))
    if on_give_up is not None:
        on_give_up(kwargs, error)


def _loggable(kwargs: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in kwargs.items() if key in ("domain", "run_id", "batch_index")}


def limiter_factory(run_id: str, limit: int, distributed: bool) -> LimiterFactory:
    """Where a batch gets its request slots: Redis across workers, or this process alone."""
    url = conf.limiter_url() if distributed else None

    @asynccontextmanager
    async def factory() -> AsyncIterator[Limiter]:
        if url is None:
            yield LocalLimiter(limit)
            return
        import redis.asyncio as aioredis

        client = aioredis.Redis.from_url(url)
        try:
            # A slot is held for one request attempt, which the provider timeout bounds; a worker
            # killed mid-request frees its slot when the lease lapses shortly after that.
            yield RedisLimiter(client, limiter_key(run_id), limit, lease_seconds=conf.provider_timeout() + 10)
        finally:
            await client.aclose()

    return factory


# -- the run ---------------------------------------------------------------------------------


def start_sync(task: Any, domain: str, options: dict[str, Any]) -> dict[str, Any]:
    """Validate, lock, snapshot, record, and launch the chord (eagerly when runs are in-process)."""
    inputs = SyncEntityVectorsInputs.from_kwargs(domain=domain, **options)
    started = workflow.start_run(inputs, task_id=task.request.id or "")
    run = started.run
    if started.skipped:
        return {"status": "skipped", "run_id": str(run.id), "domain": domain, "reason": run.error}
    run_id = str(run.id)
    if started.already_dispatched:
        return {
            "status": "started",
            "run_id": run_id,
            "domain": domain,
            "selected": run.selected,
            "batches": run.batches_total,
        }
    # In-process when called with .apply() (the CLI and demo on the embedded store); a worker
    # always goes through the broker, even a single solo worker on the embedded store.
    eager = bool(task.request.is_eager)
    header = [
        sync_batch.si(
            run_id=run_id,
            batch_index=index,
            domain=domain,
            max_parallel_requests=inputs.max_parallel_requests,
        ).set(
            countdown=0 if eager else min(index * inputs.delay_between_batches, conf.max_countdown_seconds())
        )
        for index in started.batch_indexes
    ]
    body = finish_sync.si(run_id=run_id, domain=domain)
    if not header:
        finished = workflow.finish_run(run_id)
        return _run_summary(finished or run, "finished")
    if eager:
        # The same chord, in this process: the embedded store cannot be shared with workers.
        chord(header, body).apply(propagate=False)
        run.refresh_from_db()
        return _run_summary(run, "finished")
    body.on_error(finish_sync.si(run_id=run_id, domain=domain, chord_failed=True))
    chord(header, body).apply_async()
    workflow.mark_dispatched(run_id)
    return {
        "status": "started",
        "run_id": run_id,
        "domain": domain,
        "selected": run.selected,
        "batches": len(header),
    }


def _run_summary(run: Any, status: str) -> dict[str, Any]:
    return {
        "status": status,
        "run_id": str(run.id),
        "domain": run.domain,
        "run_status": str(run.status),
        **run.counts(),
    }


@entity_task(ENTRY_TASK, soft_time_limit=ENTRY_SOFT_LIMIT)
def sync_entities(self: Any, domain: str, **options: Any) -> dict[str, Any]:
    """Start a run of one domain: `sync_entities.delay("cohort", embedding_version=1)`."""
    return start_sync(self, domain, options)


def _legacy(domain: str, options: dict[str, Any]) -> dict[str, Any]:
    options = dict(options)
    options.pop("domain", None)
    if "batch_size" in options:  # the legacy workflows' name for summarize_batch_size
        options.setdefault("summarize_batch_size", options.pop("batch_size"))
    return options


@entity_task(LEGACY_ACTIONS_TASK, soft_time_limit=ENTRY_SOFT_LIMIT)
def sync_action_vectors(self: Any, **options: Any) -> dict[str, Any]:
    """Legacy name: a run of the `action` domain."""
    return start_sync(self, "action", _legacy("action", options))


@entity_task(LEGACY_COHORTS_TASK, soft_time_limit=ENTRY_SOFT_LIMIT)
def sync_cohort_vectors(self: Any, **options: Any) -> dict[str, Any]:
    """Legacy name: a run of the `cohort` domain."""
    return start_sync(self, "cohort", _legacy("cohort", options))


def _batch_gave_up(kwargs: dict[str, Any], error: BaseException) -> None:
    workflow.fail_batch(
        BatchSpec(run_id=kwargs["run_id"], batch_index=kwargs["batch_index"], domain=kwargs["domain"]), error
    )


@entity_task(BATCH_TASK, soft_time_limit=BATCH_SOFT_LIMIT, on_give_up=_batch_gave_up)
def sync_batch(
    self: Any, run_id: str, batch_index: int, domain: str, max_parallel_requests: int
) -> dict[str, Any]:
    """Chord header: summarize, save, embed and stage one batch; returns counts only."""
    spec = BatchSpec(run_id=run_id, batch_index=batch_index, domain=domain)
    return workflow.process_batch(
        spec, limiter_factory(run_id, max_parallel_requests, not self.request.is_eager)
    )


def _finish_gave_up(kwargs: dict[str, Any], error: BaseException) -> None:
    workflow.close_run(kwargs["run_id"], error=f"flush failed: {type(error).__name__}: {error}")


@entity_task(FINISH_TASK, soft_time_limit=FLUSH_SOFT_LIMIT, on_give_up=_finish_gave_up)
def finish_sync(self: Any, run_id: str, domain: str, chord_failed: bool = False) -> dict[str, Any]:
    """Chord body (and its errback): flush staged rows, mark synced, close the run, free the lock."""
    run = workflow.finish_run(run_id)
    if run is None:
        return {"status": "already_closed", "run_id": run_id, "domain": domain}
    return _run_summary(run, "finished") | {"chord_failed": chord_failed}


@entity_task(SWEEP_TASK, soft_time_limit=FLUSH_SOFT_LIMIT)
def sweep_runs(self: Any) -> dict[str, Any]:
    """Close runs whose callback never came (their lease ran out)."""
    closed = workflow.sweep_stale_runs()
    return {"closed": [str(run.id) for run in closed]}


@entity_task(TOMBSTONE_TASK, soft_time_limit=ENTRY_SOFT_LIMIT)
def tombstone_deleted(self: Any, domain: str, keys: list[list[Any]]) -> dict[str, Any]:
    """Tombstone hard-deleted entities: `keys` are [team_id, id] pairs."""
    count = workflow.tombstone_entities(
        domain, [(int(team_id), str(entity_id)) for team_id, entity_id in keys]
    )
    return {"domain": domain, "tombstoned": count}


@worker_init.connect
def _refuse_shared_embedded_store(sender: Any = None, **_: Any) -> None:
    """A prefork worker with several processes cannot share the embedded store: refuse to start.

    SystemExit, because Celery logs and swallows a signal handler's exceptions, and logging is
    not set up yet at this point.
    """
    from entity_vectors.checks import worker_problems

    pool = getattr(sender, "pool_cls", None)
    pool_name = pool if isinstance(pool, str) else getattr(pool, "__module__", "")
    problems = worker_problems(str(pool_name), int(getattr(sender, "concurrency", 1) or 1))
    if problems:
        for problem in problems:
            sys.stderr.write(f"entity_vectors: {problem.msg}\n  hint: {problem.hint}\n")
        raise SystemExit(2)
