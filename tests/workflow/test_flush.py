"""The flush: inserts of insert_batch_size rows, confirmed in the ledger, counted in the run."""

from __future__ import annotations

from typing import Any

import pytest
from django.db import connection

from app.models import Action
from entity_vectors.models import SyncRun
from entity_vectors.store import EmbeddingStore
from tests.factories import make_action, make_team
from tests.support.observe import live_rows

pytestmark = pytest.mark.django_db


class RecordingStore:
    """The real store, with the size of every insert noted."""

    def __init__(self, store: EmbeddingStore) -> None:
        self._store = store
        self.inserts: list[int] = []

    def insert(self, rows: Any) -> int:
        self.inserts.append(len(rows))
        return self._store.insert(rows)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


class TestFlush:
    """The flush writes in insert_batch_size chunks and marks entities only after their chunk."""

    def test_inserts_are_chunked_by_insert_batch_size(
        self, offline: None, embedded_store: EmbeddingStore
    ) -> None:
        from entity_vectors import workflow
        from entity_vectors.core.inputs import SyncEntityVectorsInputs
        from entity_vectors.providers.access import LocalAccess

        team = make_team()
        for _ in range(5):
            make_action(team)
        started = workflow.start_run(
            SyncEntityVectorsInputs(
                domain="action", insert_batch_size=2, summarize_batch_size=3, delay_between_batches=0
            )
        )
        for index in started.batch_indexes:
            workflow.process_batch(started.context, index, LocalAccess(2))
        assert not Action.objects.filter(
            embedding_last_synced_at__isnull=False
        ).exists()  # staged, not yet synced
        recording = RecordingStore(embedded_store)

        run = workflow.finish_run(started.run.id, store=recording)  # type: ignore[arg-type]

        assert run is not None and run.inserted == 5
        assert recording.inserts == [2, 2, 1]
        assert Action.objects.filter(embedding_last_synced_at__isnull=False, embedding_version=1).count() == 5

    @pytest.mark.django_db(transaction=True)
    def test_a_run_the_sweeper_closes_during_its_flush_counts_what_landed(
        self, offline: None, embedded_store: EmbeddingStore
    ) -> None:
        import threading

        from entity_vectors import workflow
        from entity_vectors.core.inputs import SyncEntityVectorsInputs
        from entity_vectors.models import LedgerEntry, SyncRunBatch
        from entity_vectors.providers.access import LocalAccess

        team = make_team()
        actions = [make_action(team, name=f"Landed {index}") for index in range(3)]
        started = workflow.start_run(SyncEntityVectorsInputs(domain="action", delay_between_batches=0))
        workflow.process_batch(started.context, 0, LocalAccess(2))

        class SweptWhileInserting(RecordingStore):
            """The insert takes long enough for the sweeper to close the run (in another process)."""

            def insert(self, rows: Any) -> int:
                def sweep() -> None:
                    workflow.close_run(started.run.id, error="abandoned")
                    connection.close()  # this thread's own connection

                sweeper = threading.Thread(target=sweep)
                sweeper.start()
                sweeper.join()
                return super().insert(rows)

        workflow.flush_staged(started.context, store=SweptWhileInserting(embedded_store))  # type: ignore[arg-type]

        run = SyncRun.objects.get(pk=started.run.id)
        assert len(live_rows(embedded_store, "action")) == 3  # the rows landed...
        assert (
            LedgerEntry.objects.filter(is_live=True, pending_version__isnull=True).count() == 3
        )  # ...confirmed
        assert (run.status, run.inserted, run.batches_done) == (SyncRun.Status.PARTIAL, 3, 1)
        assert SyncRunBatch.objects.get(run=run).status == SyncRunBatch.Status.FLUSHED
        assert run.error.startswith("abandoned")
        assert {str(action.pk) for action in actions} == set(live_rows(embedded_store, "action"))

    def test_rows_that_waited_the_flush_interval_are_searchable_before_the_run_ends(
        self, offline: None, embedded_store: EmbeddingStore, settings: Any
    ) -> None:
        from entity_vectors.core.inputs import SyncEntityVectorsInputs
        from entity_vectors.workflow import run_inline

        settings.ENTITY_VECTORS_FLUSH_INTERVAL = 0  # every batch's rows have waited long enough
        team = make_team()
        for index in range(6):
            make_action(team, name=f"Opened page {index}")
        seen: list[tuple[str, int, int]] = []

        def observe(run: SyncRun) -> None:
            seen.append((run.status, run.batches_done, len(live_rows(embedded_store, "action"))))

        run = run_inline(
            SyncEntityVectorsInputs(
                domain="action", insert_batch_size=1000, summarize_batch_size=2, delay_between_batches=0
            ),
            on_batch=observe,
        )

        assert run.status == SyncRun.Status.SUCCEEDED and run.inserted == 6
        # An insert of 1,000 rows is never filled: each batch's rows went in at the interval.
        assert [rows for status, _, rows in seen if status == SyncRun.Status.RUNNING] == [0, 2, 4]

    def test_a_flush_interval_below_zero_is_refused_by_name(self, settings: Any) -> None:
        from entity_vectors import conf
        from entity_vectors.exceptions import ConfigurationError

        settings.ENTITY_VECTORS_FLUSH_INTERVAL = -1

        with pytest.raises(
            ConfigurationError, match=r"ENTITY_VECTORS_FLUSH_INTERVAL=-1\.0 must be at least 0"
        ):
            conf.flush_interval()
