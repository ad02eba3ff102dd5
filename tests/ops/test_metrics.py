"""GET /metrics: freshness, coverage, failures and the workers' tasks for Prometheus, behind auth."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families

from entity_vectors.core.registry import registered_domains
from entity_vectors.exceptions import TransientError
from entity_vectors.models import EntityFailure
from entity_vectors.ops import metrics
from entity_vectors.store import EmbeddingStore
from entity_vectors.tasks import metrics as task_metrics
from entity_vectors.tasks import sweep_runs, sync_entities
from entity_vectors.tasks.names import SWEEP_TASK
from tests.conftest import run_command, run_workflow
from tests.factories import make_action, make_team

pytestmark = pytest.mark.django_db
URL = "/metrics"
TOKEN = "metrics-token-0123456789abcdef"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture
def metrics_settings(settings: Any, redis_client: redis.Redis) -> Iterator[str]:
    """The metrics token, and a Redis key prefix of this test's own (its hash deleted afterwards)."""
    prefix = f"test-metrics:{uuid.uuid4().hex}"
    settings.ENTITY_VECTORS_METRICS_TOKEN = TOKEN
    settings.ENTITY_VECTORS_METRICS_PREFIX = prefix
    task_metrics._paused_until = 0.0
    yield prefix
    redis_client.delete(f"{prefix}:tasks")


def get(client: Client, token: str | None = TOKEN, header: str | None = None) -> Any:
    """A GET of /metrics with the bearer token (or a raw Authorization header), if any."""
    if header is None and token is not None:
        header = f"Bearer {token}"
    return client.get(URL, headers={"Authorization": header} if header is not None else {})


def scrape(client: Client) -> Samples:
    """Every sample of one authorized scrape, by name and labels."""
    response = get(client)
    assert response.status_code == 200, response.content
    samples: Samples = {}
    for family in text_string_to_metric_families(response.content.decode()):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    """One sample's value; KeyError naming what was there when it is missing."""
    key = (name, frozenset(labels.items()))
    if key not in samples:
        present = sorted(str(dict(other)) for sample, other in samples if sample == name)
        raise KeyError(f"{name}{labels} not scraped; present: {present}")
    return samples[key]


class TestDomainMetrics:
    """Per-domain and per-team figures, computed at scrape time from the pipeline's tables."""

    def test_exact_figures_of_a_team(
        self, client: Client, offline: None, embedded_store: EmbeddingStore, metrics_settings: str
    ) -> None:
        team, other = make_team(), make_team()
        make_action(team, name="Synced")
        run = run_workflow("action")
        failing, parked = make_action(team, name="Failing"), make_action(team, name="Parked")
        make_action(other, name="Waiting")
        now = timezone.now()
        EntityFailure.objects.create(
            domain="action", entity_id=str(failing.pk), team_id=team.id, failures=1, last_failed_at=now
        )
        EntityFailure.objects.create(
            domain="action",
            entity_id=str(parked.pk),
            team_id=team.id,
            failures=5,
            last_failed_at=now,
            parked_at=now,
        )

        samples = scrape(client)

        mine = {"domain": "action", "team": str(team.id)}
        assert value(samples, "entity_vectors_live_entities", **mine) == 3
        assert value(samples, "entity_vectors_covered_entities", **mine) == 1
        assert value(samples, "entity_vectors_coverage_ratio", **mine) == pytest.approx(1 / 3)
        assert value(samples, "entity_vectors_pending_entities", **mine) == 2
        assert value(samples, "entity_vectors_failing_entities", **mine) == 1
        assert value(samples, "entity_vectors_parked_entities", **mine) == 1
        theirs = {"domain": "action", "team": str(other.id)}
        assert value(samples, "entity_vectors_live_entities", **theirs) == 1
        assert value(samples, "entity_vectors_covered_entities", **theirs) == 0
        assert value(samples, "entity_vectors_coverage_ratio", **theirs) == 0
        assert value(samples, "entity_vectors_pending_entities", **theirs) == 1
        assert value(samples, "entity_vectors_oldest_pending_seconds", **mine) > 0
        assert value(samples, "entity_vectors_oldest_pending_seconds", **theirs) > 0
        out, _ = run_command("entity_vectors_status", "--domain", "action", "--teams")
        assert f"team {team.id}: live 3, covered 1 (33%), pending 2 (oldest " in out
        assert value(samples, "entity_vectors_served_version", domain="action") == 1
        assert value(samples, "entity_vectors_spend_usd_30d", domain="action") == 0
        assert value(samples, "entity_vectors_runs_running", domain="action") == 0
        assert run.finished_at is not None
        assert value(
            samples, "entity_vectors_last_run_timestamp_seconds", domain="action", status="succeeded"
        ) == pytest.approx(run.finished_at.timestamp())
        for domain in registered_domains():
            assert value(samples, "entity_vectors_served_version", domain=domain) >= 1
            assert value(samples, "entity_vectors_runs_running", domain=domain) == 0

    def test_queries_per_scrape_do_not_grow_with_teams_or_entities(self, metrics_settings: str) -> None:
        make_action(make_team())
        with CaptureQueriesContext(connection) as small:
            metrics.exposition()
        for _ in range(4):
            team = make_team()
            for _ in range(3):
                make_action(team)
        with CaptureQueriesContext(connection) as large:
            metrics.exposition()

        assert len(large) == len(small)
        assert len(large) <= 15 * len(registered_domains()) + 1


