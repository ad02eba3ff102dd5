"""Deciding each entity against the ledger: skip, reuse, embed or tombstone, at every version."""

from __future__ import annotations

import pytest
from django.db import connection

from app.models import Action, EventDefinition
from entity_vectors import search_entities
from entity_vectors.models import SyncRun
from entity_vectors.store import EmbeddingStore
from tests.conftest import run_workflow
from tests.factories import make_action, make_cohort, make_event_definition, make_team
from tests.support.observe import live_rows
from tests.support.openai_server import OpenAIServer

pytestmark = pytest.mark.django_db


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
        from entity_vectors.core.registry import default_registry, register_entity_config

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
