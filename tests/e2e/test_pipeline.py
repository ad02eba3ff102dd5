"""The Celery pipeline with real worker processes: chord, shared limiter, failures, kills, runs side by side."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from typing import Any

import pytest
from django.db import connection

from app.models import Action, Cohort, EventDefinition
from entity_vectors import search_entities
from entity_vectors.models import SyncRun, SyncRunBatch
from entity_vectors.store import EmbeddingStore
from entity_vectors.tasks import sync_entities
from tests.conftest import run_command
from tests.e2e.conftest import wait_for_run
from tests.factories import make_action, make_cohort, make_event_definition, make_team
from tests.support.openai_server import OpenAIServer
from tests.support.processes import ROOT, Service, wait_until

pytestmark = pytest.mark.slow


def start(domain: str, **kwargs: Any) -> dict[str, Any]:
    """Queue a run the way code does, and wait for the entry task's answer."""
    kwargs.setdefault("delay_between_batches", 0)
    result: dict[str, Any] = sync_entities.delay(domain, **kwargs).get(timeout=60)
    return result


class TestFullRun:
    """Every domain through `sync_entities.delay` on two worker processes."""

    def test_every_domain_lands_in_clickhouse_with_its_counts(
        self, pipeline: EmbeddingStore, llm: OpenAIServer
    ) -> None:
        llm.latency = 0.05
        team, other = make_team(), make_team()
        for index in range(8):
            make_action(team, name=f"Action {index}")
            make_cohort(team, name=f"Cohort {index}")
            make_event_definition(team, name=f"event_{index}")
        make_action(other, name="Other team's action")

        started = [
            start(domain, summarize_batch_size=3) for domain in ("action", "cohort", "event_definition")
        ]
        runs = [wait_for_run(result["run_id"]) for result in started]

        assert [result["status"] for result in started] == ["started"] * 3
        for run, model, expected in zip(runs, (Action, Cohort, EventDefinition), (9, 8, 8), strict=True):
            assert run.status == SyncRun.Status.SUCCEEDED, run.error
            assert (run.selected, run.summarized, run.embedded, run.inserted) == (
                expected,
                expected,
                expected,
                expected,
            )
            assert run.provider_requests == expected + run.batches_total
            assert run.prompt_tokens > 0 and run.embedding_tokens > 0
            rows = {row.id for row in pipeline.latest_rows(run.domain) if not row.is_deleted}
            assert rows == {str(pk) for pk in model.objects.values_list("pk", flat=True)}
            assert (
                model.objects.filter(embedding_version=1, embedding_last_synced_at__isnull=False).count()
                == expected
            )
        pids = set(SyncRunBatch.objects.values_list("worker_pid", flat=True))
        assert len(pids) >= 2, "both worker processes took batches"
        assert [hit.team_id for hit in search_entities("action", other.id, "action")] == [other.id]

    def test_the_command_follows_a_queued_run_to_its_end(self, pipeline: EmbeddingStore) -> None:
        team = make_team()
        for _ in range(4):
            make_action(team)
        out, _ = run_command(
            "sync_entity_vectors",
            "--domain",
            "action",
            "--wait",
            "--summarize-batch-size",
            "2",
            "--delay-between-batches",
            "0",
            "--timeout",
            "90",
        )

        assert "action: queued as task" in out
        assert "action: succeeded" in out
        assert "on the workers" in out
        assert (
            "selected 4, summarized 4 (reused 0, failed 0), embedded 4 (vectors reused 0, failed 0), inserted 4"
            in out
        )
        assert "2/2 batches" in out


