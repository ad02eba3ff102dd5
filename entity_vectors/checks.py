"""System checks: settings that cannot work are reported at start-up, with a hint.

`manage.py check` runs them, and so does every Celery worker when it starts (a worker refuses
to start on settings that cannot work, instead of failing when its first task runs).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.core import checks

from entity_vectors import conf
from entity_vectors.exceptions import ConfigurationError

TAG = "entity_vectors"
HINT = "See the configuration table in the README."


def _readers() -> tuple[Callable[[], object], ...]:
    from entity_vectors.providers import check_provider_settings

    return (
        conf.summarizer_name,
        conf.embedder_name,
        conf.embedding_dimensions,
        conf.embedding_version,
        conf.clickhouse_target,
        conf.clickhouse_table,
        conf.schedules,
        conf.schedule_seconds,
        conf.provider_timeout,
        conf.provider_max_retries,
        conf.provider_max_backoff,
        conf.task_max_retries,
        conf.task_retry_backoff,
        conf.run_lease_seconds,
        conf.max_countdown_seconds,
        conf.execution,
        conf.change_triggers,
        conf.fast_lane,
        conf.fast_lane_delay,
        conf.flush_interval,
        conf.keep_runs,
        conf.keep_failed_days,
        conf.park_after,
        conf.rate_limits,
        conf.search_mode,
        conf.reconcile_page,
        conf.fast_lane_max_entities,
        conf.clickhouse_connect_timeout,
        conf.metrics_token,
        conf.metrics_prefix,
        check_provider_settings,
    )


def _combinations() -> list[checks.CheckMessage]:
    """Settings that parse but cannot work together."""
    from entity_vectors.task_policy import BATCH_SOFT_LIMIT, FLUSH_SOFT_LIMIT, HARD_LIMIT_MARGIN

    problems: list[checks.CheckMessage] = []
    lease = conf.run_lease_seconds()
    longest_task = max(BATCH_SOFT_LIMIT, FLUSH_SOFT_LIMIT) + HARD_LIMIT_MARGIN
    if lease < longest_task:
        problems.append(
            checks.Error(
                f"ENTITY_VECTORS_RUN_LEASE_SECONDS={lease} is shorter than the longest task ({longest_task} s): "
                "a run still at work would be taken for abandoned and closed under its own feet",
                hint=f"set ENTITY_VECTORS_RUN_LEASE_SECONDS to at least {longest_task}",
                id="entity_vectors.E003",
            )
        )
    visibility = _visibility_timeout()
    countdown = conf.max_countdown_seconds()
    if visibility is not None and countdown + longest_task >= visibility:
        problems.append(
            checks.Error(
                f"ENTITY_VECTORS_MAX_COUNTDOWN={countdown} plus the longest task ({longest_task} s) reaches the "
                f"broker's visibility_timeout ({visibility} s): Redis would deliver delayed tasks twice",
                hint="lower ENTITY_VECTORS_MAX_COUNTDOWN or raise CELERY_VISIBILITY_TIMEOUT",
                id="entity_vectors.E004",
            )
        )
    return problems


def _visibility_timeout() -> int | None:
    try:
        from celery import current_app

        options = current_app.conf.broker_transport_options or {}
        broker = str(current_app.conf.broker_url or "")
    except Exception:
        return None
    if not broker.startswith(("redis://", "rediss://", "sqs://")):
        return None
    value = options.get("visibility_timeout", 3600)
    return int(value)


@checks.register(TAG)
def check_settings(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """Every ENTITY_VECTORS_* setting parses, the providers can be built, the combinations work."""
    errors: list[checks.CheckMessage] = []
    for reader in _readers():
        try:
            reader()
        except ConfigurationError as exc:
            errors.append(checks.Error(conf.redact(str(exc)), hint=HINT, id="entity_vectors.E001"))
    if not errors:
        errors.extend(_combinations())
    return errors


def worker_problems(pool: str, concurrency: int) -> list[checks.CheckMessage]:
    """Problems of running a Celery worker with this pool and concurrency on these settings."""
    try:
        target = conf.clickhouse_target()
    except ConfigurationError as exc:
        return [checks.Error(conf.redact(str(exc)), hint="Fix CLICKHOUSE_URL.", id="entity_vectors.E001")]
    if target.kind == "chdb" and concurrency > 1 and "solo" not in pool and "threads" not in pool:
        return [
            checks.Error(
                f"the embedded ClickHouse (CLICKHOUSE_URL=chdb://{target.path}) cannot be shared by "
                f"{concurrency} worker processes: chdb allows one process per data directory",
                hint="point CLICKHOUSE_URL at a ClickHouse server (http://user:password@host:8123/db), "
                "or serve the embedded one over HTTP (manage.py serve_clickhouse), or run --pool solo",
                id="entity_vectors.E002",
            )
        ]
    return []


def startup_problems(pool: str, concurrency: int) -> list[checks.CheckMessage]:
    """What a worker checks before it starts: the settings, then the pool."""
    return check_settings() or worker_problems(pool, concurrency)
