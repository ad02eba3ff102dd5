"""The inline executor: a whole run as a plain loop in this process, with the same stage functions.

Used by the embedded default, the CLI, the demo, and a host whose Celery settings say
`task_always_eager`. No Celery canvas and no result is waited on: each batch is processed in
turn, staged rows are flushed whenever they reach `insert_batch_size` or have waited
ENTITY_VECTORS_FLUSH_INTERVAL, and the run is closed.

A provider that cannot be reached (ProviderUnreachable: several connections in a row refused, no
such host, no connection) stops the run at once: what was staged is flushed, the rest of its
batches stay pending (their entities wait for the next run, nothing is counted against them), and
the error says which host, in one line.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

from entity_vectors import conf
from entity_vectors.core.inputs import SyncEntityVectorsInputs
from entity_vectors.exceptions import ProviderUnreachable, TransientError
from entity_vectors.models import BatchApiJob, SyncRun, SyncRunBatch
from entity_vectors.providers.access import ProviderAccess, access_for
from entity_vectors.providers.openai import RetryPolicy
from entity_vectors.workflow.batch import BatchDeferred, process_batch
from entity_vectors.workflow.context import RunContext
from entity_vectors.workflow.finish import close_run, finish_run, flush_and_close
from entity_vectors.workflow.flush import flush_staged
from entity_vectors.workflow.progress import DELAY, RETRY, RunWait
from entity_vectors.workflow.staging import fail_batch
from entity_vectors.workflow.start import StartedRun, start_run
from entity_vectors.workflow.vectorize import error_text

# How often a wait tells `on_wait` how long is left (a progress bar's countdown).
WAIT_TICK_SECONDS = 1.0


def execute_inline(
    started: StartedRun,
    shared_limits: bool = False,
    on_batch: Callable[[SyncRun], None] | None = None,
    interactive: bool = False,
    on_wait: Callable[[RunWait], None] | None = None,
) -> SyncRun:
    """Process every batch of a started run in this process, flush, close; returns the closed run.

    `shared_limits`: count requests against the limits all workers share (a worker's fast lane),
    not this process's own. `on_batch` is called with the run after each batch (a progress bar),
    `on_wait` about once a second while the run waits, with what for (a batch's start time, a
    retry's backoff).
    `interactive` (a fast-lane pass): the interactive lane's share of the rate budget and its
    brief retries, and a batch that fails for the provider or the infrastructure is not retried in
    place: its changes stay fresh for the next pass.

    Raises ProviderUnreachable, once the run is closed, if the provider could not be reached (a
    fast-lane pass returns its closed run instead: its changes stay fresh for the next pass).
    """
    run = started.run
    if started.skipped or started.already_dispatched:
        return run  # an identical run covers it, or this run went to the workers already
    context = started.context
    access = access_for(
        SyncRun.Mode.DISTRIBUTED if shared_limits else SyncRun.Mode.INLINE,
        context.run_id,
        context.inputs.max_parallel_requests,
        interactive=interactive,
    )
    retries = 0 if interactive else conf.task_max_retries()
    waiting = 0
    waiting_since = 0.0  # when the oldest row not flushed yet was staged
    total = run.batches_total
    try:
        for index in started.batch_indexes:
            try:
                _process_with_retries(context, index, access, retries, total, on_wait)
            except ProviderUnreachable as exc:
                stopped = _stop(run, exc)
                if interactive:
                    return SyncRun.objects.get(pk=run.pk)
                raise stopped from exc
            except Exception as exc:
                fail_batch(context.run_id, index, exc)
                if on_batch is not None:
                    on_batch(SyncRun.objects.get(pk=run.pk))
                continue
            if on_batch is not None:
                on_batch(SyncRun.objects.get(pk=run.pk))
            if not waiting:
                waiting_since = time.monotonic()
            # The batch's size, as a distributed run estimates its staged rows (the last batch
            # may be smaller: its rows are flushed at the latest when the run finishes).
            waiting += context.inputs.summarize_batch_size
            overdue = time.monotonic() - waiting_since >= conf.flush_interval()
            if waiting >= context.inputs.insert_batch_size or overdue:
                flush_staged(context)
                waiting = 0
        closed = finish_run(run.id)
    except ProviderUnreachable:
        raise  # the run is closed already
    except BaseException as exc:
        close_run(run.id, error=f"run failed: {error_text(exc)}")
        raise
    return closed or SyncRun.objects.get(pk=run.id)


def _stop(run: SyncRun, error: ProviderUnreachable) -> ProviderUnreachable:
    """Close a run whose provider cannot be reached: flush what it staged, leave the rest pending.

    Returns the error to report: the provider's line, and how many entities wait for the next run.
    """
    waiting = sum(
        len(ids)
        for ids in SyncRunBatch.objects.filter(run=run, status=SyncRunBatch.Status.PENDING).values_list(
            "entity_ids", flat=True
        )
    )
    line = f"{error}; the run stopped, and its {waiting} entities not synced wait for the next run"
    flush_and_close(run.id, error=line)
    return ProviderUnreachable(line, host=error.host, reason=error.reason, run_id=str(run.id))


def _process_with_retries(
    context: RunContext,
    index: int,
    access: ProviderAccess,
    retries: int,
    total: int,
    on_wait: Callable[[RunWait], None] | None = None,
) -> None:
    """A batch, retried in place up to `retries` times on transient errors (as a worker's task
    would be), with backoff, and started no earlier than its start time (delay_between_batches).
    An unreachable provider is not retried: the run stops."""
    policy = RetryPolicy(max_retries=retries, base_delay=conf.task_retry_backoff(), max_delay=300.0)
    attempt = 0
    while True:
        try:
            process_batch(context, index, access)
            return
        except BatchDeferred as deferred:
            # delay_between_batches: an inline run honours it too
            _wait(deferred.seconds, on_wait, RunWait(index, total, DELAY, "delay_between_batches"))
        except ProviderUnreachable:
            raise
        except TransientError as exc:
            if attempt >= policy.max_retries:
                raise
            wait = RunWait(
                index, total, RETRY, error_text(exc), attempt=attempt + 2, attempts=policy.max_retries + 1
            )
            _wait(policy.backoff(attempt), on_wait, wait)
            attempt += 1


def _wait(seconds: float, on_wait: Callable[[RunWait], None] | None, wait: RunWait) -> None:
    """Sleep `seconds`, telling `on_wait` about once a second how long is left."""
    if on_wait is None:
        time.sleep(seconds)
        return
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        on_wait(dataclasses.replace(wait, seconds=left))
        time.sleep(min(WAIT_TICK_SECONDS, left))


def run_inline(
    inputs: SyncEntityVectorsInputs,
    task_id: str = "",
    on_batch: Callable[[SyncRun], None] | None = None,
    on_wait: Callable[[RunWait], None] | None = None,
) -> SyncRun:
    """Start and execute a run in this process (the CLI, the demo, tests, eager hosts)."""
    started = start_run(inputs, task_id=task_id, mode=SyncRun.Mode.INLINE)
    return execute_inline(started, on_batch=on_batch, on_wait=on_wait)


def write_job_inline(job: BatchApiJob, inputs: SyncEntityVectorsInputs, pks: list[Any]) -> SyncRun:
    """The run that writes a Batch API job's results, in this process (the job paid for its work:
    the run finds its summaries and vectors ready)."""
    started = start_run(
        inputs,
        task_id=f"batch-api-{job.pk}",
        mode=SyncRun.Mode.INLINE,
        entity_ids=pks,
        kind=SyncRun.Kind.BATCH_API,
    )
    return execute_inline(started, shared_limits=True)
