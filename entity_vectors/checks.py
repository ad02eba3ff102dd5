"""System checks: settings that cannot work are reported at start-up, with a hint.

`manage.py check` runs them, every management command and `runserver` run them first, and
Celery's worker and beat and the WSGI app run them when they start (`refuse_to_start`): one line
per setting that cannot work, then a non-zero exit, instead of a traceback from wherever the value
is first used.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.core import checks

from entity_vectors import conf
from entity_vectors.conf import host
from entity_vectors.exceptions import ConfigurationError

TAG = "entity_vectors"
HINT = "See the configuration table in the README."


def _readers() -> tuple[Callable[[], object], ...]:
    """Every setting the project reads, each through its parser."""
    from entity_vectors.providers import check_provider_settings

    return (
        # providers and models
        conf.summarizer_name,
        conf.embedder_name,
        conf.chat_model,
        conf.embedding_model,
        conf.embedding_dimensions,
        conf.embedding_version,
        conf.openai_api_key,
        conf.openai_base_url,
        conf.provider_timeout,
        conf.provider_connect_timeout,
        conf.provider_unreachable_after,
        conf.provider_max_retries,
        conf.provider_max_backoff,
        conf.max_summary_input_tokens,
        conf.max_embedding_input_tokens,
        conf.rate_limits,
        conf.prices,
        conf.monthly_budget_usd,
        conf.budgets,
        conf.batch_api_threshold,
        conf.batch_api_max_requests,
        conf.batch_api_poll_seconds,
        conf.search_mode,
        conf.eval_queries,
        # services
        conf.clickhouse_target,
        conf.clickhouse_table,
        conf.clickhouse_cluster,
        conf.clickhouse_connect_timeout,
        conf.approximate_search_min_rows,
        conf.approximate_search_ef,
        conf.queue,
        conf.fast_queue,
        conf.broker_url,
        conf.result_backend,
        conf.limiter_url,
        conf.metrics_token,
        conf.metrics_prefix,
        conf.execution,
        conf.embedded_share,
        # runs
        conf.schedules,
        conf.schedule_seconds,
        conf.task_max_retries,
        conf.task_retry_backoff,
        conf.delay_between_batches,
        conf.run_lease_seconds,
        conf.max_countdown_seconds,
        conf.change_triggers,
        conf.fast_lane,
        conf.fast_lane_on_batch_workers,
        conf.fast_lane_delay,
        conf.fast_lane_max_entities,
        conf.fast_lane_poll_seconds,
        conf.claim_lease_seconds,
        conf.team_quantum,
        conf.interactive_share,
        conf.flush_interval,
        conf.keep_runs,
        conf.keep_failed_days,
        conf.reconcile_page,
        conf.park_after,
        # the project's own modules: Django's settings, Celery's and Flower's configuration
        host.database_url,
        host.database_conn_max_age,
        host.log_level,
        host.debug,
        host.secret_key,
        host.allowed_hosts,
        host.visibility_timeout,
        host.db_reuse_max,
        lambda: host.beat_schedule_filename(""),
        host.flower_address,
        host.flower_port,
        host.flower_basic_auth,
        host.flower_unauthenticated_api,
        check_provider_settings,
    )


def _combinations() -> list[checks.CheckMessage]:
    """Settings that parse but cannot work together."""
    from entity_vectors.tasks.policy import BATCH_SOFT_LIMIT, FLUSH_SOFT_LIMIT, HARD_LIMIT_MARGIN

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
    try:
        return int(options.get("visibility_timeout", 3600))
    except (TypeError, ValueError):
        return None


@checks.register(TAG)
def check_settings(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """Every setting parses (one error per setting that cannot work), the providers can be built,
    the combinations work."""
    errors: list[checks.CheckMessage] = []
    seen: set[str] = set()
    for reader in _readers():
        try:
            reader()
        except ConfigurationError as exc:
            message = conf.redact(" ".join(str(exc).split()))
            if message not in seen:  # readers that read another setting meet its error again
                seen.add(message)
                errors.append(checks.Error(message, hint=HINT, id="entity_vectors.E001"))
    if not errors:
        errors.extend(_combinations())
    return errors
