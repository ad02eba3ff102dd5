"""How runs behave: retries, schedules, leases, the change log, the fast lane, housekeeping."""

from __future__ import annotations

import json

from entity_vectors.conf.readers import _bool, _float, _int, _raw
from entity_vectors.exceptions import ConfigurationError

DEFAULT_SCHEDULE_SECONDS = 30 * 60


def task_max_retries() -> int:
    """Task-level retries of a transient failure (after the provider's own retries)."""
    return _int("ENTITY_VECTORS_TASK_MAX_RETRIES", 5)


def task_retry_backoff() -> float:
    """Base of a task retry's exponential backoff, in seconds (doubles each retry, with jitter)."""
    return _float("ENTITY_VECTORS_TASK_RETRY_BACKOFF", 2.0, minimum=0.0)


def schedule_seconds(domain: str | None = None) -> int:
    """Beat interval of a domain: ENTITY_VECTORS_SCHEDULES[domain], else the common one."""
    if domain is not None:
        per_domain = schedules()
        if domain in per_domain:
            return per_domain[domain]
    return _int("ENTITY_VECTORS_SCHEDULE_SECONDS", DEFAULT_SCHEDULE_SECONDS, minimum=1)


def schedules() -> dict[str, int]:
    """Per-domain beat intervals in seconds (a dict setting, or JSON in the environment)."""
    value = _raw("ENTITY_VECTORS_SCHEDULES")
    if value is None:
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise ConfigurationError(f"ENTITY_VECTORS_SCHEDULES is not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ConfigurationError("ENTITY_VECTORS_SCHEDULES must map domain names to seconds")
    parsed: dict[str, int] = {}
    for domain, seconds in value.items():
        try:
            parsed[str(domain)] = int(seconds)
        except (TypeError, ValueError):
            raise ConfigurationError(
                f"ENTITY_VECTORS_SCHEDULES[{domain!r}]={seconds!r} is not seconds"
            ) from None
        if parsed[str(domain)] < 1:
            raise ConfigurationError(f"ENTITY_VECTORS_SCHEDULES[{domain!r}] must be at least 1 second")
    return parsed


def run_lease_seconds() -> int:
    """How long a run may go without progress before its lock is considered abandoned."""
    return _int("ENTITY_VECTORS_RUN_LEASE_SECONDS", 60 * 60, minimum=5)


def max_countdown_seconds() -> int:
    """Longest ETA a task is given; must stay well under the broker's visibility timeout."""
    return _int("ENTITY_VECTORS_MAX_COUNTDOWN", 15 * 60, minimum=1)


def change_triggers() -> bool:
    """Whether database triggers record every change of a registered model (PostgreSQL, SQLite)."""
    return _bool("ENTITY_VECTORS_CHANGE_TRIGGERS", True)


def fast_lane() -> bool:
    """Whether a committed change is processed within seconds instead of at the next beat tick."""
    return _bool("ENTITY_VECTORS_FAST_LANE", True)


def fast_lane_delay() -> float:
    """Seconds the fast lane waits after a change, so that a burst of edits costs one pass."""
    return _float("ENTITY_VECTORS_FAST_LANE_DELAY", 2.0)


def fast_lane_max_entities() -> int:
    """The most entities one fast-lane pass takes; more wait for the next pass or run."""
    return _int("ENTITY_VECTORS_FAST_LANE_MAX_ENTITIES", 500, minimum=1)


def flush_interval() -> float:
    """Longest a run's staged rows wait for a flush while the run goes on (seconds): rows go in
    when they fill an insert, or when the oldest has waited this long, whichever comes first."""
    return _float("ENTITY_VECTORS_FLUSH_INTERVAL", 5.0)


def keep_runs() -> int:
    """Finished runs kept per domain (failed ones are kept for ENTITY_VECTORS_KEEP_FAILED_DAYS)."""
    return _int("ENTITY_VECTORS_KEEP_RUNS", 200, minimum=1)


def keep_failed_days() -> int:
    """Days a failed or partial run is kept for inspection."""
    return _int("ENTITY_VECTORS_KEEP_FAILED_DAYS", 30, minimum=1)


def reconcile_page() -> int:
    """Keys the sweeper's reconcile reads from ClickHouse per tick (hard deletes behind our back)."""
    return _int("ENTITY_VECTORS_RECONCILE_PAGE", 10_000, minimum=1)


def park_after() -> int:
    """Consecutive runs an entity may fail before it is parked (not sent to a provider again)."""
    return _int("ENTITY_VECTORS_PARK_AFTER", 3, minimum=1)
