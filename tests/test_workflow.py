"""The workflow's plain functions, end to end in one process: PostgreSQL, chdb, the OpenAI SDK."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection
from django.utils import timezone

from app.models import Action, Cohort, EventDefinition
from entity_vectors import search_entities
from entity_vectors.exceptions import SearchError
from entity_vectors.models import SyncRun
from entity_vectors.store import EmbeddingStore
from tests.conftest import run_workflow
from tests.factories import make_action, make_cohort, make_event_definition, make_team
from tests.support.openai_server import OpenAIServer

pytestmark = pytest.mark.django_db


def chat_inputs(server: OpenAIServer) -> list[str]:
    """The user messages the chat model was asked to summarize."""
    return [request.body["messages"][-1]["content"] for request in server.chat_requests()]


def live_rows(store: EmbeddingStore, domain: str) -> dict[str, Any]:
    """Latest live rows by entity id."""
    return {row.id: row for row in store.latest_rows(domain) if not row.is_deleted}


class TestSelection:
    """Which entities a run touches, and which never reach a provider."""

    def test_unapproved_organization_never_reaches_the_provider(
        self, llm: OpenAIServer, embedded_store: EmbeddingStore
    ) -> None:
        approved = make_team(approved=True)
        unapproved = make_team(approved=False)
        make_action(approved, name="Approved signup", description="signup flow")
        make_action(unapproved, name="Secret unapproved action", description="PRIVATE-DATA")

        run = run_workflow("action")

        assert run.status == SyncRun.Status.SUCCEEDED
        assert run.inserted == 1 and run.summarized == 1
        bodies = [json.dumps(request.body) for request in llm.requests]
        assert bodies and not any("PRIVATE-DATA" in body or "Secret unapproved" in body for body in bodies)
        assert {row.team_id for row in embedded_store.latest_rows("action")} == {approved.id}

    def test_entity_updated_after_start_dt_waits_for_the_next_run(
        self, llm: OpenAIServer, embedded_store: EmbeddingStore
    ) -> None:
        team = make_team()
        early = make_action(team, name="Early")
        late = make_action(team, name="Late")
        start_dt = timezone.now() - timedelta(hours=1)
        Action.objects.filter(pk=early.pk).update(updated_at=start_dt - timedelta(hours=1))
        Action.objects.filter(pk=late.pk).update(updated_at=start_dt + timedelta(minutes=30))

        first = run_workflow("action", start_dt=start_dt.isoformat())

        assert first.selected == 1
        assert set(live_rows(embedded_store, "action")) == {str(early.pk)}
        late.refresh_from_db()
        assert late.summary is None
        second = run_workflow("action")
        assert second.selected == 1
        assert set(live_rows(embedded_store, "action")) == {str(early.pk), str(late.pk)}

    def test_deleted_entity_never_summarized_costs_nothing(
        self, llm: OpenAIServer, embedded_store: EmbeddingStore
    ) -> None:
        team = make_team()
        make_action(team, name="Gone before its first run", deleted=True)

        run = run_workflow("action")

        assert run.inserted == 0 and run.tombstoned == 0 and run.summarized == 0
        assert llm.requests == []
        assert embedded_store.latest_rows("action") == []

    def test_changed_entity_is_summarized_again(
        self, llm: OpenAIServer, embedded_store: EmbeddingStore
    ) -> None:
        team = make_team()
        action = make_action(team, name="Checkout", description="Started checkout")
        run_workflow("action")
        llm.reset()

        action.refresh_from_db()
        action.description = "Completed checkout with a coupon"
        action.save()
        run = run_workflow("action")

        assert run.summarized == 1
        assert len(llm.chat_requests()) == 1
        assert "coupon" in chat_inputs(llm)[0]
        action.refresh_from_db()
        assert "coupon" in (action.summary or "")
        assert "coupon" in live_rows(embedded_store, "action")[str(action.pk)].text

    def test_unchanged_summary_input_is_not_summarized_again(
        self, llm: OpenAIServer, embedded_store: EmbeddingStore
    ) -> None:
        team = make_team()
        action = make_action(team, name="Pageview", description="Any pageview")
        run_workflow("action")
        llm.reset()

        action.refresh_from_db()
        action.save()  # bumps updated_at, changes nothing the summary depends on
        run = run_workflow("action")

        assert run.selected == 1
        assert run.summaries_reused == 1
        assert run.summarized == 0
        assert llm.requests == []

    def test_second_run_with_nothing_changed_makes_no_requests(
        self, llm: OpenAIServer, embedded_store: EmbeddingStore
    ) -> None:
        team = make_team()
        for _ in range(5):
            make_action(team)
            make_cohort(team)
            make_event_definition(team)
        for domain in ("action", "cohort", "event_definition"):
            assert run_workflow(domain).inserted == 5
        llm.reset()

        runs = [run_workflow(domain) for domain in ("action", "cohort", "event_definition")]

        assert [run.selected for run in runs] == [0, 0, 0]
        assert llm.requests == []


class TestAlignment:
    """Summary i belongs to entity i, even when some fail."""

    def test_one_failed_summary_in_ten_leaves_the_others_aligned(
        self, llm: OpenAIServer, embedded_store: EmbeddingStore
    ) -> None:
        team = make_team()
        actions = [
            make_action(
                team,
                name=f"Step {index}",
                description=f"unique-marker-{index} " + ("POISON" if index == 4 else ""),
            )
            for index in range(10)
        ]
        llm.fail_when("POISON", status=500, path="/chat/completions")

        run = run_workflow("action", summarize_batch_size=10)

        assert run.status == SyncRun.Status.PARTIAL
        assert run.summarized == 9
        assert run.summary_failures == 1
        assert str(actions[4].pk) in run.error
        rows = live_rows(embedded_store, "action")
        for index, action in enumerate(actions):
            action.refresh_from_db()
            if index == 4:
                assert action.summary is None and action.embedding_last_synced_at is None
                assert str(action.pk) not in rows
                continue
            assert f"unique-marker-{index}" in (action.summary or "")
            assert f"Step {index}" in (action.summary or "")
            assert rows[str(action.pk)].text == action.summary
            assert rows[str(action.pk)].properties["name"] == f"Step {index}"

        llm.reset()
        retry = run_workflow("action")
        assert retry.selected == 1 and retry.summarized == 1
        actions[4].refresh_from_db()
        assert "unique-marker-4" in (actions[4].summary or "")
        assert str(actions[4].pk) in live_rows(embedded_store, "action")


class TestCohortSize:
    """A cohort's size is a property, not summary input: a recount costs nothing."""

    def test_a_recount_changes_no_summary(self, llm: OpenAIServer, embedded_store: EmbeddingStore) -> None:
        team = make_team()
        cohort = make_cohort(team, name="Weekly actives", count=100)
        run_workflow("cohort")
        llm.reset()

        cohort.refresh_from_db()
        cohort.count = 250
        cohort.save()
        run = run_workflow("cohort")

        assert run.summaries_reused == 1 and llm.chat_requests() == []


