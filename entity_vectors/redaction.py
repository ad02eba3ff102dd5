"""Secrets never printed: a logging filter that redacts every record, wherever it is handled.

URL passwords (ClickHouse, the broker, the database) and known secret settings (the OpenAI key,
Django's secret key, Flower's basic auth) are replaced by `***` in the message, its arguments and
its traceback. The host's Django LOGGING puts the filter on its handlers; Celery's own handlers
(worker and beat) get it when Celery sets its logging up.
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
