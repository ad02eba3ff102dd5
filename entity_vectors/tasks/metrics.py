"""The workers' task figures: every execution of a project task counted in one Redis hash.

Each process that runs tasks adds its executions (outcome, duration bucket, total seconds) to
`<ENTITY_VECTORS_METRICS_PREFIX>:tasks` on the limiter's Redis, from Celery's task signals;
`metrics` reads the hash when Prometheus scrapes. Recording is fire-and-forget: a Redis hiccup
never fails or slows a task by more than a fraction of a second, and pauses recording for a few
seconds.
"""

from __future__ import annotations

import time
from typing import Any

import redis
import structlog
from celery import states
from celery.signals import task_failure, task_postrun, task_prerun

from entity_vectors import conf

log = structlog.get_logger("entity_vectors")

TASK_PREFIX = "ai-sync-"
DURATION_BUCKETS = (0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 1200.0)
BUCKET_LABELS: tuple[str, ...] = (*(str(bound) for bound in DURATION_BUCKETS), "+Inf")
OUTCOMES = {states.SUCCESS: "succeeded", states.FAILURE: "failed", states.RETRY: "retried"}
# Seconds a task may wait on Redis to record itself, and how long recording pauses after a failure.
REDIS_TIMEOUT = 0.25
PAUSE_AFTER_FAILURE = 5.0

_clients: dict[str, redis.Redis] = {}
# Start times of the tasks running in this process, by task id (a stack: an eager retry nests).
_started: dict[str, list[float]] = {}
_paused_until = 0.0


def redis_client() -> redis.Redis | None:
    """The client of the Redis the task figures live on (the limiter's), or None without one."""
    url = conf.limiter_url()
    if url is None:
        return None
    client = _clients.get(url)
    if client is None:
        client = _clients[url] = redis.Redis.from_url(
            url, socket_timeout=REDIS_TIMEOUT, socket_connect_timeout=REDIS_TIMEOUT, decode_responses=True
        )
    return client


def tasks_key() -> str:
    """The Redis hash holding every process's task counts and durations."""
    return f"{conf.metrics_prefix()}:tasks"


def _bucket(seconds: float) -> str:
    for bound, label in zip(DURATION_BUCKETS, BUCKET_LABELS, strict=False):
        if seconds <= bound:
            return label
    return "+Inf"


def record_task(task: str, outcome: str, seconds: float | None) -> bool:
    """Add one task execution to the shared figures; False when it could not (it never raises)."""
    global _paused_until
    if time.monotonic() < _paused_until:
        return False
    try:
        client = redis_client()
        if client is None:
            return False
        key = tasks_key()
        pipe = client.pipeline(transaction=False)
        pipe.hincrby(key, f"count|{task}|{outcome}", 1)
        if seconds is not None:
            pipe.hincrby(key, f"bucket|{task}|{_bucket(seconds)}", 1)
            pipe.hincrbyfloat(key, f"sum|{task}", seconds)
        pipe.execute()
    except Exception as exc:  # metrics must never fail a task
        _paused_until = time.monotonic() + PAUSE_AFTER_FAILURE
        log.warning("metrics.record_failed", task=task, error=conf.redact(f"{type(exc).__name__}: {exc}"))
        return False
    return True


def _ours(task: Any) -> str | None:
    name = getattr(task, "name", None)
    return name if isinstance(name, str) and name.startswith(TASK_PREFIX) else None


def _on_prerun(sender: Any = None, task_id: str | None = None, task: Any = None, **_: Any) -> None:
    if _ours(task or sender) is not None and task_id:
        _started.setdefault(task_id, []).append(time.monotonic())


def _on_postrun(
    sender: Any = None, task_id: str | None = None, task: Any = None, state: str | None = None, **_: Any
) -> None:
    name = _ours(task or sender)
    if name is None:
        return
    stack = _started.get(task_id or "")
    started = stack.pop() if stack else None
    if stack == [] and task_id:
        del _started[task_id]
    seconds = None if started is None else max(time.monotonic() - started, 0.0)
    outcome = OUTCOMES.get(str(state), str(state or "unknown").lower())
    record_task(name, outcome, seconds)


def _on_failure(sender: Any = None, task_id: str | None = None, **_: Any) -> None:
    # Inside the process running the task, task_postrun follows and records the outcome. A task
    # killed by its hard time limit has no postrun: the worker's main process reports it here.
    name = _ours(sender)
    if name is not None and not (task_id and task_id in _started):
        record_task(name, "failed", None)


task_prerun.connect(_on_prerun, weak=False)
task_postrun.connect(_on_postrun, weak=False)
task_failure.connect(_on_failure, weak=False)
