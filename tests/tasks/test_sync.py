"""The Celery adapters run eagerly with `.apply()`: same chord, same policy, in this process."""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from app.celery import app as celery_app
from entity_vectors.core.inputs import SyncEntityVectorsInputs
from entity_vectors.models import SyncRun, SyncRunBatch
from entity_vectors.store import EmbeddingStore
from entity_vectors.tasks import sync_entities
from tests.factories import make_action, make_cohort, make_team
from tests.support.openai_server import OpenAIServer
from tests.support.ports import DEAD_HOST_REQUESTS, closed_port
from tests.support.processes import embedded_store_url

pytestmark = pytest.mark.django_db


class TestTaskNames:
    """The contract's names are registered, on the configured queue."""

    def test_names_and_queue(self) -> None:
        for name in (
            "ai-sync-entity-vectors",
            "ai-sync-vectors",
            "ai-sync-cohort-vectors",
            "ai-sync-entity-vectors-batch",
            "ai-sync-entity-vectors-finish",
            "ai-sync-entity-vectors-sweep",
            "ai-sync-entity-vectors-batch-api",
        ):
            assert name in celery_app.tasks
            assert celery_app.amqp.router.route({}, name)["queue"].name == "max-ai-task-queue"
        for name in ("ai-sync-entity-vectors-fast-lane", "ai-sync-entity-vectors-fast-lane-poll"):
            assert name in celery_app.tasks  # the interactive lane: a queue of its own
            assert celery_app.amqp.router.route({}, name)["queue"].name == "max-ai-task-queue-fast"
        assert sync_entities.name == "ai-sync-entity-vectors"
        task = celery_app.tasks["ai-sync-entity-vectors-batch"]
        assert task.acks_late and task.reject_on_worker_lost
        assert task.soft_time_limit < task.time_limit


