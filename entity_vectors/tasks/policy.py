"""The one task policy of the project, declared once (Sentry's `instrumented_task` habit).

Stable explicit names, acks_late with reject_on_worker_lost (every task is idempotent), soft and
hard time limits, Celery's own `autoretry_for` with exponential backoff and full jitter for
transient errors only (`dont_autoretry_for` an unreachable provider, which stops its run instead),
a hook that records why a task gave up, and a display name for Flower.
Retry settings are read when the worker imports the tasks: a value that cannot work gives the
default there, so that importing the tasks never fails, and the worker refuses to start on it
(`refuse_bad_worker`, the first thing it does on `worker_init`). A worker starts warm: what every
batch needs and takes long to load (the tokenizers) is loaded once, before the pool forks, and
keeps its database connections from task to task as long as Django would keep them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import structlog
from celery import Task, shared_task
from celery.exceptions import SoftTimeLimitExceeded
from celery.signals import task_postrun, task_prerun, worker_init
from django.db import InterfaceError, OperationalError, close_old_connections
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from entity_vectors import conf
from entity_vectors.conf.readers import or_default
from entity_vectors.exceptions import ProviderUnreachable, TransientError

log = structlog.get_logger("entity_vectors")

# A batch is ~96 LLM calls a few at a time, with retries: 20 minutes is generous, and the
# broker's visibility timeout (celeryconfig) stays above it plus the longest countdown.
BATCH_SOFT_LIMIT = 20 * 60
FLUSH_SOFT_LIMIT = 30 * 60
ENTRY_SOFT_LIMIT = 10 * 60
HARD_LIMIT_MARGIN = 60
BACKOFF_MAX = 300
# What the tasks are declared with when the retry settings cannot work (the worker then refuses to start).
DEFAULT_RETRY_BACKOFF = 2.0
DEFAULT_MAX_RETRIES = 5

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
# Transient, but not worth a retry of the task: a provider nothing could connect to has stopped
# the run already (its work waits for the next one); a retry would only knock on the same door.
NOT_RETRIED: tuple[type[BaseException], ...] = (ProviderUnreachable,)


class EntityTask(Task):  # type: ignore[type-arg]
    """The project's task class: a task that gives up records why (`on_give_up`)."""

    on_give_up: Callable[[dict[str, Any], BaseException], None] | None = None
    # How the task shows in Flower and the worker's log, from its kwargs (`display` in the task options).
    display: Callable[[dict[str, Any]], str] | None = None

    def shadow_name(self, args: Any, kwargs: Any, options: Any) -> str | None:  # type: ignore[override]
        """A name that says which domain (and run) this task works for."""
        if self.display is None:
            return None
        try:
            positional = dict(zip(("domain",), args or (), strict=False))
            return self.display({**positional, **dict(kwargs or {})})
        except Exception:  # a display name is a nicety: never fail a send over it
            return None

    def on_failure(self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        """Log once, with secrets redacted, and let the task record the failure where it belongs."""
        log.error(
            "task.gave_up",
            task=self.name,
            error=conf.redact(f"{type(exc).__name__}: {exc}"),
            **_loggable(kwargs),
        )
        if self.on_give_up is not None:
            try:
                self.on_give_up(dict(kwargs or {}), exc)
            except Exception as hook_error:  # never hide the task's own failure
                log.warning("task.give_up_hook_failed", task=self.name, error=conf.redact(str(hook_error)))


def entity_task(
    name: str,
    soft_time_limit: int,
    on_give_up: Callable[[dict[str, Any], BaseException], None] | None = None,
    max_retries: int | None = -1,
    display: Callable[[dict[str, Any]], str] | None = None,
) -> Callable[[Callable[..., Any]], Any]:
    """Declare a task with the project's one policy (see the module docstring)."""

    def decorate(function: Callable[..., Any]) -> Any:
        return shared_task(
            name=name,
            base=EntityTask,
            bind=True,
            acks_late=True,
            reject_on_worker_lost=True,
            soft_time_limit=soft_time_limit,
            time_limit=soft_time_limit + HARD_LIMIT_MARGIN,
            autoretry_for=TRANSIENT_ERRORS,
            dont_autoretry_for=NOT_RETRIED,
            # Celery's backoff: base * 2**retries seconds (a whole number), fully jittered.
            retry_backoff=max(1, round(or_default(conf.task_retry_backoff, DEFAULT_RETRY_BACKOFF))),
            retry_backoff_max=BACKOFF_MAX,
            retry_jitter=True,
            max_retries=or_default(conf.task_max_retries, DEFAULT_MAX_RETRIES)
            if max_retries == -1
            else max_retries,
            track_started=True,
            # A plain function stored on the task class: staticmethod, or it would be bound.
            on_give_up=staticmethod(on_give_up) if on_give_up is not None else None,
            display=staticmethod(display) if display is not None else None,
        )(function)

    return decorate


def _loggable(kwargs: Any) -> dict[str, Any]:
    return {
        key: value for key, value in dict(kwargs or {}).items() if key in ("domain", "run_id", "batch_index")
    }


@worker_init.connect(weak=False)
def refuse_bad_worker(sender: Any = None, **_: Any) -> None:
    """Run the system checks when a worker starts; refuse to start on settings that cannot work,
    on a pool that cannot share the store, or without its Redis: one line each on stderr, exit
    status 2.

    Connected before anything else of the package on `worker_init`, so that nothing reads a bad
    setting first. SystemExit, because Celery logs and swallows a signal handler's exceptions.
    """
    from entity_vectors.conf.startup import broker_problems, refuse_to_start, startup_problems

    pool = getattr(sender, "pool_cls", None)
    pool_name = pool if isinstance(pool, str) else getattr(pool, "__module__", "")
    concurrency = int(getattr(sender, "concurrency", 1) or 1)
    refuse_to_start("celery worker", startup_problems(str(pool_name), concurrency))
    app_conf = sender.app.conf
    refuse_to_start(
        "celery worker", broker_problems(str(app_conf.broker_url or ""), str(app_conf.result_backend or ""))
    )


@worker_init.connect(weak=False)
def load_before_fork(**_: Any) -> None:
    """Load the tokenizers and the OpenAI client's TLS context in the worker's main process, so
    that every pool process inherits them.

    Otherwise each pool process loads them in its first batch (o200k_base: a second or more of
    CPU; the TLS context ~40 ms), while that batch's requests wait.
    """
    from entity_vectors.providers import load_tls_context
    from entity_vectors.providers.openai import load_tokenizers

    try:
        names = load_tokenizers()
        tls = load_tls_context()
    except Exception as exc:  # a nicety: the first batch loads them (or estimates) as before
        log.warning("worker.tokenizers_not_loaded", error=conf.redact(f"{type(exc).__name__}: {exc}"))
        return
    log.info("worker.tokenizers_loaded", encodings=names, tls_context=tls)


def close_connections_like_django(sender: Any = None, **_: Any) -> None:
    """Before and after each task in a worker, close the database connections Django would close
    around a request (`close_old_connections`: older than CONN_MAX_AGE, broken, or in a state a
    health check would refuse) and keep the others for the next task.

    Celery's Django fixup closes every connection around every task unless CELERY_DB_REUSE_MAX
    is set (celeryconfig sets it); then it closes them every that-many tasks only, and this keeps
    CONN_MAX_AGE and the health checks meaningful in between. Not in an eager task: the caller's
    connection (and its transaction) belong to the caller.
    """
    if getattr(getattr(sender, "request", None), "is_eager", False):
        return
    close_old_connections()


task_prerun.connect(close_connections_like_django, weak=False)
task_postrun.connect(close_connections_like_django, weak=False)
