"""System checks: settings that cannot work are reported at start-up, with a hint."""

from __future__ import annotations

from typing import Any

from django.core import checks

from entity_vectors import conf
from entity_vectors.exceptions import ConfigurationError

TAG = "entity_vectors"


@checks.register(TAG)
def check_settings(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """Every ENTITY_VECTORS_* setting parses, and the chosen providers can be built."""
    from entity_vectors.providers import check_provider_settings

    errors: list[checks.CheckMessage] = []
    readers = (
        conf.summarizer_name,
        conf.embedder_name,
        conf.embedding_dimensions,
        conf.embedding_version,
        conf.clickhouse_target,
        conf.clickhouse_table,
        conf.schedules,
        conf.schedule_seconds,
        conf.provider_timeout,
        conf.run_lease_seconds,
        conf.max_countdown_seconds,
        check_provider_settings,
    )
    for reader in readers:
        try:
            reader()
        except ConfigurationError as exc:
            errors.append(
                checks.Error(
                    str(exc), hint="See the configuration table in the README.", id="entity_vectors.E001"
                )
            )
    return errors


def worker_problems(pool: str, concurrency: int) -> list[checks.CheckMessage]:
    """Problems of running a Celery worker with this pool and concurrency on these settings."""
    try:
        target = conf.clickhouse_target()
    except ConfigurationError as exc:
        return [checks.Error(str(exc), hint="Fix CLICKHOUSE_URL.", id="entity_vectors.E001")]
    if target.kind == "chdb" and concurrency > 1 and "solo" not in pool and "threads" not in pool:
        return [
            checks.Error(
                f"the embedded ClickHouse (CLICKHOUSE_URL=chdb://{target.path}) cannot be shared by "
                f"{concurrency} worker processes: chdb allows one process per data directory",
                hint="point CLICKHOUSE_URL at a ClickHouse server (http://user:password@host:8123/db), "
                "or run a single process with --pool solo",
                id="entity_vectors.E002",
            )
        ]
    return []
