"""A fast-lane pass: it takes fresh changes, newest first and bounded; entities that cannot go now
never fill its window, and more than it takes are left to a run."""

from __future__ import annotations

from typing import Any

import pytest

from entity_vectors.capture.changelog import pending_changes
from tests.factories import make_action, make_team

pytestmark = pytest.mark.django_db


class TestFastLaneWindow:
    """A fast-lane pass takes fresh changes: entities that cannot go now never fill its window."""

    @pytest.fixture
    def window_of_two(self, llm: Any, embedded_store: Any, settings: Any) -> None:
        settings.ENTITY_VECTORS_FAST_LANE_MAX_ENTITIES = 2
        settings.ENTITY_VECTORS_PARK_AFTER = 1

    def test_parked_entities_do_not_starve_a_fresh_edit(self, window_of_two: Any, llm: Any) -> None:
        from entity_vectors.models import EntityFailure
        from entity_vectors.workflow.fast_lane import run_fast_lane
        from tests.conftest import run_workflow

        team = make_team()
        for index in range(2):
            make_action(team, name=f"Poison {index}", description="POISON-PILL")
        llm.fail_when("POISON-PILL", status=400, path="/chat/completions")
        run_workflow("action")
        assert EntityFailure.objects.filter(parked_at__isnull=False).count() == 2  # the oldest changes
        fresh = make_action(team, name="A fresh edit")
        llm.reset()

        passed = run_fast_lane("action")

        assert passed.status == "finished" and passed.counts["selected"] == 1
        assert len(llm.chat_requests()) == 1  # the parked ones were not sent again
        assert "A fresh edit" in llm.chat_requests()[0].body["messages"][1]["content"]
        assert pending_changes("action", fresh=True) == {}
        assert str(fresh.pk) not in pending_changes("action")  # written and cleared
        assert not passed.overflow  # nothing left over: no run requested
        assert run_fast_lane("action").status == "nothing to do"

    def test_over_budget_entities_do_not_starve_a_fresh_edit(
        self, window_of_two: Any, llm: Any, settings: Any
    ) -> None:
        from entity_vectors.workflow.fast_lane import run_fast_lane

        broke, other = make_team(), make_team()
        settings.ENTITY_VECTORS_BUDGETS = {str(broke.organization_id): "0"}
        for index in range(2):
            make_action(broke, name=f"Waits for budget {index}")
        first = run_fast_lane("action")
        assert first.counts["over_budget"] == 2 and not first.overflow
        fresh = make_action(other, name="Another team's edit")

        passed = run_fast_lane("action")

        assert passed.status == "finished" and passed.counts["selected"] == 1
        assert str(fresh.pk) not in pending_changes("action")
        assert len(pending_changes("action")) == 2  # still waiting for budget, for the runs


class TestOverflow:
    """More fresh changes than a pass takes (an import): the newest go now, the rest to a run."""

    def test_the_newest_go_and_the_rest_are_set_aside_for_a_run(
        self, llm: Any, embedded_store: Any, settings: Any
    ) -> None:
        from entity_vectors.workflow.fast_lane import run_fast_lane

        settings.ENTITY_VECTORS_FAST_LANE_MAX_ENTITIES = 2
        team = make_team()
        imported = [make_action(team, name=f"Imported {index}") for index in range(5)]

        passed = run_fast_lane("action")

        assert passed.overflow and passed.taken == 2 and passed.set_aside == 3
        sent = " ".join(request.body["messages"][1]["content"] for request in llm.chat_requests())
        assert "Imported 4" in sent and "Imported 3" in sent and "Imported 0" not in sent
        left = pending_changes("action")
        assert set(left) == {str(action.pk) for action in imported[:3]}  # waiting for the run
        assert pending_changes("action", fresh=True) == {}  # no later pass takes them
        assert run_fast_lane("action").status == "nothing to do"
        edit = make_action(team, name="An edit after the import")
        assert run_fast_lane("action").taken == 1  # a later edit's pass takes only its own
        assert str(edit.pk) not in pending_changes("action")
