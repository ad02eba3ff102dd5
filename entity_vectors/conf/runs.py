"""How runs behave: retries, schedules, leases, the change log, the fast lane, housekeeping."""

from __future__ import annotations

import re

from entity_vectors.conf.providers import local_providers
from entity_vectors.conf.readers import (
    _bool,
    _float,
    _int,
    _raw,
    parse_int,
    parse_json_object,
    parse_name,
)

DEFAULT_SCHEDULE_SECONDS = 30 * 60
# A beat interval: a second to a year.
MAX_SCHEDULE_SECONDS = 366 * 24 * 3600
# A registered domain's name (the registry's pattern).
_DOMAIN_NAME = re.compile(r"[a-z][a-z0-9_-]{0,63}")


def task_max_retries() -> int:
    """Task-level retries of a transient failure (after the provider's own retries)."""
    return _int("ENTITY_VECTORS_TASK_MAX_RETRIES", 5, minimum=0, maximum=100)


def task_retry_backoff() -> float:
    """Base of a task retry's exponential backoff, in seconds (doubles each retry, with jitter)."""
    return _float("ENTITY_VECTORS_TASK_RETRY_BACKOFF", 2.0, minimum=0.0, maximum=3600)


# The seed's pause between the starts of two batches of a run, for providers that are paid and rate
# limited: a run of 96-entity batches then sends at most ~96 summaries a minute, however large.
REMOTE_DELAY_BETWEEN_BATCHES = 60
# The longest pause a run's inputs take (`SyncEntityVectorsInputs`).
MAX_DELAY_BETWEEN_BATCHES = 24 * 3600


def delay_between_batches() -> int:
    """The default seconds between the starts of two batches of a run (a run's own
    `delay_between_batches` wins): ENTITY_VECTORS_DELAY_BETWEEN_BATCHES if set; else 0 when the
    summarizer and the embedder are both local (nothing to pace), else the seed's 60."""
    default = 0 if local_providers() else REMOTE_DELAY_BETWEEN_BATCHES
    return _int("ENTITY_VECTORS_DELAY_BETWEEN_BATCHES", default, minimum=0, maximum=MAX_DELAY_BETWEEN_BATCHES)


def schedule_seconds(domain: str | None = None) -> int:
    """Beat interval of a domain: ENTITY_VECTORS_SCHEDULES[domain], else the common one."""
    if domain is not None:
        per_domain = schedules()
        if domain in per_domain:
            return per_domain[domain]
    return _int(
        "ENTITY_VECTORS_SCHEDULE_SECONDS", DEFAULT_SCHEDULE_SECONDS, minimum=1, maximum=MAX_SCHEDULE_SECONDS
    )


def schedules() -> dict[str, int]:
    """Per-domain beat intervals in seconds (a dict setting, or JSON in the environment)."""
    value = _raw("ENTITY_VECTORS_SCHEDULES")
    if value is None:
        return {}
    entries = parse_json_object(
        "ENTITY_VECTORS_SCHEDULES", value, 'domain names to seconds ({"cohort": 3600})'
    )
    parsed: dict[str, int] = {}
    for domain, seconds in entries.items():
        name = parse_name(
            "ENTITY_VECTORS_SCHEDULES", domain, _DOMAIN_NAME, "keyed by domain names (a-z, 0-9, _ and -)"
        )
        parsed[name] = parse_int(f"ENTITY_VECTORS_SCHEDULES[{name!r}]", seconds, 1, MAX_SCHEDULE_SECONDS)
    return parsed


def run_lease_seconds() -> int:
    """How long a run may go without progress before it is considered abandoned (closed)."""
    return _int("ENTITY_VECTORS_RUN_LEASE_SECONDS", 60 * 60, minimum=5, maximum=7 * 24 * 3600)


def max_countdown_seconds() -> int:
    """Longest ETA a task is given; must stay well under the broker's visibility timeout."""
    return _int("ENTITY_VECTORS_MAX_COUNTDOWN", 15 * 60, minimum=1, maximum=24 * 3600)


