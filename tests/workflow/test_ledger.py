"""Row versions from the counter: later plans win, whatever the clocks and start_dt say."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from entity_vectors import search_entities
from entity_vectors.store import EmbeddingStore
from tests.conftest import run_workflow
from tests.factories import make_action, make_team

pytestmark = pytest.mark.django_db


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