class TestAuth:
    """The metrics token or a staff session; nothing is ever served anonymously."""

    def test_the_token_gets_the_exposition(self, client: Client, metrics_settings: str) -> None:
        response = get(client)

        assert response.status_code == 200
        assert response["Content-Type"] == CONTENT_TYPE_LATEST
        assert b"# TYPE entity_vectors_live_entities gauge" in response.content

    @pytest.mark.parametrize(
        "header",
        [
            pytest.param(None, id="missing"),
            pytest.param("Bearer wrong-token-0123456789abcdef", id="wrong"),
            pytest.param(f"Bearer {TOKEN}x", id="longer"),
            pytest.param(f"Bearer {TOKEN}\x00", id="nul-after"),
            pytest.param(f"Bearer {TOKEN[:5]}\x00{TOKEN[5:]}", id="nul-inside"),
            pytest.param(f"Bearer {TOKEN}\x1f", id="control"),
            pytest.param(f"Basic {TOKEN}", id="other-scheme"),
            pytest.param("Bearer", id="empty"),
        ],
    )
    def test_anything_else_is_401(self, client: Client, metrics_settings: str, header: str | None) -> None:
        response = get(client, token=None, header=header)

        assert response.status_code == 401
        assert response["WWW-Authenticate"].startswith("Bearer ")
        assert b"entity_vectors" not in response.content

    def test_without_the_setting_no_token_works(
        self, client: Client, settings: Any, metrics_settings: str
    ) -> None:
        settings.ENTITY_VECTORS_METRICS_TOKEN = None

        assert get(client).status_code == 401

    def test_a_token_too_short_to_be_safe_is_refused(
        self, client: Client, settings: Any, metrics_settings: str
    ) -> None:
        settings.ENTITY_VECTORS_METRICS_TOKEN = "short"

        assert get(client, token="short").status_code == 401

    def test_a_staff_session_works_without_a_token(
        self, client: Client, django_user_model: Any, settings: Any, metrics_settings: str
    ) -> None:
        settings.ENTITY_VECTORS_METRICS_TOKEN = None
        client.force_login(django_user_model.objects.create_user("operator", is_staff=True))

        response = get(client, token=None)

        assert response.status_code == 200
        assert b"entity_vectors_coverage_ratio" in response.content

    def test_a_non_staff_session_is_401(
        self, client: Client, django_user_model: Any, metrics_settings: str
    ) -> None:
        client.force_login(django_user_model.objects.create_user("someone"))

        assert get(client, token=None).status_code == 401

    def test_only_get(self, client: Client, metrics_settings: str) -> None:
        assert client.post(URL, headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 405


class TestTaskMetrics:
    """Every ai-sync- task is counted and timed in Redis by the Celery signals, and scraped by the web."""

    def test_a_task_run_is_counted_and_timed(self, client: Client, metrics_settings: str) -> None:
        assert sweep_runs.apply().successful()

        samples = scrape(client)

        assert value(samples, "entity_vectors_tasks_total", task=SWEEP_TASK, outcome="succeeded") == 1
        assert value(samples, "entity_vectors_task_duration_seconds_count", task=SWEEP_TASK) == 1
        assert value(samples, "entity_vectors_task_duration_seconds_sum", task=SWEEP_TASK) > 0
        cumulative = [
            value(samples, "entity_vectors_task_duration_seconds_bucket", task=SWEEP_TASK, le=bound)
            for bound in task_metrics.BUCKET_LABELS
        ]
        assert cumulative == sorted(cumulative) and cumulative[-1] == 1
        assert value(samples, "entity_vectors_task_metrics_up") == 1

    def test_failures_and_retries_have_their_outcomes(
        self, client: Client, monkeypatch: pytest.MonkeyPatch, metrics_settings: str
    ) -> None:
        def flaky() -> None:
            raise TransientError("ClickHouse is away")

        monkeypatch.setattr("entity_vectors.workflow.sweep", flaky)

        assert sweep_runs.apply().failed()  # eagerly: every retry at once, then it gives up
        # A display name (shadow) never replaces the task's registered name.
        assert sync_entities.apply(kwargs={"domain": "no-such-domain"}, shadow="sync nothing").failed()

        samples = scrape(client)
        retries = sweep_runs.max_retries
        assert value(samples, "entity_vectors_tasks_total", task=SWEEP_TASK, outcome="retried") == retries
        assert value(samples, "entity_vectors_tasks_total", task=SWEEP_TASK, outcome="failed") == 1
        assert value(samples, "entity_vectors_task_duration_seconds_count", task=SWEEP_TASK) == retries + 1
        entry = {"task": "ai-sync-entity-vectors", "outcome": "failed"}
        assert value(samples, "entity_vectors_tasks_total", **entry) == 1
        assert not any("sync nothing" in str(labels) for _, labels in samples)

    def test_other_processes_counts_are_scraped(
        self, client: Client, settings: Any, metrics_settings: str
    ) -> None:
        """A task run in another process (as in a worker) shows in this process's scrape."""
        child = textwrap.dedent(
            """
            import django
            django.setup()
            from celery import shared_task
            import entity_vectors.tasks  # what a worker imports: it connects the signal handlers

            @shared_task(name="ai-sync-test-probe")
            def probe():
                return "ok"

            @shared_task(name="someone-elses-task")
            def foreign():
                return "ok"

            assert probe.apply().get() == "ok" and probe.apply().get() == "ok"
            assert foreign.apply().get() == "ok"
            """
        )
        env = {
            **{name: setting for name, setting in os.environ.items() if name != "CLICKHOUSE_URL"},
            "DJANGO_SETTINGS_MODULE": "tests.settings",
            "ENTITY_VECTORS_METRICS_PREFIX": metrics_settings,
            "ENTITY_VECTORS_LOG_LEVEL": "WARNING",
        }
        root = Path(__file__).resolve().parents[2]
        subprocess.run([sys.executable, "-c", child], env=env, cwd=root, check=True, timeout=120)

        samples = scrape(client)

        assert (
            value(samples, "entity_vectors_tasks_total", task="ai-sync-test-probe", outcome="succeeded") == 2
        )
        assert value(samples, "entity_vectors_task_duration_seconds_count", task="ai-sync-test-probe") == 2
        assert not any(dict(labels).get("task") == "someone-elses-task" for _, labels in samples)

    def test_a_redis_outage_never_fails_a_task(
        self, client: Client, settings: Any, metrics_settings: str
    ) -> None:
        settings.ENTITY_VECTORS_LIMITER_URL = "redis://127.0.0.1:1/0"  # nothing listens there

        assert sweep_runs.apply().successful()
        samples = scrape(client)

        assert value(samples, "entity_vectors_task_metrics_up") == 0
        assert not any(name == "entity_vectors_tasks_total" for name, _ in samples)
        assert task_metrics.record_task(SWEEP_TASK, "succeeded", 0.1) is False  # paused: no second wait