class TestEmbeddingVersion:
    """A new embedding version re-embeds stored summaries without new LLM calls."""

    def test_version_bump_reembeds_every_live_entity_without_chat_requests(
        self, llm: OpenAIServer, embedded_store: EmbeddingStore
    ) -> None:
        team = make_team()
        actions = [make_action(team, name=f"Invite teammate {index}") for index in range(4)]
        make_action(team, name="Deleted one", deleted=True)
        assert run_workflow("action", embedding_version=1).inserted == 4
        llm.reset()

        run = run_workflow("action", embedding_version=2, embed_batch_size=3)

        assert run.inserted == 4
        assert llm.chat_requests() == []
        assert len(llm.embedding_requests()) == 2  # 4 texts, 3 per request
        hits = search_entities("action", team.id, "invite teammate", limit=10, embedding_version=2)
        assert {hit.id for hit in hits} == {str(action.pk) for action in actions}
        assert len(search_entities("action", team.id, "invite teammate", limit=10, embedding_version=1)) == 4
        for action in actions:
            action.refresh_from_db()
            assert action.embedding_version == 1  # the host's mirror follows the served version


class TestTombstones:
    """Deletes and revoked consent reach ClickHouse without any provider request."""

    def test_soft_delete_writes_a_tombstone_without_requests(
        self, llm: OpenAIServer, embedded_store: EmbeddingStore
    ) -> None:
        team = make_team()
        keep = make_cohort(team, name="Paying customers in Germany")
        drop = make_cohort(team, name="Paying customers in France")
        run_workflow("cohort")
        assert {hit.id for hit in search_entities("cohort", team.id, "paying customers")} == {
            str(keep.pk),
            str(drop.pk),
        }
        llm.reset()

        drop.refresh_from_db()
        drop.deleted = True
        drop.save()
        run = run_workflow("cohort")

        assert run.tombstoned == 1
        assert llm.requests == []
        assert [hit.id for hit in search_entities("cohort", team.id, "paying customers")] == [str(keep.pk)]
        latest = {row.id: row for row in embedded_store.latest_rows("cohort")}
        assert latest[str(drop.pk)].is_deleted
        drop.refresh_from_db()
        assert drop.embedding_last_synced_at is None
        assert run_workflow("cohort").selected == 0  # tombstoned once, not again

    def test_revoked_approval_tombstones_every_entity_of_the_organization(
        self, llm: OpenAIServer, embedded_store: EmbeddingStore
    ) -> None:
        team = make_team()
        definitions = [make_event_definition(team, name=f"checkout_step_{index}") for index in range(3)]
        run_workflow("event_definition")
        assert len(search_entities("event_definition", team.id, "checkout step")) == 3
        llm.reset()

        team.organization.is_ai_data_processing_approved = False
        team.organization.save()
        definitions[0].refresh_from_db()
        definitions[0].description = "changed after the revocation"
        definitions[0].save()
        run = run_workflow("event_definition")

        assert run.tombstoned == 3
        assert llm.requests == []
        assert all(row.is_deleted for row in embedded_store.latest_rows("event_definition"))

    @pytest.mark.django_db(transaction=True)
    def test_a_revocation_committed_after_the_batch_loaded_stops_its_requests(
        self, llm: OpenAIServer, embedded_store: EmbeddingStore, restore_registry: None
    ) -> None:
        import threading

        from app.entity_configs import ActionEntityConfig
        from app.models import Organization
        from entity_vectors.registry import default_registry, register_entity_config

        team = make_team()
        actions = [make_action(team, name=f"Checkout step {index}") for index in range(2)]

        class RevokedWhileLoading(ActionEntityConfig):
            """Another process revokes the organization's approval while the batch loads its entities."""

            revoked = False

            def describe(self, entity: Action) -> str:
                if not RevokedWhileLoading.revoked:
                    RevokedWhileLoading.revoked = True

                    def revocation() -> None:
                        Organization.objects.filter(pk=team.organization_id).update(
                            is_ai_data_processing_approved=False
                        )
                        connection.close()  # this thread's own connection

                    revoke = threading.Thread(target=revocation)
                    revoke.start()
                    revoke.join()  # committed, by another connection
                return super().describe(entity)

        default_registry.unregister("action")
        register_entity_config(RevokedWhileLoading())

        run = run_workflow("action")

        assert RevokedWhileLoading.revoked and llm.requests == []  # nothing went out after it
        assert run.status == SyncRun.Status.SUCCEEDED and run.summarized == 0
        assert not live_rows(embedded_store, "action")
        assert len(actions) == 2 and run.selected == 2

    def test_undeleted_entity_comes_back_without_a_new_summary(
        self, llm: OpenAIServer, embedded_store: EmbeddingStore
    ) -> None:
        team = make_team()
        action = make_action(team, name="Downloaded invoice")
        run_workflow("action")
        action.refresh_from_db()
        action.deleted = True
        action.save()
        run_workflow("action")
        llm.reset()

        action.refresh_from_db()
        action.deleted = False
        action.save()
        run = run_workflow("action")

        assert run.inserted == 1 and run.summaries_reused == 1
        assert llm.chat_requests() == []
        assert [hit.id for hit in search_entities("action", team.id, "downloaded invoice")] == [
            str(action.pk)
        ]

    def test_hard_delete_is_tombstoned_by_the_next_run_without_requests(
        self, llm: OpenAIServer, embedded_store: EmbeddingStore
    ) -> None:
        team = make_team()
        definition = make_event_definition(team, name="legacy_event")
        run_workflow("event_definition")
        assert len(search_entities("event_definition", team.id, "legacy event")) == 1
        llm.reset()

        EventDefinition.objects.filter(pk=definition.pk).delete()
        run = run_workflow("event_definition")

        assert run.tombstoned == 1
        assert llm.requests == []
        assert [row.is_deleted for row in embedded_store.latest_rows("event_definition")] == [True]
        assert search_entities("event_definition", team.id, "legacy event") == []

    def test_an_entity_whose_insert_was_not_confirmed_is_still_tombstoned(
        self, offline: None, embedded_store: EmbeddingStore
    ) -> None:
        team = make_team()
        action = make_action(team, name="Half written")
        run_workflow("action")
        # As after a crash between the insert and the marking: a row exists, nothing confirmed it.
        Action.objects.filter(pk=action.pk).update(embedding_last_synced_at=None)
        action.refresh_from_db()
        action.deleted = True
        action.save()

        run = run_workflow("action")

        assert run.tombstoned == 1
        assert search_entities("action", team.id, "half written") == []

    def test_hard_deletes_of_other_models_keep_djangos_fast_delete(self) -> None:
        from django.contrib.sessions.models import Session
        from django.db.models.deletion import Collector

        assert Collector(using="default", origin=None).can_fast_delete(Session.objects.all())

    def test_reconcile_sweep_tombstones_rows_deleted_behind_the_signals_back(
        self, offline: None, embedded_store: EmbeddingStore
    ) -> None:
        team = make_team()
        kept = make_event_definition(team, name="kept_event")
        gone = make_event_definition(team, name="gone_event")
        run_workflow("event_definition")
        EventDefinition.objects.filter(pk=gone.pk)._raw_delete(
            EventDefinition.objects.db
        )  # no signals at all

        run = run_workflow("event_definition")

        assert run.tombstoned == 1
        assert [hit.id for hit in search_entities("event_definition", team.id, "event")] == [str(kept.pk)]