class TestEagerCalls:
    """`sync_entities.apply` (and any eager call) runs the whole run inline, in this process."""

    def test_delay_style_call_runs_the_domain(
        self, llm: OpenAIServer, embedded_store: EmbeddingStore
    ) -> None:
        team = make_team()
        for _ in range(3):
            make_cohort(team)

        result = sync_entities.apply(
            args=("cohort",), kwargs={"summarize_batch_size": 2, "delay_between_batches": 0}
        )

        assert result.successful(), result.traceback
        assert result.result["run_status"] == "succeeded"
        assert result.result["inserted"] == 3 and result.result["mode"] == "inline"
        run = SyncRun.objects.get(pk=result.result["run_id"])
        assert run.batches_total == 2 and run.batches_done == 2 and run.finished_at is not None
        assert (
            run.provider_requests == len(llm.requests) == 3 + 2
        )  # a chat per cohort, an embedding per batch
        assert embedded_store.count_rows("cohort") == 3

    def test_legacy_names_are_aliases(self, offline: None, embedded_store: EmbeddingStore) -> None:
        team = make_team()
        make_action(team)
        make_cohort(team)

        actions = celery_app.tasks["ai-sync-vectors"].apply(
            kwargs={"batch_size": 10, "delay_between_batches": 0}
        )
        cohorts = celery_app.tasks["ai-sync-cohort-vectors"].apply(kwargs={"embedding_version": 1})

        assert actions.result["domain"] == "action" and actions.result["inserted"] == 1
        assert SyncRun.objects.get(domain="action").inputs["summarize_batch_size"] == 10
        assert cohorts.result["domain"] == "cohort" and cohorts.result["inserted"] == 1

    def test_batches_start_delay_between_batches_apart(
        self, offline: None, embedded_store: EmbeddingStore
    ) -> None:
        team = make_team()
        for _ in range(3):
            make_action(team)

        started = time.monotonic()
        sync_entities.apply(
            kwargs={"domain": "action", "summarize_batch_size": 1, "delay_between_batches": 0.3}
        )

        assert time.monotonic() - started >= 0.6
        batches = SyncRunBatch.objects.order_by("index")
        assert [batch.status for batch in batches] == ["flushed"] * 3
        run = SyncRun.objects.get()
        assert [
            (batch.started_at - run.started_at) >= timedelta(seconds=0.3 * batch.index) for batch in batches
        ] == [True] * 3

    def test_a_transient_failure_is_retried_by_the_task(
        self, llm: OpenAIServer, embedded_store: EmbeddingStore, settings: Any
    ) -> None:
        settings.ENTITY_VECTORS_TASK_RETRY_BACKOFF = 0.01
        settings.ENTITY_VECTORS_PROVIDER_MAX_RETRIES = 0
        make_action(make_team())
        llm.fail_next(2, status=503, path="/embeddings")

        result = sync_entities.apply(kwargs={"domain": "action", "delay_between_batches": 0})

        assert result.result["run_status"] == "succeeded"
        assert [request.status for request in llm.embedding_requests()] == [503, 503, 200]
        assert len(llm.chat_requests()) == 1  # the retried batch reused its saved summary
        assert SyncRunBatch.objects.get().attempts == 3
        run = SyncRun.objects.get(pk=result.result["run_id"])
        assert run.provider_requests == 4  # the failed attempts' requests are counted too

    def test_a_batch_that_keeps_failing_fails_alone(
        self, llm: OpenAIServer, embedded_store: EmbeddingStore, settings: Any
    ) -> None:
        settings.ENTITY_VECTORS_TASK_RETRY_BACKOFF = 0.01
        settings.ENTITY_VECTORS_TASK_MAX_RETRIES = 1
        settings.ENTITY_VECTORS_PROVIDER_MAX_RETRIES = 0
        team = make_team()
        good = [make_action(team, name=f"Good {index}") for index in range(2)]
        make_action(team, name="Bad", description="EMBED-POISON")
        llm.fail_when("EMBED-POISON", status=500, path="/embeddings")

        result = sync_entities.apply(
            kwargs={"domain": "action", "summarize_batch_size": 1, "delay_between_batches": 0}
        )

        run = SyncRun.objects.get(pk=result.result["run_id"])
        assert run.status == SyncRun.Status.PARTIAL
        assert run.batches_done == 2 and run.batches_failed == 1
        assert "batch 2 failed: ProviderUnavailable" in run.error
        assert SyncRunBatch.objects.get(run=run, index=2).attempts == 2
        assert {row.id for row in embedded_store.latest_rows("action")} == {str(action.pk) for action in good}


class TestUnreachableProvider:
    """A provider nothing can connect to stops the run, inline or on the workers: not retried in place."""

    def test_an_eager_run_is_closed_and_not_retried(
        self, llm: OpenAIServer, embedded_store: EmbeddingStore, settings: Any
    ) -> None:
        settings.OPENAI_BASE_URL = f"http://127.0.0.1:{closed_port()}/v1"
        for _ in range(3):
            make_action(make_team())

        result = sync_entities.apply(kwargs={"domain": "action", "delay_between_batches": 0})

        assert result.successful()  # the run is recorded failed; the next beat tick tries again
        assert result.result["run_status"] == "failed"
        run = SyncRun.objects.get()  # one run: the task was not retried into more
        assert "unreachable (connection refused)" in run.error
        assert run.provider_requests <= DEAD_HOST_REQUESTS

    def test_a_batch_on_the_workers_closes_the_run_and_the_others_do_nothing(
        self, llm: OpenAIServer, embedded_store: EmbeddingStore, settings: Any
    ) -> None:
        from entity_vectors.models import EntityFailure
        from entity_vectors.tasks.sync import sync_batch
        from entity_vectors.workflow import start_run

        port = closed_port()
        settings.OPENAI_BASE_URL = f"http://127.0.0.1:{port}/v1"
        team = make_team()
        for _ in range(3):
            make_action(team)
        started = start_run(
            SyncEntityVectorsInputs(domain="action", summarize_batch_size=1, delay_between_batches=0),
            mode=SyncRun.Mode.DISTRIBUTED,
        )
        run_id = str(started.run.id)

        first = sync_batch.apply(kwargs={"run_id": run_id, "batch_index": 0, "domain": "action"})
        second = sync_batch.apply(kwargs={"run_id": run_id, "batch_index": 1, "domain": "action"})

        assert first.result["status"] == "provider_unreachable"
        assert second.result["status"] == "done"  # its run is closed: nothing sent
        run = SyncRun.objects.get(pk=run_id)
        assert run.status == SyncRun.Status.FAILED
        assert run.error.startswith(f"the provider at 127.0.0.1:{port} is unreachable (connection refused)")
        assert run.provider_requests == 3  # one entity's three attempts (PROVIDER_MAX_RETRIES=2)
        assert set(SyncRunBatch.objects.filter(run_id=run_id).values_list("status", flat=True)) == {"pending"}
        assert not EntityFailure.objects.exists()