def change_triggers() -> bool:
    """Whether database triggers record every change of a registered model (PostgreSQL, SQLite)."""
    return _bool("ENTITY_VECTORS_CHANGE_TRIGGERS", True)


def fast_lane() -> bool:
    """Whether a committed change is processed within seconds instead of at the next beat tick."""
    return _bool("ENTITY_VECTORS_FAST_LANE", True)


def fast_lane_on_batch_workers() -> bool:
    """Whether a worker of the batch queue consumes the fast queue too (so that a deployment that
    names only the batch queue runs passes). Off where a worker of the fast queue alone runs them:
    a batch worker's processes then stay on the batch work."""
    return _bool("ENTITY_VECTORS_FAST_LANE_ON_BATCH_WORKERS", True)


def fast_lane_delay() -> float:
    """Seconds the fast lane waits after a change, so that a burst of edits costs one pass."""
    return _float("ENTITY_VECTORS_FAST_LANE_DELAY", 2.0, minimum=0.0, maximum=3600)


def fast_lane_max_entities() -> int:
    """The most entities one fast-lane pass takes; more are handed to a run (the batch lane)."""
    return _int("ENTITY_VECTORS_FAST_LANE_MAX_ENTITIES", 500, minimum=1, maximum=100_000)


def fast_lane_poll_seconds() -> float:
    """How often beat looks for changes no signal saw (`QuerySet.update()`, raw SQL, `bulk_create`,
    cascades) and sends them to the fast lane; 0 turns the poll off. One indexed query per domain."""
    return _float("ENTITY_VECTORS_FAST_LANE_POLL_SECONDS", 5.0, minimum=0.0, maximum=3600)


def claim_lease_seconds() -> int:
    """How long a batch's claim on its entities holds without being released (a killed worker's
    claims are taken over after it). Longer than the longest batch task, by default 30 minutes."""
    return _int("ENTITY_VECTORS_CLAIM_LEASE_SECONDS", 30 * 60, minimum=1, maximum=7 * 24 * 3600)


def team_quantum() -> int:
    """Team round robin: the most entities of one team a run takes while other teams have work in
    it; the rest waits for the next run, which the run queues. 0: no limit."""
    return _int("ENTITY_VECTORS_TEAM_QUANTUM", 2000, minimum=0, maximum=100_000_000)


def interactive_share() -> float:
    """The share of each model's rate budget kept for interactive work (fast-lane passes, searches)
    while some waits: a backfill takes the rest, and all of it when nothing interactive waits."""
    return _float("ENTITY_VECTORS_INTERACTIVE_SHARE", 0.2, minimum=0.0, maximum=0.9)


def flush_interval() -> float:
    """Longest a run's staged rows wait for a flush while the run goes on (seconds): rows go in
    when they fill an insert, or when the oldest has waited this long, whichever comes first."""
    return _float("ENTITY_VECTORS_FLUSH_INTERVAL", 5.0, minimum=0.0, maximum=3600)


def keep_runs() -> int:
    """Finished runs kept per domain (failed ones are kept for ENTITY_VECTORS_KEEP_FAILED_DAYS)."""
    return _int("ENTITY_VECTORS_KEEP_RUNS", 200, minimum=1, maximum=1_000_000)


def keep_failed_days() -> int:
    """Days a failed or partial run is kept for inspection."""
    return _int("ENTITY_VECTORS_KEEP_FAILED_DAYS", 30, minimum=1, maximum=36_500)


def reconcile_page() -> int:
    """Keys the sweeper's reconcile reads from ClickHouse per tick (hard deletes behind our back)."""
    return _int("ENTITY_VECTORS_RECONCILE_PAGE", 10_000, minimum=1, maximum=1_000_000)


def park_after() -> int:
    """Consecutive runs an entity may fail before it is parked (not sent to a provider again)."""
    return _int("ENTITY_VECTORS_PARK_AFTER", 3, minimum=1, maximum=1000)
