"""The host app as it really behaves: stale saves, update(), raw SQL, cascades, moves, clocks.

Whatever the host does to its rows, the next run ends with exactly the rows the entity's current
state calls for, in the right team only, paying only for real change (invariant 10).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.db import connection
from django.utils import timezone

from app.models import Action, Cohort, EventDefinition
from entity_vectors import search_entities
from entity_vectors.models import LedgerEntry, SyncRun
from entity_vectors.store import EmbeddingStore
from tests.conftest import run_workflow
from tests.factories import make_action, make_cohort, make_event_definition, make_team
from tests.support.openai_server import OpenAIServer

pytestmark = pytest.mark.django_db


def live(store: EmbeddingStore, domain: str) -> dict[tuple[int, str, int], Any]:
    """Live keys (team, id, version) -> their latest row."""
    return {
        (row.team_id, row.id, row.embedding_version): row
        for row in store.latest_rows(domain)
        if not row.is_deleted
    }


class TestStaleInstances:
    """An instance loaded before a sync and saved after it writes back old mirror columns."""

    def test_a_stale_instance_that_deletes_is_tombstoned_without_provider_requests(
        self, llm: OpenAIServer, embedded_store: EmbeddingStore
    ) -> None:
        team = make_team()
        make_action(team, name="Exported CSV")
        stale = Action.objects.get()  # loaded before the sync: empty mirror columns
        run_workflow("action")
        assert search_entities("action", team.id, "exported csv", mode="vector")
        llm.reset()

        stale.deleted = True
        stale.save()  # writes back summary=None, embedding_last_synced_at=None, ...
        run = run_workflow("action")

        assert run.tombstoned == 1
        assert llm.requests == []
        assert search_entities("action", team.id, "exported csv") == []

    def test_a_stale_instance_saved_with_a_new_name_gets_the_new_name(
        self, llm: OpenAIServer, embedded_store: EmbeddingStore
    ) -> None:
        team = make_team()
        make_action(team, name="Downloaded report")
        stale = Action.objects.get()
        run_workflow("action")
        llm.reset()

        stale.name = "Downloaded invoice"
        stale.save()
        run = run_workflow("action")

        assert run.summarized == 1 and len(llm.chat_requests()) == 1
        ((_, row),) = live(embedded_store, "action").items()
        assert row.properties["name"] == "Downloaded invoice" and "invoice" in row.text

    def test_a_stale_instance_saved_without_change_costs_nothing(
        self, llm: OpenAIServer, embedded_store: EmbeddingStore
    ) -> None:
        team = make_team()
        make_action(team, name="Viewed dashboard")
        stale = Action.objects.get()
        run_workflow("action")
        llm.reset()

        stale.save()  # nothing of the entity changed; the mirror columns go back to empty
        run = run_workflow("action")

        assert llm.requests == [] and run.inserted == 0 and run.skipped == 1
        action = Action.objects.get()
        assert action.summary and action.embedding_last_synced_at is not None  # the mirror is restored


class TestWritesBehindTheOrm:
    """Changes that send no signal: QuerySet.update(), raw SQL, cascades."""

    def test_queryset_update_of_the_deleted_flag(
        self, llm: OpenAIServer, embedded_store: EmbeddingStore
    ) -> None:
        team = make_team()
        gone = make_action(team, name="Old signup flow")
        make_action(team, name="New signup flow")
        run_workflow("action")
        llm.reset()

        Action.objects.filter(pk=gone.pk).update(deleted=True)
        run = run_workflow("action")

        assert run.tombstoned == 1 and llm.requests == []
        assert {key[1] for key in live(embedded_store, "action")} == {
            str(Action.objects.get(deleted=False).pk)
        }

    def test_raw_sql_delete(self, llm: OpenAIServer, embedded_store: EmbeddingStore) -> None:
        team = make_team()
        doomed = make_event_definition(team, name="legacy_event")
        make_event_definition(team, name="current_event")
        run_workflow("event_definition")
        llm.reset()

        with connection.cursor() as cursor:
            cursor.execute(f"DELETE FROM {EventDefinition._meta.db_table} WHERE id = %s", [doomed.pk])
        run = run_workflow("event_definition")

        assert run.tombstoned == 1 and llm.requests == []
        assert str(doomed.pk) not in {key[1] for key in live(embedded_store, "event_definition")}

    def test_a_cascade_from_the_organization_is_one_bulk_step(
        self, llm: OpenAIServer, embedded_store: EmbeddingStore
    ) -> None:
        doomed, kept = make_team(), make_team()
        for index in range(30):
            make_action(doomed, name=f"Doomed {index}")
        make_action(kept, name="Kept")
        run_workflow("action")
        llm.reset()

        doomed.organization.delete()  # cascades to the team and its 30 actions
        run = run_workflow("action")

        assert run.tombstoned == 30 and llm.requests == []
        assert {key[0] for key in live(embedded_store, "action")} == {kept.id}

    def test_a_move_to_another_team_leaves_the_old_team_at_once(
        self, llm: OpenAIServer, embedded_store: EmbeddingStore
    ) -> None:
        old_team, new_team = make_team(), make_team()
        action = make_action(old_team, name="Shared dashboard")
        run_workflow("action")
        assert search_entities("action", old_team.id, "shared dashboard")
        llm.reset()

        Action.objects.filter(pk=action.pk).update(team=new_team)
        run = run_workflow("action")

        assert llm.requests == []  # same text: the vector is copied, nothing is paid again
        assert run.vectors_reused == 1 and run.tombstoned == 1
        assert search_entities("action", old_team.id, "shared dashboard") == []
        assert [hit.id for hit in search_entities("action", new_team.id, "shared dashboard")] == [
            str(action.pk)
        ]

    def test_a_moved_entity_deleted_later_leaves_no_row_in_either_team(
        self, offline: None, embedded_store: EmbeddingStore
    ) -> None:
        old_team, new_team = make_team(), make_team()
        action = make_action(old_team, name="Moved then deleted")
        run_workflow("action")
        Action.objects.filter(pk=action.pk).update(team=new_team)
        run_workflow("action")

        Action.objects.filter(pk=action.pk).delete()
        run_workflow("action")

        assert live(embedded_store, "action") == {}


class TestConsent:
    """Revoked approval tombstones; restored approval brings the rows back without new summaries."""

    def test_revoked_then_restored_costs_no_chat_request(
        self, llm: OpenAIServer, embedded_store: EmbeddingStore
    ) -> None:
        team = make_team()
        for index in range(3):
            make_cohort(team, name=f"Paying customers {index}")
        run_workflow("cohort")
        organization = team.organization

        organization.is_ai_data_processing_approved = False
        organization.save()
        revoked = run_workflow("cohort")
        assert revoked.tombstoned == 3 and live(embedded_store, "cohort") == {}
        llm.reset()

        organization.is_ai_data_processing_approved = True
        organization.save()
        restored = run_workflow("cohort")

        assert llm.chat_requests() == []
        assert restored.inserted == 3 and len(live(embedded_store, "cohort")) == 3


class TestPropertiesOnly:
    """A change that does not touch the summary input rewrites the row without any provider call."""

    def test_a_cohort_recount_rewrites_the_row_with_no_request(
        self, llm: OpenAIServer, embedded_store: EmbeddingStore
    ) -> None:
        team = make_team()
        cohort = make_cohort(team, name="Weekly actives", count=100)
        run_workflow("cohort")
        llm.reset()

        Cohort.objects.filter(pk=cohort.pk).update(count=250)
        run = run_workflow("cohort")

        assert llm.requests == []
        assert run.vectors_reused == 1 and run.inserted == 1
        ((_, row),) = live(embedded_store, "cohort").items()
        assert row.properties["count"] == 250


class TestClocksAndStartDt:
    """Row versions come from the database's counter: no clock and no start_dt can hide a change."""

    def test_a_start_dt_in_the_future_hides_neither_an_edit_nor_a_delete(
        self, llm: OpenAIServer, embedded_store: EmbeddingStore
    ) -> None:
        team = make_team()
        action = make_action(team, name="Opened settings")
        run_workflow("action", start_dt=(timezone.now() + timedelta(minutes=4)).isoformat())
        action.refresh_from_db()
        action.name = "Opened billing settings"
        action.save()

        run_workflow("action")
        assert "billing" in search_entities("action", team.id, "opened settings")[0].properties["name"]

        action.deleted = True
        action.save()
        run_workflow("action")
        assert search_entities("action", team.id, "opened settings") == []