class TestRunsSideBySide:
    """Runs of a domain go side by side; only an identical run that covers everything skips one."""

    @staticmethod
    def running(inputs: dict[str, Any], snapshot_seq: int | None) -> SyncRun:
        return SyncRun.objects.create(
            domain="action",
            start_dt=timezone.now(),
            lease_expires_at=timezone.now() + timedelta(hours=1),
            inputs=inputs,
            versions={"write": [], "backfilling": []},
            snapshot_seq=snapshot_seq,
            dispatched_at=timezone.now(),
        )

    def test_a_run_beside_a_running_one_is_not_skipped(
        self, offline: None, embedded_store: EmbeddingStore
    ) -> None:
        team = make_team()
        make_action(team)
        self.running(SyncEntityVectorsInputs(domain="action", summarize_batch_size=7).as_dict(), 10**9)

        result = sync_entities.apply(args=("action",), kwargs={"delay_between_batches": 0})

        assert result.result["run_status"] == "succeeded" and result.result["inserted"] == 1
        assert embedded_store.count_rows("action") == 1

    def test_an_identical_run_that_covers_every_change_skips_it(
        self, offline: None, embedded_store: EmbeddingStore
    ) -> None:
        from entity_vectors.capture.changelog import newest_change
        from entity_vectors.core.embedding_versions import served_version

        make_action(make_team())
        same = SyncEntityVectorsInputs(domain="action", embedding_version=served_version("action"))
        holder = self.running(same.as_dict(), newest_change("action"))

        skipped = sync_entities.apply(args=("action",))

        assert skipped.result["status"] == "skipped"
        assert f"run {holder.id} of action" in skipped.result["reason"]
        assert "has the same inputs and covers every change there is" in skipped.result["reason"]
        assert SyncRun.objects.get(pk=skipped.result["run_id"]).status == SyncRun.Status.SKIPPED
        assert embedded_store.count_rows("action") == 0

    def test_a_change_after_the_identical_runs_snapshot_starts_a_run(
        self, offline: None, embedded_store: EmbeddingStore
    ) -> None:
        from entity_vectors.capture.changelog import newest_change
        from entity_vectors.core.embedding_versions import served_version

        team = make_team()
        make_action(team)
        same = SyncEntityVectorsInputs(domain="action", embedding_version=served_version("action"))
        self.running(same.as_dict(), newest_change("action"))
        make_action(team, name="Changed after the running run's snapshot")

        result = sync_entities.apply(args=("action",))

        assert result.result["run_status"] == "succeeded" and result.result["inserted"] == 2

    def test_a_redelivered_entry_task_takes_over_from_its_own_earlier_delivery(
        self, offline: None, embedded_store: EmbeddingStore
    ) -> None:
        make_action(make_team())
        earlier = SyncRun.objects.create(
            domain="action",
            start_dt=timezone.now(),
            task_id="entry-task-1",
            lease_expires_at=timezone.now() + timedelta(hours=1),
            inputs=SyncEntityVectorsInputs(domain="action").as_dict(),
            versions={"write": [], "backfilling": []},
        )

        result = sync_entities.apply(
            args=("action",), kwargs={"delay_between_batches": 0}, task_id="entry-task-1"
        )

        assert result.result["run_status"] == "succeeded" and result.result["inserted"] == 1
        earlier.refresh_from_db()
        assert earlier.status != SyncRun.Status.RUNNING
        assert "superseded" in earlier.error

    def test_a_redelivered_entry_task_whose_chord_went_out_does_not_start_again(
        self, offline: None, embedded_store: EmbeddingStore
    ) -> None:
        make_action(make_team())
        launched = SyncRun.objects.create(
            domain="action",
            start_dt=timezone.now(),
            task_id="entry-task-2",
            dispatched_at=timezone.now(),
            lease_expires_at=timezone.now() + timedelta(hours=1),
        )

        result = sync_entities.apply(args=("action",), task_id="entry-task-2")

        assert result.result["status"] == "started" and result.result["run_id"] == str(launched.id)
        assert SyncRun.objects.count() == 1
        launched.refresh_from_db()
        assert launched.status == SyncRun.Status.RUNNING

    def test_the_lease_covers_the_planned_delays(self, offline: None, embedded_store: EmbeddingStore) -> None:
        from entity_vectors.core.inputs import SyncEntityVectorsInputs
        from entity_vectors.workflow import start_run

        for _ in range(3):
            make_action(make_team())

        started = start_run(
            SyncEntityVectorsInputs(domain="action", summarize_batch_size=1, delay_between_batches=7200)
        )

        run = started.run
        assert run.lease_expires_at is not None
        assert run.lease_expires_at >= run.started_at + timedelta(hours=4, minutes=59)

    def test_an_abandoned_run_is_closed(
        self, offline: None, embedded_store: EmbeddingStore
    ) -> None:
        make_action(make_team())
        dead = SyncRun.objects.create(
            domain="action",
            start_dt=timezone.now() - timedelta(hours=3),
            lease_expires_at=timezone.now() - timedelta(minutes=1),
            inputs=SyncEntityVectorsInputs(domain="action").as_dict(),
            versions={"write": [], "backfilling": []},
        )

        result = sync_entities.apply(args=("action",), kwargs={"delay_between_batches": 0})

        assert result.result["run_status"] == "succeeded"
        dead.refresh_from_db()
        assert dead.status == SyncRun.Status.FAILED
        assert dead.error.startswith("abandoned")

    def test_the_sweeper_flushes_what_an_abandoned_run_staged(
        self, offline: None, embedded_store: EmbeddingStore
    ) -> None:
        from entity_vectors.core.inputs import SyncEntityVectorsInputs
        from entity_vectors.providers.access import LocalAccess
        from entity_vectors.tasks import sweep_runs
        from entity_vectors.workflow import process_batch, start_run

        team = make_team()
        actions = [make_action(team) for _ in range(2)]
        started = start_run(SyncEntityVectorsInputs(domain="action", delay_between_batches=0))
        run_id = str(started.run.id)
        process_batch(started.context, 0, LocalAccess(1))
        SyncRun.objects.filter(pk=run_id).update(lease_expires_at=timezone.now() - timedelta(seconds=1))

        assert sweep_runs.apply().result["closed"] == [run_id]

        run = SyncRun.objects.get(pk=run_id)
        assert run.status == SyncRun.Status.PARTIAL and run.error.startswith("abandoned")
        assert run.inserted == 2  # staged rows were not lost
        assert {row.id for row in embedded_store.latest_rows("action")} == {
            str(action.pk) for action in actions
        }


