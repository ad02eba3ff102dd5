"""A fast-lane pass: it takes fresh changes, and entities that cannot go now never fill its window."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from entity_vectors.capture.changelog import pending_changes
from tests.factories import make_action, make_team

pytestmark = pytest.mark.django_db


class TestFastLaneWindow:
    """A fast-lane pass takes fresh changes: entities that cannot go now never fill its window."""

    @pytest.fixture
    def window_of_two(self, llm: Any, embedded_store: Any, settings: Any, redis_client: Any) -> Iterator[Any]:
        settings.ENTITY_VECTORS_FAST_LANE_MAX_ENTITIES = 2
        settings.ENTITY_VECTORS_PARK_AFTER = 1
        yield redis_client
        redis_client.delete("entity-vectors:fast-lane:action")

    @staticmethod
    def pass_queued(redis_client: Any) -> bool:
        """Whether a pass left another one due (its debounce key is taken when one is sent)."""
        return bool(redis_client.exists("entity-vectors:fast-lane:action"))

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

        assert passed["status"] == "finished" and passed["selected"] == 1
        assert len(llm.chat_requests()) == 1  # the parked ones were not sent again
        assert "A fresh edit" in llm.chat_requests()[0].body["messages"][1]["content"]
        assert pending_changes("action", fresh=True) == {}
        assert str(fresh.pk) not in pending_changes("action")  # written and cleared
        assert not self.pass_queued(window_of_two)  # nothing left to do: no pass queued
        assert run_fast_lane("action")["status"] == "nothing to do"

    def test_over_budget_entities_do_not_starve_a_fresh_edit(
        self, window_of_two: Any, llm: Any, settings: Any
    ) -> None:
        from entity_vectors.workflow.fast_lane import run_fast_lane

        broke, other = make_team(), make_team()
        settings.ENTITY_VECTORS_BUDGETS = {str(broke.organization_id): "0"}
        for index in range(2):
            make_action(broke, name=f"Waits for budget {index}")
        first = run_fast_lane("action")
        assert first["over_budget"] == 2 and not self.pass_queued(window_of_two)  # moved nothing
        fresh = make_action(other, name="Another team's edit")

        passed = run_fast_lane("action")

        assert passed["status"] == "finished" and passed["selected"] == 1
        assert str(fresh.pk) not in pending_changes("action")
        assert not self.pass_queued(window_of_two)
        assert len(pending_changes("action")) == 2  # still waiting for budget, for the runs
