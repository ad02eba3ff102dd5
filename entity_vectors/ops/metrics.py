"""Prometheus metrics: freshness, coverage, failures and spend per domain and team, and the workers' tasks.

`GET /metrics` (`entity_vectors.ops.views.metrics`, behind a bearer token or a staff session) serves
`REGISTRY`. Everything is computed when Prometheus scrapes: the domains' figures from
`status.domain_status` (a fixed handful of queries per registered domain, one more for the runs),
the tasks' counts and durations from one Redis hash that every worker process adds to.

| metric | type | labels | meaning |
|---|---|---|---|
| `entity_vectors_live_entities` | gauge | domain, team | entities eligible for a vector (consented, not deleted) |
| `entity_vectors_covered_entities` | gauge | domain, team | live entities with a current vector at the served embedding version |
| `entity_vectors_coverage_ratio` | gauge | domain, team | covered / live (1 when a team has no live entities) |
| `entity_vectors_pending_entities` | gauge | domain, team | live entities changed since their last sync, waiting for the next run |
| `entity_vectors_oldest_pending_seconds` | gauge | domain, team | age of the team's oldest change not yet handled (0 when nothing waits; `max by (domain)` for the domain's) |
| `entity_vectors_failing_entities` | gauge | domain, team | entities whose last attempts failed and that will be tried again |
| `entity_vectors_parked_entities` | gauge | domain, team | entities that failed too often and are not sent again until they change |
| `entity_vectors_spend_usd_30d` | gauge | domain | provider spend of the domain's runs and Batch API jobs started in the last 30 days, USD |
| `entity_vectors_served_version` | gauge | domain | the embedding version searches read |
| `entity_vectors_last_run_timestamp_seconds` | gauge | domain, status | Unix time the latest run with this status finished (started, while running) |
| `entity_vectors_runs_running` | gauge | domain | runs of the domain now running |
| `entity_vectors_tasks_total` | counter | task, outcome | task executions in every worker, by outcome: succeeded, failed, retried (a batch deferred until its start time counts as retried) |
| `entity_vectors_task_duration_seconds` | histogram | task | how long task executions took (`_bucket`, `_sum`, `_count`) |
| `entity_vectors_task_metrics_up` | gauge | | 1 when the task figures could be read from Redis, 0 when not |

`team` is the team's id; `task` is the task's registered name (`ai-sync-…`), never its display
name. A task killed by its hard time limit is counted as failed (by the worker's main process)
but has no duration. The task figures are recorded by `task_metrics` in the Redis hash
`<ENTITY_VECTORS_METRICS_PREFIX>:tasks` on the limiter's Redis (`ENTITY_VECTORS_LIMITER_URL`, the
broker's by default); without one nothing is recorded.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import structlog
from django.db.models import Count, Max
from django.db.models.functions import Coalesce
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from entity_vectors import conf
from entity_vectors.core.registry import registered_domains
from entity_vectors.models import SyncRun
from entity_vectors.ops.status import TeamStatus, domain_status
from entity_vectors.tasks.metrics import BUCKET_LABELS, redis_client, tasks_key

log = structlog.get_logger("entity_vectors")


# The per-team gauges: name, help, and the team's figure.
_TEAM_GAUGES: tuple[tuple[str, str, Callable[[TeamStatus], float]], ...] = (
    ("entity_vectors_live_entities", "Entities eligible for a vector.", lambda team: team.live),
    (
        "entity_vectors_covered_entities",
        "Live entities with a current vector at the served embedding version.",
        lambda team: min(team.covered, team.live),
    ),
    (
        "entity_vectors_coverage_ratio",
        "Covered entities / live entities (1 when none).",
        lambda team: team.coverage,
    ),
    (
        "entity_vectors_pending_entities",
        "Live entities changed since their last sync.",
        lambda team: team.pending,
    ),
    (
        "entity_vectors_oldest_pending_seconds",
        "Age of the team's oldest change not yet handled.",
        lambda team: team.oldest_pending_seconds,
    ),
    (
        "entity_vectors_failing_entities",
        "Entities whose last attempts failed (tried again).",
        lambda team: team.failing,
    ),
    (
        "entity_vectors_parked_entities",
        "Entities parked after too many failures.",
        lambda team: team.parked,
    ),
)


def domain_metrics() -> list[Metric]:
    """The per-domain and per-team gauges, from the status of every registered domain."""
    teams = [
        (GaugeMetricFamily(name, documentation, labels=["domain", "team"]), figure)
        for name, documentation, figure in _TEAM_GAUGES
    ]
    spend = GaugeMetricFamily(
        "entity_vectors_spend_usd_30d",
        "Provider spend of runs started in the last 30 days, USD.",
        labels=["domain"],
    )
    served = GaugeMetricFamily(
        "entity_vectors_served_version", "The embedding version searches read.", labels=["domain"]
    )
    domains = registered_domains()
    for domain in domains:
        status = domain_status(domain, runs=0)
        for team in sorted(status.teams.values(), key=lambda team: team.team_id):
            for gauge, figure in teams:
                gauge.add_metric([domain, str(team.team_id)], figure(team))
        spend.add_metric([domain], float(status.spend_usd))
        served.add_metric([domain], status.served_version)
    return [*(gauge for gauge, _ in teams), spend, served, *_run_metrics(domains)]


def _run_metrics(domains: list[str]) -> list[Metric]:
    """When each domain's runs last finished, by status, and how many run now."""
    last_run = GaugeMetricFamily(
        "entity_vectors_last_run_timestamp_seconds",
        "Unix time the latest run with this status finished (started, while running).",
        labels=["domain", "status"],
    )
    running = GaugeMetricFamily("entity_vectors_runs_running", "Runs now running.", labels=["domain"])
    now_running = dict.fromkeys(domains, 0)
    rows = (
        SyncRun.objects.filter(domain__in=domains)
        .order_by()
        .values("domain", "status")
        .annotate(last=Max(Coalesce("finished_at", "started_at")), n=Count("pk"))
        .order_by("domain", "status")
    )
    for row in rows:
        if row["last"] is not None:
            last_run.add_metric([row["domain"], row["status"]], row["last"].timestamp())
        if row["status"] == SyncRun.Status.RUNNING:
            now_running[row["domain"]] = int(row["n"])
    for domain, count in now_running.items():
        running.add_metric([domain], count)
    return [last_run, running]