class TestTenancy:
    """Every search sees one team only."""

    def test_same_text_in_two_teams_is_found_only_by_its_own_team(
        self, llm: OpenAIServer, embedded_store: EmbeddingStore
    ) -> None:
        first, second = make_team(), make_team()
        mine = make_action(first, name="Exported a report", description="CSV export of a dashboard")
        theirs = make_action(second, name="Exported a report", description="CSV export of a dashboard")
        run_workflow("action")

        first_hits = search_entities("action", first.id, "export report")
        second_hits = search_entities("action", second.id, "export report")

        assert [(hit.id, hit.team_id) for hit in first_hits] == [(str(mine.pk), first.id)]
        assert [(hit.id, hit.team_id) for hit in second_hits] == [(str(theirs.pk), second.id)]
        with pytest.raises(SearchError, match="no such team"):
            search_entities("action", 999_999, "export report")


class TestRowVersions:
    """Row versions come from one counter in the database, never from a clock or the insert time."""

    def test_every_write_carries_a_newer_version_from_the_counter(
        self, offline: None, embedded_store: EmbeddingStore
    ) -> None:
        team = make_team()
        action = make_action(team, name="Viewed pricing")
        run_workflow("action")
        (first,) = embedded_store.latest_rows("action")
        action.refresh_from_db()
        action.name = "Viewed the pricing page"
        action.save()

        run_workflow("action")

        (second,) = embedded_store.latest_rows("action")
        assert second.version > first.version > 0
        assert second.properties["_vectorized_by"] == {
            "summarizer": "template",
            "embedder": "hashing",
            "dimensions": 256,
        }
        assert second.properties["action_id"] == int(second.id)

    def test_a_late_retry_of_an_older_run_cannot_overwrite_newer_data(
        self, offline: None, embedded_store: EmbeddingStore
    ) -> None:
        from entity_vectors.store import EmbeddingRow

        team = make_team()
        action = make_action(team, name="Original name")
        run_workflow("action")
        older = embedded_store.latest_rows("action")
        action.refresh_from_db()
        action.name = "Renamed"
        action.save()
        run_workflow("action")

        # The older run's rows arrive again, e.g. a redelivered insert of that run.
        embedded_store.insert(
            [
                EmbeddingRow(
                    domain=row.domain,
                    team_id=row.team_id,
                    id=row.id,
                    vector=row.vector,
                    text=row.text,
                    properties=json.dumps(row.properties),
                    embedding_version=row.embedding_version,
                    timestamp=row.timestamp,
                    version=row.version,
                )
                for row in older
            ]
        )

        (latest,) = embedded_store.latest_rows("action")
        assert "Renamed" in latest.text and latest.properties["name"] == "Renamed"

    def test_a_run_given_a_past_start_dt_still_writes_the_newest_rows(
        self, offline: None, embedded_store: EmbeddingStore
    ) -> None:
        team = make_team()
        action = make_action(team, name="Archived report")
        first = run_workflow("action")
        action.refresh_from_db()
        action.deleted = True
        action.save()

        late = run_workflow("action", start_dt=(first.start_dt - timedelta(days=1)).isoformat())

        # The change came after that start_dt, but a live row of a deleted entity is repaired anyway.
        assert late.tombstoned == 1
        (latest,) = embedded_store.latest_rows("action")
        assert latest.version > 0 and latest.timestamp >= first.started_at
        assert latest.is_deleted
        assert search_entities("action", team.id, "archived report") == []


