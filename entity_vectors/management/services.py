"""What a command checks before it starts: the services it needs answer, or one line says which not."""

from __future__ import annotations

from urllib.parse import urlsplit

from django.core.management.base import CommandError

from entity_vectors import conf
from entity_vectors.exceptions import EntityVectorsError

REDIS_TIMEOUT = 2.0


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
        problem = redis_problem(str(url or ""), setting)
        if problem is not None:
            raise CommandError(problem)


def redis_problem(url: str, setting: str) -> str | None:
    """None if the Redis at `url` answers a PING (or `url` is not Redis); else one line naming it."""
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
            f"or set {setting} (runs go to the workers through it)"
        )
    finally:
        client.close()
    return None