class TestEmbeddingVersions:
    """Every version is tracked on its own: a backfill never marks another version done."""

    def test_an_edit_during_a_backfill_reaches_the_served_version(
        self, llm: OpenAIServer, embedded_store: EmbeddingStore
    ) -> None:
        team = make_team()
        action = make_action(team, name="Sent invite")
        make_action(team, name="Accepted invite")
        run_workflow("action", embedding_version=1)
        run_workflow("action", embedding_version=2)  # the backfill of version 2
        action.refresh_from_db()
        action.name = "Sent team invite by email"
        action.save()

        run_workflow("action", embedding_version=2)  # a run of version 2 sees the edit first

        served = search_entities("action", team.id, "team invite email", embedding_version=1, mode="vector")
        assert served[0].properties["name"] == "Sent team invite by email"
        backfilled = search_entities(
            "action", team.id, "team invite email", embedding_version=2, mode="vector"
        )
        assert backfilled[0].properties["name"] == "Sent team invite by email"
        assert LedgerEntry.objects.filter(entity_id=str(action.pk), is_live=True).count() == 2

    def test_a_version_2_run_does_not_mark_version_1_done(
        self, offline: None, embedded_store: EmbeddingStore
    ) -> None:
        team = make_team()
        make_action(team, name="First")
        run_workflow("action", embedding_version=1)
        newcomer = make_action(team, name="Created during the backfill")

        run_workflow("action", embedding_version=2)

        keys = live(embedded_store, "action")
        assert (team.id, str(newcomer.pk), 1) in keys and (team.id, str(newcomer.pk), 2) in keys


