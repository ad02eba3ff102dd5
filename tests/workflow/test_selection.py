"""The workflow's plain functions, end to end in one process: PostgreSQL, chdb, the OpenAI SDK."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from django.utils import timezone

from app.models import Action
from entity_vectors.models import SyncRun
from entity_vectors.store import EmbeddingStore
from tests.conftest import run_workflow
from tests.factories import make_action, make_cohort, make_event_definition, make_team
from tests.support.observe import chat_inputs, live_rows
from tests.support.openai_server import OpenAIServer

pytestmark = pytest.mark.django_db


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