class TestFlushAsItGoes:
    """A distributed run's staged rows are inserted while its batches still run, counted once."""

    def test_rows_flushed_by_the_batches_and_the_body_are_each_counted_once(
        self, pipeline: EmbeddingStore, llm: OpenAIServer, workers: list[Service]
    ) -> None:
        llm.latency = 0.05
        team = make_team()
        actions = [make_action(team, name=f"Action {index}") for index in range(12)]

        # An insert of 4 rows: the batches (2 entities each) flush while the run stages.
        run = wait_for_run(start("action", summarize_batch_size=2, insert_batch_size=4)["run_id"])

        assert run.status == SyncRun.Status.SUCCEEDED, run.error
        assert (run.selected, run.summarized, run.embedded, run.inserted) == (12, 12, 12, 12)
        batches = SyncRunBatch.objects.filter(run=run)
        assert set(batches.values_list("status", flat=True)) == {SyncRunBatch.Status.FLUSHED}
        rows = [row for row in pipeline.latest_rows("action") if not row.is_deleted]
        assert sorted(row.id for row in rows) == sorted(str(action.pk) for action in actions)
        assert len(llm.chat_requests()) == 12  # nothing paid twice
        flushed_by_batches = [
            line
            for node in workers
            for line in node.log().splitlines()
            if "sync.flushed" in line and "partial=True" in line and str(run.pk) in line
        ]
        assert flushed_by_batches, "no batch flushed while the run was staging"

    def test_rows_staged_longer_than_the_flush_interval_go_in_before_the_run_ends(
        self, pipeline: EmbeddingStore, llm: OpenAIServer
    ) -> None:
        llm.latency = 0.5  # 8 batches on 2 processes: ~2 s of staging, the interval is 1 s
        team = make_team()
        actions = [make_action(team, name=f"Action {index}") for index in range(16)]

        run_id = start("action", summarize_batch_size=2, insert_batch_size=1000)["run_id"]
        batches = SyncRunBatch.objects.filter(run_id=run_id)
        first_rows_while_pending = None  # batches not staged yet when rows were first searchable
        while SyncRun.objects.get(pk=run_id).status == SyncRun.Status.RUNNING:
            if any(not row.is_deleted for row in pipeline.latest_rows("action")):
                # Counted after the rows were seen: these batches were pending while they were.
                first_rows_while_pending = batches.filter(status=SyncRunBatch.Status.PENDING).count()
                break
            time.sleep(0.05)
        run = wait_for_run(run_id)

        assert run.status == SyncRun.Status.SUCCEEDED, run.error
        assert run.inserted == 16 and len(llm.chat_requests()) == 16
        # No insert of 1,000 rows was ever filled: rows went in at the interval, batches still to come.
        assert first_rows_while_pending, "nothing was searchable before every batch had staged"
        rows = [row for row in pipeline.latest_rows("action") if not row.is_deleted]
        assert sorted(row.id for row in rows) == sorted(str(action.pk) for action in actions)


class TestSpacing:
    """delay_between_batches spaces the batches' starts with short countdowns, never long ETAs."""

    def test_batches_start_apart_through_short_deferrals(self, pipeline: EmbeddingStore) -> None:
        team = make_team()
        for _ in range(3):
            make_event_definition(team)

        run = wait_for_run(
            start("event_definition", summarize_batch_size=1, delay_between_batches=1.5)["run_id"]
        )

        assert run.status == SyncRun.Status.SUCCEEDED, run.error
        for batch in SyncRunBatch.objects.filter(run=run):
            assert batch.started_at is not None
            assert (batch.started_at - run.started_at).total_seconds() >= 1.5 * batch.index
            assert batch.attempts == 1  # waiting is not an attempt


class TestCeleryCall:
    """`celery -A app call ai-sync-entity-vectors --kwargs ...` starts a run."""

    def test_celery_call_starts_a_run(self, pipeline: EmbeddingStore, service_env: dict[str, str]) -> None:
        make_action(make_team())

        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "app",
                "call",
                "ai-sync-entity-vectors",
                "--kwargs",
                '{"domain": "action", "embedding_version": 1, "delay_between_batches": 0}',
            ],
            cwd=ROOT,
            env=service_env,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        task_id = result.stdout.strip()

        wait_until(
            lambda: SyncRun.objects.filter(task_id=task_id).exists(), timeout=30, what="the called run"
        )
        run = wait_for_run(str(SyncRun.objects.get(task_id=task_id).id))
        assert run.status == SyncRun.Status.SUCCEEDED and run.inserted == 1


