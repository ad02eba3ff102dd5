"""Housekeeping: run history is pruned, a closed run keeps no payload, counts say what happened."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import numpy as np
import pytest
from django.db import connection
from django.utils import timezone

from entity_vectors import workflow
from entity_vectors.core.inputs import SyncEntityVectorsInputs
from entity_vectors.models import SyncRun, SyncRunBatch
from entity_vectors.providers.access import LocalAccess
from entity_vectors.store import EmbeddingStore
from entity_vectors.tasks import sweep_runs
from tests.conftest import run_workflow
from tests.factories import make_action, make_team
from tests.support.openai_server import OpenAIServer

pytestmark = pytest.mark.django_db


def old_run(domain: str, status: str, days: int) -> SyncRun:
    run = SyncRun.objects.create(
        domain=domain, status=status, start_dt=timezone.now(), finished_at=timezone.now(), inputs={}
    )
    SyncRun.objects.filter(pk=run.pk).update(started_at=timezone.now() - timedelta(days=days))
    return run


class TestPruning:
    """The sweeper keeps the last N runs per domain, and failed ones for D days."""

    def test_old_runs_go_failed_ones_stay_their_days(
        self, offline: None, embedded_store: EmbeddingStore, settings: Any
    ) -> None:
        settings.ENTITY_VECTORS_KEEP_RUNS = 3
        settings.ENTITY_VECTORS_KEEP_FAILED_DAYS = 7
        succeeded = [old_run("action", SyncRun.Status.SUCCEEDED, days=10 + index) for index in range(5)]
        recent_failure = old_run("action", SyncRun.Status.FAILED, days=20)
        recent_failure.started_at = timezone.now() - timedelta(days=2)
        SyncRun.objects.filter(pk=recent_failure.pk).update(started_at=recent_failure.started_at)
        old_failure = old_run("action", SyncRun.Status.PARTIAL, days=30)
        other_domain = old_run("cohort", SyncRun.Status.SUCCEEDED, days=40)

        result = sweep_runs.apply().result

        kept = set(SyncRun.objects.values_list("pk", flat=True))
        assert recent_failure.pk in kept  # failed, but younger than 7 days
        assert old_failure.pk not in kept
        assert {run.pk for run in succeeded[:2]} <= kept  # among the newest three
        assert other_domain.pk in kept  # its domain's only run
        assert result["pruned"] == len({run.pk for run in [*succeeded, old_failure]} - kept)


class TestClosedRuns:
    """A batch that finishes after its run was closed stages nothing; batch states say what happened."""

    def test_a_batch_after_the_sweeper_closed_its_run_is_dropped(
        self, offline: None, embedded_store: EmbeddingStore
    ) -> None:
        make_action(make_team(), name="Late batch")
        started = workflow.start_run(SyncEntityVectorsInputs(domain="action", delay_between_batches=0))
        workflow.close_run(started.run.id, error="abandoned: its lease ran out")

        assert workflow.process_batch(started.context, 0, LocalAccess(1)) is None

        batch = SyncRunBatch.objects.get(run=started.run)
        assert batch.status == SyncRunBatch.Status.PENDING and bytes(batch.rows) == b""  # nothing staged
        assert embedded_store.count_rows("action") == 0
        assert run_workflow("action").inserted == 1  # the entity waited for the next run

    def test_a_run_closed_while_batches_were_staged_drops_their_payloads(
        self, offline: None, embedded_store: EmbeddingStore
    ) -> None:
        make_action(make_team(), name="Staged, never flushed")
        started = workflow.start_run(SyncEntityVectorsInputs(domain="action", delay_between_batches=0))
        workflow.process_batch(started.context, 0, LocalAccess(1))

        closed = workflow.close_run(started.run.id, error="closed by the sweeper")

        assert closed is not None and closed.status == SyncRun.Status.FAILED
        batch = SyncRunBatch.objects.get(run=started.run)
        assert batch.status == SyncRunBatch.Status.DROPPED and bytes(batch.vectors) == b""
        assert "1 staged batches were not flushed" in closed.error


class TestStagedPayloads:
    """A staged batch's payload is stored with LZ4 on PostgreSQL and flushes unchanged."""

    def test_a_payload_is_compressed_with_lz4_and_flushes_the_vectors_it_was_given(
        self, offline: None, embedded_store: EmbeddingStore
    ) -> None:
        team = make_team()
        for index in range(20):  # 20 vectors of 256 floats: above PostgreSQL's 2 KB TOAST threshold
            make_action(team, name=f"Signed up from campaign {index}", description=f"landing page {index}")
        started = workflow.start_run(SyncEntityVectorsInputs(domain="action", delay_between_batches=0))
        workflow.process_batch(started.context, 0, LocalAccess(1))
        batch = SyncRunBatch.objects.get(run=started.run)
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT pg_column_compression(rows), pg_column_compression(vectors), length(vectors) "
                "FROM entity_vectors_syncrunbatch WHERE id = %s",
                [batch.pk],
            )
            rows_compression, vectors_compression, size = cursor.fetchone()
        staged = np.frombuffer(bytes(batch.vectors), dtype="<f4").reshape(20, 256)
        assert len({vector.tobytes() for vector in staged}) == 20

        assert (rows_compression, vectors_compression, size) == ("lz4", "lz4", 20 * 256 * 4)
        finished = workflow.finish_run(started.run.id)
        assert finished is not None and finished.inserted == 20
        flushed = [
            np.asarray(row.vector, dtype="<f4").tobytes() for row in embedded_store.latest_rows("action")
        ]
        assert sorted(flushed) == sorted(vector.tobytes() for vector in staged)


class TestSelectionSafetyNet:
    """Runs read the change log only; the sweeper's pages find what it could not see."""

    def test_a_change_the_log_missed_is_found_by_the_sweeper_page_by_page(
        self, offline: None, embedded_store: EmbeddingStore, settings: Any
    ) -> None:
        from entity_vectors.models import EntityChange

        settings.ENTITY_VECTORS_RECONCILE_PAGE = 2
        team = make_team()
        make_action(team, name="Baseline")
        assert run_workflow("action").inserted == 1
        missed = [make_action(team, name=f"Missed {index}") for index in range(3)]
        EntityChange.objects.filter(domain="action").delete()  # as if no trigger had seen them

        assert run_workflow("action").selected == 0  # a run costs O(changes): it does not scan
        queued = [sweep_runs.apply().result["queued"]["action"] for _ in range(3)]

        assert sum(queued) == 3  # two pages of the host table found all three
        run = run_workflow("action")
        assert run.inserted == 3
        assert {row.id for row in embedded_store.latest_rows("action")} >= {str(a.pk) for a in missed}

    def test_an_entity_a_run_did_not_finish_stays_queued(
        self, llm: OpenAIServer, embedded_store: EmbeddingStore
    ) -> None:
        from entity_vectors.models import EntityChange

        team = make_team()
        action = make_action(team, name="Unlucky first run")
        EntityChange.objects.filter(domain="action").delete()  # selected by the first full selection only
        llm.fail_when("Unlucky first run", status=400)

        first = run_workflow("action")
        llm.reset()
        second = run_workflow("action")

        assert first.summary_failures == 1
        assert second.inserted == 1
        assert str(action.pk) in {row.id for row in embedded_store.latest_rows("action")}
