"""Starting a run: team round robin within a run, the team quantum across runs, the only skip."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from app.celery import app as celery_app
from entity_vectors.core.inputs import SyncEntityVectorsInputs
from entity_vectors.models import SyncRun, SyncRunBatch
from entity_vectors.store import EmbeddingStore
from entity_vectors.workflow.start import fair_order
from tests.conftest import run_workflow
from tests.factories import make_action, make_team
from tests.support.openai_server import OpenAIServer

pytestmark = pytest.mark.django_db


class TestFairOrder:
    """One entity of each team a turn, the smallest teams first; a quantum caps a team's share."""

    def test_teams_take_turns_smallest_first(self) -> None:
        teams = {**{f"a{i}": 1 for i in range(5)}, "b0": 2, "b1": 2, "c0": 3}

        order, deferred = fair_order(list(teams), teams, quantum=0)

        assert deferred == 0
        assert order[:3] == ["c0", "b0", "a0"]
        assert order[3:] == ["b1", "a1", "a2", "a3", "a4"]

    def test_the_quantum_defers_a_large_teams_rest_while_others_have_work(self) -> None:
        teams = {**{f"a{i}": 1 for i in range(6)}, "b0": 2}

        order, deferred = fair_order(list(teams), teams, quantum=2)

        assert (order, deferred) == (["b0", "a0", "a1"], 4)
        alone, none_deferred = fair_order([f"a{i}" for i in range(6)], teams, quantum=2)
        assert len(alone) == 6 and none_deferred == 0  # no other team waits: the whole backlog

    def test_entities_gone_from_the_table_form_a_group_of_their_own(self) -> None:
        order, _ = fair_order(["gone", "x"], {"x": 1}, quantum=0)

        assert sorted(order) == ["gone", "x"]


class TestSmallTeamFirst:
    """A team with a handful of changes is done in the first batch of a backlog run."""

    def test_a_small_teams_entities_come_out_in_the_first_batch(
        self, llm: OpenAIServer, embedded_store: EmbeddingStore
    ) -> None:
        large, small = make_team(), make_team()
        for index in range(40):
            make_action(large, name=f"Large team backlog {index:02d}")
        few = [make_action(small, name=f"Small team edit {index}") for index in range(4)]

        run = run_workflow("action", summarize_batch_size=8)

        first = SyncRunBatch.objects.get(run=run, index=0)
        assert {str(action.pk) for action in few} <= {str(pk) for pk in first.entity_ids}
        asked = [request.body["messages"][-1]["content"] for request in llm.chat_requests()]
        assert all(any(action.name in text for text in asked[:8]) for action in few)
        assert run.status == SyncRun.Status.SUCCEEDED and run.inserted == 44


class TestQuantum:
    """Across runs: a distributed run takes at most ENTITY_VECTORS_TEAM_QUANTUM of a team while other
    teams have work, and its finishing task queues the run that takes the rest."""

    @pytest.fixture
    def eager(self) -> Iterator[None]:
        celery_app.conf.task_always_eager = True
        try:
            yield
        finally:
            celery_app.conf.task_always_eager = False

    def test_a_large_team_waits_its_turn_and_the_next_run_takes_the_rest(
        self, offline: None, embedded_store: EmbeddingStore, settings: Any, eager: None
    ) -> None:
        from entity_vectors.providers.access import LocalAccess
        from entity_vectors.tasks import finish_sync
        from entity_vectors.workflow import process_batch, start_run

        settings.ENTITY_VECTORS_TEAM_QUANTUM = 3
        large, small = make_team(), make_team()
        backlog = [make_action(large) for _ in range(7)]
        few = [make_action(small) for _ in range(2)]

        started = start_run(
            SyncEntityVectorsInputs(domain="action", delay_between_batches=0), mode=SyncRun.Mode.DISTRIBUTED
        )
        run = started.run
        assert (run.selected, run.deferred) == (5, 4)
        for index in started.batch_indexes:
            process_batch(started.context, index, LocalAccess(2))
        finish_sync.apply(kwargs={"run_id": str(run.id), "domain": "action"})

        run.refresh_from_db()
        assert run.status == SyncRun.Status.SUCCEEDED and run.inserted == 5
        follow_up = SyncRun.objects.exclude(pk=run.pk).get()
        assert follow_up.status == SyncRun.Status.SUCCEEDED and follow_up.inserted == 4
        assert {row.id for row in embedded_store.latest_rows("action")} == {
            str(action.pk) for action in [*backlog, *few]
        }

    def test_an_inline_run_takes_everything(self, offline: None, embedded_store: EmbeddingStore, settings: Any) -> None:
        settings.ENTITY_VECTORS_TEAM_QUANTUM = 3
        large, small = make_team(), make_team()
        for _ in range(7):
            make_action(large)
        make_action(small)

        run = run_workflow("action")

        assert (run.selected, run.deferred, run.inserted) == (8, 0, 8)
