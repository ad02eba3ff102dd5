"""The typed inputs of a run, validated when built, before any work starts."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from entity_vectors import conf
from entity_vectors.exceptions import InvalidInputsError

# A start_dt in the future would become a row version newer than later runs' rows and hide
# their updates, so only clock skew is tolerated.
MAX_FUTURE_SKEW = timedelta(minutes=5)
# The embeddings API takes at most 2048 inputs per request.
MAX_EMBED_BATCH = 2048
MAX_BATCH = 100_000
MAX_DELAY = 24 * 3600
# A domain name as the registry takes it; anything longer is refused before it is looked up.
MAX_DOMAIN_CHARS = 64


def parse_start_dt(value: object, field: str = "start_dt") -> datetime:
    """Parse an ISO 8601 instant; a naive one is taken as UTC."""
    if isinstance(value, datetime):
        parsed = value
    elif isinstance(value, str):
        if not value.isprintable() or len(value) > 64:
            raise InvalidInputsError(field, value, "not an ISO 8601 date-time (e.g. 2025-01-15T00:00:00Z)")
        try:
            parsed = datetime.fromisoformat(value.strip())
        except ValueError:
            raise InvalidInputsError(
                field, value, "not an ISO 8601 date-time (e.g. 2025-01-15T00:00:00Z)"
            ) from None
    else:
        raise InvalidInputsError(field, value, "must be an ISO 8601 string or None")
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    try:
        return parsed.astimezone(UTC)
    except (OverflowError, ValueError):
        raise InvalidInputsError(field, value, "is outside the range of dates a run can use") from None


def _positive_int(field: str, value: object, maximum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInputsError(field, value, "must be a whole number")
    if value < 1:
        raise InvalidInputsError(field, value, "must be at least 1")
    if value > maximum:
        raise InvalidInputsError(field, value, f"must be at most {maximum}")


def default_delay_between_batches() -> int:
    """The seed's 60 seconds for remote providers; 0 when the summarizer and the embedder are both
    local (nothing to pace); ENTITY_VECTORS_DELAY_BETWEEN_BATCHES if set."""
    return conf.delay_between_batches()


@dataclass(frozen=True)
class SyncEntityVectorsInputs:
    """What to sync and how: the seed's fields and defaults.

    `delay_between_batches` given wins; when not given it fits the providers (see
    `default_delay_between_batches`), and the value taken is recorded with the run.
    """

    domain: str
    start_dt: str | None = None
    summarize_batch_size: int = 96
    embed_batch_size: int = 96
    max_parallel_requests: int = 5
    insert_batch_size: int = 10000
    delay_between_batches: int = field(default_factory=default_delay_between_batches)
    embedding_version: int = 1

    def __post_init__(self) -> None:
        from entity_vectors.core.registry import get_entity_config

        if not isinstance(self.domain, str) or not self.domain:
            raise InvalidInputsError("domain", self.domain, "must be a non-empty domain name")
        if len(self.domain) > MAX_DOMAIN_CHARS or not self.domain.isprintable():
            raise InvalidInputsError(
                "domain",
                self.domain,
                f"must be a domain name (at most {MAX_DOMAIN_CHARS} printable characters)",
            )
        get_entity_config(self.domain)  # UnknownDomainError lists the registered domains
        if self.start_dt is not None:
            parsed = parse_start_dt(self.start_dt)
            if parsed.year < 1970:
                raise InvalidInputsError("start_dt", self.start_dt, "must be after 1970-01-01")
            if parsed > datetime.now(UTC) + MAX_FUTURE_SKEW:
                raise InvalidInputsError(
                    "start_dt", self.start_dt, "is in the future; a run can only look at what has happened"
                )
        _positive_int("summarize_batch_size", self.summarize_batch_size, MAX_BATCH)
        _positive_int("embed_batch_size", self.embed_batch_size, MAX_EMBED_BATCH)
        _positive_int("max_parallel_requests", self.max_parallel_requests, 1000)
        _positive_int("insert_batch_size", self.insert_batch_size, 1_000_000)
        _positive_int("embedding_version", self.embedding_version, 2**32 - 1)
        delay = self.delay_between_batches
        # An int is compared as it is: math.isfinite(10**400) raises OverflowError.
        if (
            isinstance(delay, bool)
            or not isinstance(delay, int | float)
            or (isinstance(delay, float) and not math.isfinite(delay))
        ):
            raise InvalidInputsError("delay_between_batches", delay, "must be a finite number of seconds")
        if delay < 0 or delay > MAX_DELAY:
            raise InvalidInputsError(
                "delay_between_batches", delay, f"must be between 0 and {MAX_DELAY} seconds"
            )

    @classmethod
    def from_kwargs(cls, **kwargs: Any) -> SyncEntityVectorsInputs:
        """Build from JSON-style keyword arguments; an unknown field is an error naming it."""
        names = {field.name for field in dataclasses.fields(cls)}
        for name, value in kwargs.items():
            if name not in names:
                raise InvalidInputsError(
                    name, value, f"unknown field; expected one of {', '.join(sorted(names))}"
                )
        if "domain" not in kwargs:
            raise InvalidInputsError("domain", None, "is required")
        return cls(**kwargs)

    def resolved_start_dt(self) -> datetime:
        """The run's start: `start_dt`, or now."""
        return datetime.now(UTC) if self.start_dt is None else parse_start_dt(self.start_dt)

    def as_dict(self) -> dict[str, Any]:
        """JSON-safe fields, for messages and the SyncRun record."""
        return dataclasses.asdict(self)
