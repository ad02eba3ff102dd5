"""The change log's capture triggers: what a write to a host table records, however it is made."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from django.db import connection
from django.utils import timezone

from app.models import Action
from entity_vectors.changes import forget_installed, install_triggers, pending_changes
from entity_vectors.models import EntityChange
from tests.factories import make_action, make_team

pytestmark = pytest.mark.django_db


def _action() -> Action:
    action = make_action(make_team())
    EntityChange.objects.all().delete()
    return action


def _raw(sql: str, *params: object) -> None:
    with connection.cursor() as cursor:
        cursor.execute(sql, list(params))


def test_an_update_of_the_mirror_columns_only_is_not_a_change() -> None:
    action = _action()
    now = timezone.now()

    Action.objects.filter(pk=action.pk).update(
        summary="a summary",
        summary_input_hash="h",
        summarized_by="template",
        last_summarized_at=now,
        embedding_last_synced_at=now,
        embedding_version=2,
    )

    assert pending_changes("action") == {}


def test_inserts_updates_and_deletes_behind_the_orm_are_changes() -> None:
    action = _action()

    _raw("UPDATE app_action SET description = %s WHERE id = %s", "edited by raw SQL", action.pk)
    first = pending_changes("action")
    _raw("UPDATE app_action SET summary = %s, description = description WHERE id = %s", "mirror", action.pk)
    assert pending_changes("action") == first  # the same values again, and a mirror column: no change
    _raw("DELETE FROM app_action WHERE id = %s", action.pk)
    second = pending_changes("action")

    assert list(first) == [str(action.pk)]
    assert second[str(action.pk)] > first[str(action.pk)]
    added = make_action(make_team())
    assert str(added.pk) in pending_changes("action")


@pytest.fixture
def shape_column() -> Iterator[None]:
    """A column the model does not know, of a type without `=` (point), added behind the ORM;
    the test's transaction takes it away again."""
    _raw("ALTER TABLE app_action ADD COLUMN shape point")
    forget_installed()
    install_triggers("action", Action)
    try:
        yield
    finally:
        forget_installed()


def test_a_column_added_later_is_watched_once_the_triggers_are_installed_again(shape_column: None) -> None:
    action = _action()

    _raw("UPDATE app_action SET shape = point(1, 2), summary = 'mirror' WHERE id = %s", action.pk)
    assert list(pending_changes("action")) == [str(action.pk)]

    EntityChange.objects.all().delete()
    _raw("UPDATE app_action SET shape = point(1, 2), summary = 'mirror again' WHERE id = %s", action.pk)
    assert pending_changes("action") == {}


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
        from entity_vectors.fastlane import run_fast_lane
        from entity_vectors.models import EntityFailure
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
        from entity_vectors.fastlane import run_fast_lane

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
