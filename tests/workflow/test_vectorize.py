"""The provider-bound stage under real conditions: replies out of order, a tight rate budget."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from app.models import Action
from entity_vectors import search_entities
from entity_vectors.models import SyncRun
from entity_vectors.store import EmbeddingStore
from tests.conftest import run_workflow
from tests.factories import make_action, make_team
from tests.support.observe import live_rows
from tests.support.openai_content import embed_text
from tests.support.openai_server import OpenAIServer

pytestmark = pytest.mark.django_db

CHAT_MODEL = "gpt-4.1-mini"
ENTITIES = 640


def rows_by_id(store: EmbeddingStore) -> dict[str, Any]:
    return {row.id: row for row in store.latest_rows("action") if not row.is_deleted}


class TestOutOfOrderReplies:
    """Summary i belongs to entity i, and each vector to its own summary, whatever order replies come in."""

    def test_slow_first_replies_keep_summaries_and_vectors_aligned(
        self, llm: OpenAIServer, embedded_store: EmbeddingStore
    ) -> None:
        team = make_team()
        actions = [make_action(team, name=f"Ordered step {index:02d}") for index in range(12)]
        llm.hang_next(4, 0.6, path="/chat/completions")  # the first four answer last

        run = run_workflow("action", embed_batch_size=3, max_parallel_requests=12)

        assert run.status == SyncRun.Status.SUCCEEDED
        rows = rows_by_id(embedded_store)
        for action in Action.objects.filter(pk__in=[a.pk for a in actions]):
            row = rows[str(action.pk)]
            assert action.name in row.text and row.text == action.summary
            assert np.allclose(row.vector, embed_text(row.text, 256), atol=1e-6)
        chats, embeddings = llm.chat_requests(), llm.embedding_requests()
        finished = sorted(request.finished_at or 0 for request in chats)
        # Replies did come out of order, and vectors were asked for while summaries were still due.
        assert [request.finished_at for request in chats[:4]] > [finished[7]] * 4
        assert min(request.started_at for request in embeddings) < finished[-1]


class TestRateBudget:
    """A run under a rate budget just below the provider's limit slows itself down: no 429."""

    def test_a_run_under_a_tight_budget_gets_no_429_and_finishes(
        self, llm: OpenAIServer, embedded_store: EmbeddingStore, settings: Any
    ) -> None:
        # More summaries than the provider's burst (600, then ten a second): at full speed the run
        # would be refused; under a budget of 560 a minute it waits for the refill instead.
        llm.set_rate_limit(CHAT_MODEL, rpm=600)
        settings.ENTITY_VECTORS_RATE_LIMITS = {CHAT_MODEL: {"rpm": 560}}
        team = make_team()
        Action.objects.bulk_create(
            [Action(team=team, name=f"Budgeted action {index}", steps=[]) for index in range(ENTITIES)]
        )

        run = run_workflow("action", max_parallel_requests=16, summarize_batch_size=200)

        assert llm.rate_limited == 0
        assert run.status == SyncRun.Status.SUCCEEDED and run.inserted == ENTITIES
        assert len(llm.chat_requests()) == ENTITIES


class TestConnectionsOutliveABatch:
    """Batches and searches of a process share its provider connections (keep-alive)."""

    def test_three_batches_and_two_searches_open_no_more_connections_than_slots(
        self, llm: OpenAIServer, embedded_store: EmbeddingStore
    ) -> None:

        team = make_team()
        actions = [make_action(team, name=f"Invited teammate {index}") for index in range(6)]
        llm.reset()

        run = run_workflow("action", summarize_batch_size=2, embed_batch_size=2, max_parallel_requests=2)
        found = [
            search_entities("action", team_id=team.pk, query=query, mode="vector", limit=6)
            for query in ("invite", "teammate")
        ]

        assert run.status == SyncRun.Status.SUCCEEDED and run.inserted == 6
        for hits in found:  # every search found the team's six actions through the kept client
            assert sorted(hit.id for hit in hits) == sorted(str(action.pk) for action in actions)
        assert (len(llm.chat_requests()), len(llm.embedding_requests())) == (6, 5)
        # Each batch used to open its own client: up to 2 new connections per batch, 1 per search.
        assert llm.connections_opened <= 2


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
