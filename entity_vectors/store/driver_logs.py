"""Quiet clickhouse-connect's own log records where the error this project raises says it all."""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator

# The driver logs a warning of its own when a connect or a request fails.
_DRIVER_LOGGERS = ("clickhouse_connect.driver._backend.http_sync", "clickhouse_connect.driver.httpclient")
_quiet = threading.local()


class _WhileQuiet(logging.Filter):
    """Drops the driver's records logged by a thread inside `quiet_driver`."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Keep the record unless this thread asked for quiet."""
        return not getattr(_quiet, "active", False)


_while_quiet = _WhileQuiet()
for _name in _DRIVER_LOGGERS:
    logging.getLogger(_name).addFilter(_while_quiet)


@contextlib.contextmanager
def quiet_driver() -> Iterator[None]:
    """Within the block, this thread's driver records are dropped (the caller reports the error)."""
    previous = getattr(_quiet, "active", False)
    _quiet.active = True
    try:
        yield
    finally:
        _quiet.active = previous
