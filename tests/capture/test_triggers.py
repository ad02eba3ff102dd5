"""The change log's capture triggers: what a write to a host table records, however it is made."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from django.db import connection
from django.utils import timezone

from app.models import Action
from entity_vectors.capture.changelog import pending_changes
from entity_vectors.capture.triggers import forget_installed, install_triggers
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
