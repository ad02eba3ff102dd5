"""structlog through the standard library: levels and handlers come from Django's LOGGING."""

from __future__ import annotations

import structlog


def configure_structlog() -> None:
    """Render structlog events as `event key=value` lines on stdlib loggers."""
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            # No timestamp here: the logging formatter prints one.
            structlog.processors.format_exc_info,
            structlog.processors.KeyValueRenderer(key_order=["event"], sort_keys=True),
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
