"""One way to execute a run, chosen once: inline in this process, or distributed on workers.

A host whose test settings say `task_always_eager` gets inline runs from `.delay()`; an error
anywhere after the run is recorded closes the run with the error and releases its claims."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest
from django.db.models import Q

from app.celery import app as celery_app
from app.entity_configs import ActionEntityConfig
from app.models import Action
from entity_vectors import register_entity_config
from entity_vectors.models import SyncRun, SyncRunBatch
from entity_vectors.store import EmbeddingStore
from entity_vectors.tasks import sync_entities
from tests.conftest import run_workflow
from tests.factories import make_action, make_team

pytestmark = pytest.mark.django_db


@pytest.fixture
def always_eager(settings: Any) -> Iterator[None]:
    """The usual test setting of a Django shop: every `.delay()` runs at once, in this process."""
    saved = celery_app.conf.task_always_eager, celery_app.conf.task_eager_propagates
    celery_app.conf.task_always_eager = True
    celery_app.conf.task_eager_propagates = True
    # As on a host with a ClickHouse server: without eager mode, runs would go to the workers.
    settings.ENTITY_VECTORS_EXECUTION = "distributed"
    try:
        yield
    finally:
        celery_app.conf.task_always_eager, celery_app.conf.task_eager_propagates = saved


class TestAlwaysEager:
    """`task_always_eager=True` + `.delay()`: the run succeeds in-process, no run left running."""

    def test_delay_runs_inline_and_frees_the_lock(
        self, always_eager: None, offline: None, embedded_store: EmbeddingStore
    ) -> None:
        team = make_team()
        for index in range(5):
            make_action(team, name=f"Eager {index}")

        result = sync_entities.delay("action", summarize_batch_size=2, delay_between_batches=0)

        summary = result.get()
        assert summary["mode"] == "inline" and summary["run_status"] == "succeeded"
        assert summary["inserted"] == 5
        assert not SyncRun.objects.filter(status=SyncRun.Status.RUNNING).exists()
        again = sync_entities.delay("action", delay_between_batches=0).get()
        assert again["run_status"] == "succeeded"  # nothing of the failed run stood in the way


class TestInlineRun:
    """A run in this process: the same batch function as a worker's task, in a plain loop."""

    def test_batches_wait_for_their_start_times_and_every_row_is_flushed(
        self, offline: None, embedded_store: EmbeddingStore
    ) -> None:
        team = make_team()
        for index in range(5):
            make_action(team, name=f"Paced {index}")

        run = run_workflow("action", summarize_batch_size=2, delay_between_batches=0.3, insert_batch_size=3)

        assert (run.status, run.inserted, run.batches_total) == (SyncRun.Status.SUCCEEDED, 5, 3)
        for batch in SyncRunBatch.objects.filter(run=run).order_by("index"):
            assert batch.not_before == run.started_at + timedelta(seconds=0.3 * batch.index)
            assert batch.started_at is not None and batch.started_at >= batch.not_before
            assert batch.status == SyncRunBatch.Status.FLUSHED
        assert {row.id for row in embedded_store.latest_rows("action") if not row.is_deleted} == {
            str(pk) for pk in Action.objects.values_list("pk", flat=True)
        }


class BrokenSelection(ActionEntityConfig):
    """A host config with a bug in its filter: it raises once the run is recorded."""

    @property
    def domain_name(self) -> str:
        return "broken"

    def get_queryset_filter(self, start_dt: datetime) -> Q:
        raise RuntimeError("the host's filter is broken")


class TestErrorsAfterTheLock:
    """Any exception after the lock is taken closes the run with the error."""

    def test_a_crash_while_selecting_closes_the_run(
        self, restore_registry: None, always_eager: None, offline: None, embedded_store: EmbeddingStore
    ) -> None:
        register_entity_config(BrokenSelection())

        with pytest.raises(RuntimeError, match="broken"):
            sync_entities.delay("broken", delay_between_batches=0).get()

        run = SyncRun.objects.get(domain="broken")
        assert run.status == SyncRun.Status.FAILED
        assert "the host's filter is broken" in run.error
        assert run.lease_expires_at is None and run.finished_at is not None

    def test_a_crash_while_flushing_closes_the_run(
        self, always_eager: None, offline: None, embedded_store: EmbeddingStore, settings: Any
    ) -> None:
        make_action(make_team(), name="Never flushed")
        settings.CLICKHOUSE_URL = "http://default:@127.0.0.1:9/default"  # nothing listens there

        with pytest.raises(Exception, match="ClickHouse"):
            sync_entities.delay("action", delay_between_batches=0).get()

        run = SyncRun.objects.get(domain="action")
        assert run.status == SyncRun.Status.FAILED and "run failed: StoreUnavailable" in run.error
        assert not SyncRun.objects.filter(status=SyncRun.Status.RUNNING).exists()
