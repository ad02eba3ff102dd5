"""Settings the project's own modules read at import: app/settings.py, celeryconfig.py, flowerconfig.py.

Those modules must load whatever the environment says, so they read these through
`readers.or_default` (a value that cannot work gives them their default); the system checks,
which every process runs before it starts work, read them again here and name the setting.
"""

from __future__ import annotations

import re
from typing import Any

from entity_vectors.conf.readers import _bool, _choice, _int, _raw, _str, parse_text, problem

LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
DEFAULT_VISIBILITY_TIMEOUT = 2 * 60 * 60
DEFAULT_DB_REUSE_MAX = 1000
DEFAULT_FLOWER_PORT = 5555
DATABASE_FORMS = "use a postgres://, mysql:// or sqlite:/// URL as dj-database-url reads them"
# A host name, an IP address (`[::1]` too) or a Django ALLOWED_HOSTS pattern (`.example.com`, `*`).
_HOST = re.compile(r"[A-Za-z0-9.*:\[\]_-]{1,255}")
_FLOWER_USER = re.compile(r"[^:\s]{1,200}:\S{1,200}")


def database_url() -> str | None:
    """DATABASE_URL (parsed by dj-database-url), if set."""
    value = _raw("DATABASE_URL")
    if value is None:
        return None
    url = parse_text("DATABASE_URL", value, 4000, spaces=False)
    import dj_database_url

    try:
        dj_database_url.parse(url)
    except ValueError:
        raise problem("DATABASE_URL", url, f"is not understood; {DATABASE_FORMS}") from None
    return url


def database_settings(url: str, conn_max_age: int) -> dict[str, Any]:
    """Django's DATABASES entry for `url` (app/settings.py builds its default database with it)."""
    import dj_database_url

    return dict(dj_database_url.parse(url, conn_max_age=conn_max_age, conn_health_checks=True))


def database_conn_max_age() -> int:
    """DATABASE_CONN_MAX_AGE: seconds a database connection is kept (0: one per request or task)."""
    return _int("DATABASE_CONN_MAX_AGE", 60, minimum=0, maximum=24 * 3600)


def log_level() -> str:
    """ENTITY_VECTORS_LOG_LEVEL: the level of the project's loggers (DEBUG to CRITICAL)."""
    return _choice("ENTITY_VECTORS_LOG_LEVEL", "info", LOG_LEVELS, "is not a log level").upper()


def debug() -> bool:
    """DJANGO_DEBUG: Django's debug mode."""
    return _bool("DJANGO_DEBUG", False)


def secret_key() -> str | None:
    """DJANGO_SECRET_KEY, if set (a secret: an error describes it without showing it)."""
    value = _raw("DJANGO_SECRET_KEY")
    return None if value is None else parse_text("DJANGO_SECRET_KEY", value, 1000, secret=True)


def allowed_hosts() -> list[str]:
    """DJANGO_ALLOWED_HOSTS: comma-separated host names."""
    value = _str("DJANGO_ALLOWED_HOSTS", "localhost,127.0.0.1", 4000, spaces=False)
    hosts = [host for host in value.split(",") if host]
    for host in hosts:
        if not _HOST.fullmatch(host):
            raise problem("DJANGO_ALLOWED_HOSTS", value, f"has {host!r}, which is not a host name")
    return hosts


def visibility_timeout() -> int:
    """CELERY_VISIBILITY_TIMEOUT: seconds before a Redis broker redelivers an unacknowledged task."""
    return _int("CELERY_VISIBILITY_TIMEOUT", DEFAULT_VISIBILITY_TIMEOUT, minimum=1, maximum=7 * 24 * 3600)


def db_reuse_max() -> int:
    """CELERY_DB_REUSE_MAX: tasks after which a worker process closes its database connections."""
    return _int("CELERY_DB_REUSE_MAX", DEFAULT_DB_REUSE_MAX, minimum=0, maximum=1_000_000)


def beat_schedule_filename(default: str) -> str:
    """CELERY_BEAT_SCHEDULE_FILENAME: where Celery's default scheduler keeps its state."""
    return _str("CELERY_BEAT_SCHEDULE_FILENAME", default, 4096)


def flower_address() -> str:
    """FLOWER_ADDRESS: the address Flower listens on."""
    value = _str("FLOWER_ADDRESS", "127.0.0.1", 255, spaces=False)
    if not _HOST.fullmatch(value):
        raise problem("FLOWER_ADDRESS", value, "must be a host name or an IP address")
    return value


def flower_port() -> int:
    """FLOWER_PORT: the port Flower listens on."""
    return _int("FLOWER_PORT", DEFAULT_FLOWER_PORT, minimum=1, maximum=65535)


def flower_basic_auth() -> list[str]:
    """FLOWER_BASIC_AUTH: `user:password` pairs, comma-separated (a secret: never shown)."""
    value = _raw("FLOWER_BASIC_AUTH")
    if value is None:
        return []
    text = parse_text("FLOWER_BASIC_AUTH", value, 4000, spaces=False, secret=True)
    pairs = [pair for pair in text.split(",") if pair]
    if not pairs or not all(_FLOWER_USER.fullmatch(pair) for pair in pairs):
        raise problem(
            "FLOWER_BASIC_AUTH", value, "must be user:password pairs separated by commas", secret=True
        )
    return pairs


def flower_unauthenticated_api() -> bool:
    """FLOWER_UNAUTHENTICATED_API: true lets Flower run without a login (a throwaway session only)."""
    return _bool("FLOWER_UNAUTHENTICATED_API", False)
