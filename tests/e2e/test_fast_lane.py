"""The fast lane on real workers: changes reach search in seconds, without a beat tick."""

from __future__ import annotations

from typing import Any

import pytest

from app.celery import app as celery_app
from app.models import Action
from entity_vectors import search_entities
from entity_vectors.models import SyncRun
from entity_vectors.store import EmbeddingStore
from entity_vectors.tasks import sync_entities
from tests.e2e.conftest import wait_for_run
from tests.factories import make_action, make_team
from tests.support.openai_server import OpenAIServer
from tests.support.processes import wait_until

pytestmark = pytest.mark.slow


@pytest.fixture
def fast_lane(pipeline: EmbeddingStore, settings: Any) -> EmbeddingStore:
    """The fast lane on in this (the editing) process; workers run its passes."""
    settings.ENTITY_VECTORS_FAST_LANE = True
    settings.ENTITY_VECTORS_FAST_LANE_DELAY = 0.5
    return pipeline


def test_a_worker_of_the_batch_queue_consumes_the_fast_queue_too(workers: list[Any]) -> None:
    replies = celery_app.control.inspect(timeout=2).active_queues() or {}
    queues = {node.split("@")[0]: {queue["name"] for queue in found} for node, found in replies.items()}

    assert {"max-ai-task-queue", "max-ai-task-queue-fast"} <= queues["worker1"]
    assert {"max-ai-task-queue", "max-ai-task-queue-fast"} <= queues["worker2"]


def found(team_id: int, query: str, entity: Action) -> bool:
    return any(hit.id == str(entity.pk) for hit in search_entities("action", team_id, query, limit=5))


def summaries_asked_for(server: OpenAIServer, text: str) -> int:
    return sum(text in request.body["messages"][-1]["content"] for request in server.chat_requests())


def test_edits_and_deletes_reach_search_without_a_beat_tick(fast_lane: EmbeddingStore, llm: OpenAIServer) -> None:
    team = make_team()
    action = make_action(team, name="Checkout started")
    soft = make_action(team, name="Newsletter signup")
    hard = make_action(team, name="Invoice downloaded")
    wait_until(lambda: found(team.pk, "Checkout started", action), timeout=30, what="the new action in search")
    wait_until(lambda: found(team.pk, "Invoice downloaded", hard), timeout=30, what="the others in search")

    action.name = "Subscription cancelled"
    action.save()
    wait_until(
        lambda: found(team.pk, "Subscription cancelled", action)
        and "Subscription cancelled" in search_entities("action", team.pk, "Subscription cancelled")[0].text,
        timeout=30,
        what="the edit in search",
    )
    soft.deleted = True
    soft.save()
    hard_pk = hard.pk
    hard.delete()
    wait_until(
        lambda: not found(team.pk, "Newsletter signup", soft)
        and not any(hit.id == str(hard_pk) for hit in search_entities("action", team.pk, "Invoice downloaded")),
        timeout=30,
        what="the deleted actions to leave search",
    )
    assert not SyncRun.objects.filter(kind=SyncRun.Kind.RUN).exists()  # no beat run did it
    assert SyncRun.objects.filter(kind=SyncRun.Kind.FAST_LANE, status=SyncRun.Status.SUCCEEDED).exists()


def test_a_burst_of_edits_costs_at_most_two_summaries(
    fast_lane: EmbeddingStore, llm: OpenAIServer, settings: Any
) -> None:
    """The first edit goes at once (the leading edge); the rest of the burst, one trailing pass."""
    settings.ENTITY_VECTORS_FAST_LANE_DELAY = 2.0  # the burst fits in the window
    team = make_team()
    action = make_action(team, name="Burst base")
    wait_until(lambda: found(team.pk, "Burst base", action), timeout=30, what="the action in search")
    before = len(llm.chat_requests())

    for index in range(100):
        action.name = f"Burst edit {index}"
        action.save()
    wait_until(
        lambda: search_entities("action", team.pk, "Burst edit 99", limit=1)[0].text.find("Burst edit 99") >= 0,
        timeout=30,
        what="the last edit in search",
    )

    assert len(llm.chat_requests()) - before <= 2
    assert summaries_asked_for(llm, "Burst edit 99") == 1


def test_the_fast_lane_and_a_full_run_never_write_an_entity_twice(
    fast_lane: EmbeddingStore, llm: OpenAIServer
) -> None:
    team = make_team()
    actions = [make_action(team, name=f"Contended action {index:02d}") for index in range(20)]
    # A full run right away: it and the fast lane's pass contend for the same entities.
    run = wait_for_run(sync_entities.delay("action", delay_between_batches=0).get(timeout=60)["run_id"])
    wait_until(
        lambda: all(found(team.pk, action.name, action) for action in actions),
        timeout=60,
        what="every action in search",
    )
    wait_until(
        lambda: not SyncRun.objects.filter(status=SyncRun.Status.RUNNING).exists(), timeout=60, what="quiet"
    )

    assert run.status in (SyncRun.Status.SUCCEEDED, SyncRun.Status.SKIPPED)
    assert fast_lane.count_rows("action") == 20  # each entity written once, by one of them
    for action in actions:
        assert summaries_asked_for(llm, action.name) == 1


def test_an_edit_made_while_a_pass_runs_gets_its_own_pass(fast_lane: EmbeddingStore, llm: OpenAIServer) -> None:
    team = make_team()
    first = make_action(team, name="Early edit")
    # The pass for the first edit has read the change log once its run exists.
    wait_until(lambda: SyncRun.objects.filter(kind=SyncRun.Kind.FAST_LANE).exists(), timeout=30, what="a pass")
    second = make_action(team, name="Edit during the pass")

    wait_until(lambda: found(team.pk, "Early edit", first), timeout=30, what="the first edit in search")
    wait_until(lambda: found(team.pk, "Edit during the pass", second), timeout=30, what="the second edit in search")
    assert not SyncRun.objects.filter(kind=SyncRun.Kind.RUN).exists()