class TestCohortsAndEventDefinitions:
    """Every host domain runs through the same workflow."""

    def test_each_domain_is_vectorized_with_its_own_rendering(
        self, llm: OpenAIServer, embedded_store: EmbeddingStore
    ) -> None:
        team = make_team()
        make_cohort(
            team,
            name="Churned payers",
            filters={
                "properties": {
                    "type": "AND",
                    "values": [
                        {"type": "person", "key": "plan", "operator": "exact", "value": "pro"},
                        {
                            "type": "behavioral",
                            "key": "purchase",
                            "value": "performed_event",
                            "negation": True,
                        },
                    ],
                }
            },
        )
        make_event_definition(team, name="purchase", description="Order paid", tags=["revenue"])

        assert run_workflow("cohort").inserted == 1
        assert run_workflow("event_definition").inserted == 1

        inputs = chat_inputs(llm)
        assert any(
            "person property `plan` is `pro` AND did not perform event `purchase`" in text for text in inputs
        )
        assert any("Event `purchase`" in text and "Tags: revenue." in text for text in inputs)
        assert Cohort.objects.get().embedding_version == 1


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
        from entity_vectors.inputs import SyncEntityVectorsInputs
        from entity_vectors.workflow.access import LocalAccess

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
        from entity_vectors.inputs import SyncEntityVectorsInputs
        from entity_vectors.models import LedgerEntry, SyncRunBatch
        from entity_vectors.workflow.access import LocalAccess

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
        from entity_vectors.inputs import SyncEntityVectorsInputs
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
