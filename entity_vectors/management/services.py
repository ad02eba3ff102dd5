"""What a command checks before it starts: the services it needs answer, or one line says which not."""

from __future__ import annotations

from django.core.management.base import CommandError

from entity_vectors import conf
from entity_vectors.conf.startup import redis_problem
from entity_vectors.exceptions import EntityVectorsError


def check_services(*, clickhouse: bool, redis: bool) -> None:
    """Raise CommandError, in one line, if ClickHouse or Redis (broker, result backend) cannot be reached."""
    if clickhouse:
        from entity_vectors.store import get_store

        try:
            get_store()
        except EntityVectorsError as exc:
            raise CommandError(conf.redact(" ".join(str(exc).split()))) from exc
    if not redis:
        return
    from celery import current_app

    for setting, url in (
        ("CELERY_BROKER_URL", current_app.conf.broker_url),
        ("CELERY_RESULT_BACKEND", current_app.conf.result_backend),
    ):
        problem = redis_problem(str(url or ""), setting, "runs go to the workers through it")
        if problem is not None:
            raise CommandError(problem)