def _database_sessions() -> int:
    """Connections ever opened to the test database (PostgreSQL's own count, as of now)."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_stat_clear_snapshot()")
        cursor.execute("SELECT sessions FROM pg_stat_database WHERE datname = current_database()")
        return int(cursor.fetchone()[0])


class TestDatabaseConnections:
    """A worker process keeps its database connection from task to task (CONN_MAX_AGE honoured)."""

    def test_a_run_of_ten_tasks_opens_no_connection_per_task(self, pipeline: EmbeddingStore) -> None:
        team = make_team()
        for index in range(16):
            make_action(team, name=f"Action {index}")
        before = _database_sessions()

        # The entry task, 8 batches and the callback: 10 tasks on the same 2 worker processes.
        run = wait_for_run(start("action", summarize_batch_size=2)["run_id"])

        assert run.status == SyncRun.Status.SUCCEEDED, run.error
        assert SyncRunBatch.objects.filter(run=run).count() == 8
        opened = _database_sessions() - before
        # At most one per worker process (if an earlier one outlived CONN_MAX_AGE), not one per task.
        assert opened <= 2, f"{opened} database connections opened for a run of 10 tasks"


class TestSharedLimiter:
    """max_parallel_requests bounds the requests in flight across every worker process."""

    def test_never_more_than_three_in_flight(self, pipeline: EmbeddingStore, llm: OpenAIServer) -> None:
        llm.latency = 0.15
        team = make_team()
        for _ in range(24):
            make_event_definition(team)

        run = wait_for_run(
            start("event_definition", summarize_batch_size=6, max_parallel_requests=3)["run_id"]
        )

        assert run.status == SyncRun.Status.SUCCEEDED, run.error
        assert len(set(SyncRunBatch.objects.values_list("worker_pid", flat=True))) == 2
        assert 2 <= llm.peak_in_flight <= 3


class TestFailures:
    """A failed header task fails only its batch; the run flushes the rest and says what failed."""

    def test_failed_batch_does_not_lose_the_others(self, pipeline: EmbeddingStore, llm: OpenAIServer) -> None:
        team = make_team()
        healthy = [make_action(team, name=f"Healthy {index}") for index in range(4)]
        doomed = make_action(team, name="Doomed", description="EMBED-FAILS")
        llm.fail_when("EMBED-FAILS", status=500, path="/embeddings")

        run = wait_for_run(start("action", summarize_batch_size=1)["run_id"])

        assert run.status == SyncRun.Status.PARTIAL
        assert run.batches_failed == 1 and run.batches_done == 4
        assert "ProviderUnavailable" in run.error and "failed" in run.error
        rows = {row.id for row in pipeline.latest_rows("action")}
        assert rows == {str(action.pk) for action in healthy}

        llm.reset()
        retry = wait_for_run(start("action")["run_id"])
        assert retry.status == SyncRun.Status.SUCCEEDED
        assert retry.selected == 1 and retry.summaries_reused == 1 and retry.inserted == 1
        assert llm.chat_requests() == []  # its summary was saved by the failed attempt
        assert str(doomed.pk) in {row.id for row in pipeline.latest_rows("action")}

    def test_a_worker_killed_mid_batch_loses_and_duplicates_nothing(
        self, pipeline: EmbeddingStore, llm: OpenAIServer
    ) -> None:
        llm.latency = 0.4
        team = make_team()
        actions = [
            make_action(team, name=f"Killable {index}", description="signup funnel") for index in range(6)
        ]

        run_id = start("action", summarize_batch_size=3, max_parallel_requests=2)["run_id"]
        victim = wait_until(
            lambda: (
                SyncRunBatch.objects.filter(run_id=run_id, status="pending", worker_pid__isnull=False)
                .values_list("worker_pid", flat=True)
                .first()
            ),
            timeout=30,
            what="a batch to be in progress",
        )
        wait_until(lambda: llm.chat_requests(), timeout=10, what="a request in flight")
        os.kill(int(victim), signal.SIGKILL)  # type: ignore[call-overload]
        run = wait_for_run(run_id, timeout=120)

        assert run.status == SyncRun.Status.SUCCEEDED, run.error
        assert run.inserted == 6
        assert max(SyncRunBatch.objects.filter(run_id=run_id).values_list("attempts", flat=True)) >= 2
        hits = search_entities("action", team.id, "signup funnel", limit=50)
        assert Counter(hit.id for hit in hits) == Counter(str(action.pk) for action in actions)
        assert pipeline.count_rows("action") == 6  # each row written once: the flush ran once


class TestRunsSideBySide:
    """Runs of one domain go side by side on different entities (each batch claims its own);
    different domains too."""

    def test_overlapping_runs_of_one_domain_share_the_work(self, pipeline: EmbeddingStore, llm: OpenAIServer) -> None:
        llm.latency = 0.3
        team = make_team()
        actions = [make_action(team, name=f"Shared work {index:02d}") for index in range(8)]
        for _ in range(4):
            make_cohort(team)

        first = start("action", summarize_batch_size=2, max_parallel_requests=1)
        second = start("action", summarize_batch_size=3)
        cohorts = start("cohort")

        assert [first["status"], second["status"], cohorts["status"]] == ["started"] * 3
        runs = [wait_for_run(started["run_id"]) for started in (first, second, cohorts)]
        assert [run.status for run in runs] == [SyncRun.Status.SUCCEEDED] * 3
        assert runs[0].inserted + runs[1].inserted == 8  # each action written by one of them
        asked = [request.body["messages"][-1]["content"] for request in llm.chat_requests()]
        for action in actions:
            assert sum(action.name in text for text in asked) == 1  # summarized once
        assert pipeline.count_rows("action") == 8
        assert not SyncRun.objects.filter(status=SyncRun.Status.SKIPPED).exists()