def read_task_fields() -> dict[str, str] | None:
    """The shared task figures as stored (field -> number), or None without a Redis to read."""
    client = redis_client()
    if client is None:
        return None
    fields: dict[str, str] = client.hgetall(tasks_key())  # type: ignore[assignment]
    return fields


def task_metrics() -> list[Metric]:
    """The workers' task counts and duration histograms, read from Redis."""
    total = CounterMetricFamily(
        "entity_vectors_tasks", "Task executions in every worker, by outcome.", labels=["task", "outcome"]
    )
    duration = HistogramMetricFamily(
        "entity_vectors_task_duration_seconds", "How long task executions took.", labels=["task"]
    )
    up = GaugeMetricFamily(
        "entity_vectors_task_metrics_up", "1 when the task figures could be read from Redis."
    )
    try:
        fields = read_task_fields()
    except Exception as exc:
        log.warning("metrics.read_failed", error=conf.redact(f"{type(exc).__name__}: {exc}"))
        fields = None
    up.add_metric([], 0 if fields is None else 1)
    counts: dict[tuple[str, str], int] = {}
    buckets: dict[str, dict[str, int]] = {}
    sums: dict[str, float] = {}
    for field, value in (fields or {}).items():
        kind, _, rest = field.partition("|")
        try:
            if kind == "count":
                task, _, outcome = rest.rpartition("|")
                counts[(task, outcome)] = int(value)
            elif kind == "bucket":
                task, _, bound = rest.rpartition("|")
                buckets.setdefault(task, {})[bound] = int(value)
            elif kind == "sum":
                sums[rest] = float(value)
        except ValueError:
            continue  # not ours, or damaged: skip the field, keep the rest
    for (task, outcome), count in sorted(counts.items()):
        total.add_metric([task, outcome], count)
    for task in sorted(set(buckets) | set(sums)):
        cumulative, series = 0, []
        for bound in BUCKET_LABELS:
            cumulative += buckets.get(task, {}).get(bound, 0)
            series.append((bound, float(cumulative)))
        duration.add_metric([task], series, sums.get(task, 0.0))
    return [total, duration, up]


class EntityVectorsCollector(Collector):
    """Computes every metric at scrape time: the domains' status from the database, the tasks from Redis."""

    def collect(self) -> Iterator[Metric]:
        """Yield the metric families of one scrape."""
        yield from domain_metrics()
        yield from task_metrics()


REGISTRY = CollectorRegistry(auto_describe=False)
REGISTRY.register(EntityVectorsCollector())


def exposition() -> bytes:
    """One scrape in the Prometheus text format (`prometheus_client.CONTENT_TYPE_LATEST`)."""
    return generate_latest(REGISTRY)