class TestFlushFailures:
    """A ClickHouse outage during the flush is retried; giving up loses nothing either."""

    def test_a_failed_flush_keeps_the_run_open_for_a_retry(
        self, offline: None, embedded_store: EmbeddingStore, settings: Any
    ) -> None:
        from entity_vectors.core.inputs import SyncEntityVectorsInputs
        from entity_vectors.exceptions import StoreUnavailable
        from entity_vectors.providers.access import LocalAccess
        from entity_vectors.workflow import finish_run, process_batch, start_run

        action = make_action(make_team())
        started = start_run(SyncEntityVectorsInputs(domain="action", delay_between_batches=0))
        run_id = str(started.run.id)
        process_batch(started.context, 0, LocalAccess(1))
        settings.CLICKHOUSE_URL = "http://default:@127.0.0.1:9/default"  # nothing listens there

        with pytest.raises(StoreUnavailable):
            finish_run(run_id)

        assert SyncRun.objects.get(pk=run_id).status == SyncRun.Status.RUNNING
        assert SyncRunBatch.objects.get(run_id=run_id).status == SyncRunBatch.Status.STAGED
        action.refresh_from_db()
        assert action.embedding_last_synced_at is None
        settings.CLICKHOUSE_URL = embedded_store_url()
        run = finish_run(run_id)
        assert run is not None and run.status == SyncRun.Status.SUCCEEDED and run.inserted == 1

    def test_giving_up_closes_the_run_and_leaves_the_entities_for_the_next(
        self, offline: None, embedded_store: EmbeddingStore, settings: Any
    ) -> None:
        from entity_vectors.core.inputs import SyncEntityVectorsInputs
        from entity_vectors.providers.access import LocalAccess
        from entity_vectors.tasks import finish_sync
        from entity_vectors.workflow import process_batch, start_run

        make_action(make_team())
        started = start_run(SyncEntityVectorsInputs(domain="action", delay_between_batches=0))
        run_id = str(started.run.id)
        process_batch(started.context, 0, LocalAccess(1))
        settings.CLICKHOUSE_URL = "http://default:@127.0.0.1:9/default"
        settings.ENTITY_VECTORS_TASK_MAX_RETRIES = 1
        settings.ENTITY_VECTORS_TASK_RETRY_BACKOFF = 0.01

        result = finish_sync.apply(kwargs={"run_id": run_id, "domain": "action"})

        assert result.failed()
        run = SyncRun.objects.get(pk=run_id)
        assert run.status == SyncRun.Status.FAILED and "flush failed: StoreUnavailable" in run.error
        batch = SyncRunBatch.objects.get(run_id=run_id)
        assert batch.status == SyncRunBatch.Status.DROPPED and bytes(batch.vectors) == b""
        settings.CLICKHOUSE_URL = embedded_store_url()
        assert (
            sync_entities.apply(args=("action",), kwargs={"delay_between_batches": 0}).result["inserted"] == 1
        )


class TestDatabaseConnectionsAroundTasks:
    """Around a task in a worker, connections are closed the way Django closes them around a request."""

    @staticmethod
    def _signal(eager: bool) -> None:
        from celery.signals import task_postrun

        class Request:
            is_eager = eager

        class Task:
            request = Request()

        task_postrun.send(
            sender=Task(), task_id="t", task=Task(), args=(), kwargs={}, retval=None, state="SUCCESS"
        )

    @pytest.mark.django_db(transaction=True)
    def test_a_fresh_connection_is_kept_and_an_obsolete_one_closed(self) -> None:
        from django.db import connection

        connection.ensure_connection()
        connection.close_at = time.monotonic() + 60  # as with CONN_MAX_AGE = 60
        kept = connection.connection
        self._signal(eager=False)
        assert connection.connection is kept

        connection.close_at = time.monotonic() - 1  # older than CONN_MAX_AGE
        self._signal(eager=False)
        assert connection.connection is None

    @pytest.mark.django_db(transaction=True)
    def test_an_eager_task_leaves_its_callers_connection_alone(self) -> None:
        from django.db import connection

        connection.ensure_connection()
        connection.close_at = time.monotonic() - 1
        kept = connection.connection
        self._signal(eager=True)
        assert connection.connection is kept