class RecordingStore:
    """The real store; optionally raises right after (or instead of) an insert, as a crash would."""

    def __init__(self, store: EmbeddingStore, crash: str) -> None:
        self._store = store
        self._crash = crash

    def insert(self, rows: Any) -> int:
        if self._crash == "before":
            raise RuntimeError("crashed before the insert")
        self._store.insert(rows)
        raise RuntimeError("crashed after the insert, before the confirm")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


class TestCrashWindows:
    """The ledger records a write as attempted before its insert and confirmed after it."""

    @pytest.mark.parametrize(
        "crash", [pytest.param("after", id="after-insert"), pytest.param("before", id="before-insert")]
    )
    def test_nothing_lost_duplicated_or_paid_twice(
        self, crash: str, llm: OpenAIServer, embedded_store: EmbeddingStore
    ) -> None:
        from entity_vectors import workflow
        from entity_vectors.core.inputs import SyncEntityVectorsInputs
        from entity_vectors.providers.access import LocalAccess

        team = make_team()
        actions = [make_action(team, name=f"Crash case {index}") for index in range(3)]
        started = workflow.start_run(SyncEntityVectorsInputs(domain="action", delay_between_batches=0))
        workflow.process_batch(started.context, 0, LocalAccess(2))
        with pytest.raises(RuntimeError, match="crashed"):
            workflow.flush_staged(started.context, RecordingStore(embedded_store, crash))  # type: ignore[arg-type]
        workflow.close_run(started.run.id, error="the worker died")
        assert LedgerEntry.objects.filter(pending_version__isnull=False).count() == 3
        requests_before = len(llm.requests)

        run = run_workflow("action")

        assert run.status == SyncRun.Status.SUCCEEDED
        keys = live(embedded_store, "action")
        assert sorted(keys) == sorted((team.id, str(action.pk), 1) for action in actions)
        assert embedded_store.count_rows("action") == (3 if crash == "after" else 0) + run.inserted
        assert llm.chat_requests()[requests_before:] == []  # the summaries were kept
        if crash == "after":
            assert run.vectors_reused == 3 and len(llm.requests) == requests_before  # nor the vectors
        assert not LedgerEntry.objects.filter(pending_version__isnull=False).exists()
