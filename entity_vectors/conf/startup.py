"""Start-up checks of a process: the settings (Django's system checks), a worker's pool, and how a
process refuses to start on them (one line per problem, then a non-zero exit).

Celery's worker and beat, the web app and `runserver` call `refuse_to_start`, instead of failing
with a traceback from wherever a bad value is first read.
"""

from __future__ import annotations

import sys

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


def refuse_to_start(process: str, problems: list[checks.CheckMessage], status: int = 2) -> None:
    """Exit with `status` if there are problems, after one line each on stderr (and its hint once).

    For processes that start work (Celery's worker and beat, the web app): a setting that cannot
    work is a line naming it, not a traceback from wherever the value was first used. Written to
    the process's own stderr: Celery may already send `sys.stderr` to its logger, line by line.
    """
    if not problems:
        return
    stream = sys.__stderr__ or sys.stderr
    hints: set[str] = set()
    for problem in problems:
        stream.write(f"{process}: {' '.join(str(problem.msg).split())}\n")
        if problem.hint and problem.hint not in hints:
            hints.add(problem.hint)
            stream.write(f"  hint: {' '.join(str(problem.hint).split())}\n")
    stream.flush()
    raise SystemExit(status)
