"""Secrets never printed: a logging filter that redacts every record, wherever it is handled.

URL passwords (ClickHouse, the broker, the database) and known secret settings (the OpenAI key,
Django's secret key, Flower's basic auth) are replaced by `***` in the message, its arguments and
its traceback. The host's Django LOGGING puts the filter on its handlers; Celery's own handlers
(worker and beat) get it when Celery sets its logging up; and the libraries' own loggers that log
URLs (the HTTP clients', the OpenAI SDK's, ClickHouse's, Redis's, Celery's) carry it themselves
from the moment the app is ready, so that a host whose handlers lack it, or that logs `httpx` at
INFO, still prints `http://user:***@host`.
"""

from __future__ import annotations

import logging
from typing import Any

from entity_vectors.conf import redact


class RedactingFilter(logging.Filter):
    """Redact secrets in a record before any handler formats it."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Rewrite the record in place; never drop it."""
        try:
            record.msg = redact(record.getMessage())
            record.args = None
            if record.exc_info and not record.exc_text:
                record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
            elif record.exc_text:
                record.exc_text = redact(record.exc_text)
        except Exception:  # redaction must never lose a log line; settings may not be ready yet
            pass
        return True


def redact_handlers(logger: logging.Logger | None = None, **_: Any) -> None:
    """Put the filter on every handler of `logger` (default: the root logger), once."""
    for handler in (logger or logging.getLogger()).handlers:
        if not any(isinstance(existing, RedactingFilter) for existing in handler.filters):
            handler.addFilter(RedactingFilter())


# The libraries' loggers that may log a URL with its password: the request lines of the HTTP
# clients (httpx logs every request at INFO; `httpx2`/`httpcore2` where the SDK ships its own
# copy), the OpenAI SDK's requests and retries, urllib3's connections (clickhouse-connect), the
# ClickHouse, Redis, kombu and Celery clients' connection errors. A filter on a logger applies to
# the records of that logger only, not to its children's, so the modules that log are named too.
LIBRARY_LOGGERS = (
    "httpx",
    "httpx2",
    "httpcore",
    "httpcore.connection",
    "httpcore.http11",
    "httpcore.proxy",
    "httpcore2",
    "httpcore2.connection",
    "httpcore2.http11",
    "httpcore2.proxy",
    "openai",
    "openai._base_client",
    "openai._response",
    "urllib3",
    "urllib3.connectionpool",
    "urllib3.poolmanager",
    "urllib3.util.retry",
    "clickhouse_connect",
    "clickhouse_connect.driver",
    "clickhouse_connect.driver.client",
    "clickhouse_connect.driver.httpclient",
    "clickhouse_connect.driver.httputil",
    "redis",
    "redis.client",
    "redis.connection",
    "kombu",
    "kombu.connection",
    "celery",
    "celery.app.trace",
    "celery.backends.redis",
    "celery.worker.consumer.connection",
    "celery.worker.consumer.consumer",
)


def redact_library_loggers() -> None:
    """Put the filter on the libraries' loggers (and on any logger already made under them), once."""
    prefixes = tuple(name.split(".", 1)[0] + "." for name in LIBRARY_LOGGERS)
    existing = [
        name
        for name, logger in logging.Logger.manager.loggerDict.items()
        if isinstance(logger, logging.Logger) and name.startswith(prefixes)
    ]
    for name in (*LIBRARY_LOGGERS, *existing):
        logger = logging.getLogger(name)  # made now if need be: the library's module gets this one
        if not any(isinstance(existing_filter, RedactingFilter) for existing_filter in logger.filters):
            logger.addFilter(RedactingFilter())
