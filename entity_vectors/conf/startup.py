"""Start-up checks of a process: the settings (Django's system checks), a worker's pool and Redis,
and how a process refuses to start on them (one line per problem, then a non-zero exit).

Celery's worker and beat, the web app and `runserver` call `refuse_to_start`, the project's
management commands `problem_lines`, instead of failing with a traceback from wherever a bad value
is first read, or retrying a broker that is not there.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from urllib.parse import urlsplit

from django.core import checks

from entity_vectors import conf
from entity_vectors.exceptions import ConfigurationError


def worker_problems(pool: str, concurrency: int) -> list[checks.CheckMessage]:
    """Problems of running a Celery worker with this pool and concurrency on these settings."""
    try:
        target = conf.clickhouse_target()
    except ConfigurationError as exc:
        return [checks.Error(conf.redact(str(exc)), hint="Fix CLICKHOUSE_URL.", id="entity_vectors.E001")]
    shared = target.kind == "chdb" and conf.embedded_share()
    if target.kind == "chdb" and not shared and concurrency > 1 and "solo" not in pool and "threads" not in pool:
        return [
            checks.Error(
                f"the embedded ClickHouse (CLICKHOUSE_URL=chdb://{target.path}) cannot be shared by "
                f"{concurrency} worker processes with ENTITY_VECTORS_EMBEDDED_SHARE=false: chdb allows one "
                "process per data directory",
                hint="unset ENTITY_VECTORS_EMBEDDED_SHARE (the first process then serves it to the others), "
                "point CLICKHOUSE_URL at a ClickHouse server (http://user:password@host:8123/db), or run --pool solo",
                id="entity_vectors.E002",
            )
        ]
    return []


REDIS_TIMEOUT = 2.0


def redis_problem(url: str, setting: str, why: str) -> str | None:
    """None if the Redis at `url` answers a PING (or `url` is not Redis); else one line naming it,
    the setting to change and `why` the process needs it."""
    import redis

    if not url.startswith(("redis://", "rediss://")):
        return None
    client = redis.Redis.from_url(url, socket_connect_timeout=REDIS_TIMEOUT, socket_timeout=REDIS_TIMEOUT)
    try:
        client.ping()
    except redis.RedisError as exc:
        parts = urlsplit(url)
        chain: list[BaseException] = []
        item: BaseException | None = exc
        while item is not None and len(chain) < 20:
            chain.append(item)
            item = item.__cause__ or item.__context__
        if any(isinstance(item, ConnectionRefusedError) for item in chain):
            reason = "connection refused"
        elif any(isinstance(item, redis.TimeoutError | TimeoutError) for item in chain):
            reason = f"no answer within {REDIS_TIMEOUT:g} s"
        else:
            reason = " ".join(str(exc).split())
        return conf.redact(
            f"Redis at {parts.hostname}:{parts.port or 6379} is unreachable ({url}): {reason}; start Redis, "
            f"or set {setting} ({why})"
        )
    finally:
        client.close()
    return None


def broker_problems(broker_url: str, result_backend: str) -> list[checks.CheckMessage]:
    """A worker's Redis (broker, result backend) that does not answer: one error each.

    Checked once as the worker starts, so that it says so and exits instead of retrying (Celery
    retries the broker 100 times before it gives up); once connected, Celery reconnects as usual.
    """
    problems: list[checks.CheckMessage] = []
    for setting, url, why in (
        ("CELERY_BROKER_URL", broker_url, "the worker takes its tasks from it"),
        ("CELERY_RESULT_BACKEND", result_backend, "a run's batches report to their flush through it"),
    ):
        problem = redis_problem(url, setting, why)
        if problem is not None:
            problems.append(checks.Error(problem, id="entity_vectors.E003"))
        if result_backend == broker_url:
            break
    return problems


def settings_problems() -> list[checks.CheckMessage]:
    """The errors `manage.py check` would report (every app's checks, database ones aside)."""
    from django.apps import apps

    if not apps.ready:  # a process that has not set Django up yet (a bare Celery app)
        import django

        django.setup()
    return [message for message in checks.run_checks() if message.is_serious() and not message.is_silenced()]


def startup_problems(pool: str, concurrency: int) -> list[checks.CheckMessage]:
    """What a worker checks before it starts: the settings, then the pool."""
    return settings_problems() or worker_problems(pool, concurrency)


def problem_lines(process: str, problems: Iterable[checks.CheckMessage]) -> list[str]:
    """One line per problem, prefixed with the process, each hint once on a line of its own."""
    lines: list[str] = []
    hints: set[str] = set()
    for problem in problems:
        lines.append(f"{process}: {' '.join(str(problem.msg).split())}")
        if problem.hint and problem.hint not in hints:
            hints.add(problem.hint)
            lines.append(f"  hint: {' '.join(str(problem.hint).split())}")
    return lines


def refuse_to_start(process: str, problems: list[checks.CheckMessage], status: int = 2) -> None:
    """Exit with `status` if there are problems, after one line each on stderr (and its hint once).

    For processes that start work (Celery's worker and beat, the web app): a setting that cannot
    work is a line naming it, not a traceback from wherever the value was first used. Written to
    the process's own stderr: Celery may already send `sys.stderr` to its logger, line by line.
    """
    if not problems:
        return
    stream = sys.__stderr__ or sys.stderr
    for line in problem_lines(process, problems):
        stream.write(f"{line}\n")
    stream.flush()
    raise SystemExit(status)
