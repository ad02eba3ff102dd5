"""Retiring a version that no longer serves: its rows tombstoned, runs that still write it waited for."""

from __future__ import annotations

from pathlib import Path

import pytest
from django.core.management.base import CommandError

from app.models import Action, Team
from entity_vectors import search_entities
from entity_vectors.core.embedding_versions import served_version
from entity_vectors.exceptions import InvalidInputsError
from entity_vectors.lifecycle.retirement import retire
from entity_vectors.models import DomainVersion, LedgerEntry, SyncRun
from entity_vectors.store import EmbeddingStore
from tests.conftest import run_workflow
from tests.support.migrations import QUERY, dimensions, migrate, rows_at


@pytest.mark.django_db
class TestRetire:
    """--retire M stops writing M and tombstones its rows; the served version cannot be retired."""

    def test_retiring_the_old_version_after_the_promotion(
        self, synced: tuple[Team, list[Action]], embedded_store: EmbeddingStore, no_action_queries: Path
    ) -> None:
        team, actions = synced
        migrate("--domain", "action", "--to-version", "2", "--embedder", "hashing", "--dimensions", "128")
        migrate("--domain", "action", "--to-version", "2", "--promote")

        with pytest.raises(CommandError, match="version 2 is the one action search serves"):
            migrate("--domain", "action", "--retire", "2")

        out = migrate("--domain", "action", "--retire", "1")

        assert "action: version 1 retired; runs no longer write it; tombstoned 3 rows of 3 entities" in out
        assert search_entities("action", team.id, QUERY, embedding_version=1) == []
        assert search_entities("action", team.id, QUERY, embedding_version=1, mode="text") == []
        assert all(row.is_deleted for row in rows_at(embedded_store, 1).values())
        assert not LedgerEntry.objects.filter(domain="action", embedding_version=1, is_live=True).exists()
        assert not LedgerEntry.objects.filter(domain="action", embedding_version=1, has_live=True).exists()
        assert DomainVersion.objects.get(domain="action", embedding_version=1).state == "retired"
        assert dimensions(search_entities("action", team.id, QUERY)) == {128}

        # The next run writes version 2 only; version 1 keeps its tombstones.
        edited = Action.objects.get(pk=actions[0].pk)
        edited.name = "Signed up for the beta"
        edited.save()
        run = run_workflow("action", embedding_version=served_version("action"))
        assert run.status == "succeeded"
        assert [item["version"] for item in run.versions["write"]] == [2]
        assert rows_at(embedded_store, 2)[str(edited.pk)].properties["name"] == "Signed up for the beta"
        assert rows_at(embedded_store, 1)[str(edited.pk)].is_deleted
        assert search_entities("action", team.id, QUERY, embedding_version=1) == []
        with pytest.raises(InvalidInputsError, match="version 1 of action was retired"):
            run_workflow("action", embedding_version=1)

        again = migrate("--domain", "action", "--retire", "1")
        assert "version 1 retired (it was already retired)" in again and "tombstoned 0 rows of 0" in again

    def test_promote_and_retire_in_one_command(
        self, synced: tuple[Team, list[Action]], no_action_queries: Path
    ) -> None:
        team, _ = synced
        migrate("--domain", "action", "--to-version", "2", "--embedder", "hashing", "--dimensions", "128")

        out = migrate("--domain", "action", "--to-version", "2", "--promote", "--retire", "1")

        assert "version 2 now serves search (was version 1)" in out and "version 1 retired" in out
        assert search_entities("action", team.id, QUERY, embedding_version=1) == []
        assert dimensions(search_entities("action", team.id, QUERY)) == {128}

    def test_retire_waits_for_a_run_that_still_writes_the_version(
        self, synced: tuple[Team, list[Action]]
    ) -> None:
        migrate("--domain", "action", "--to-version", "2", "--embedder", "hashing", "--dimensions", "128")
        holder = SyncRun.objects.create(
            domain="action",
            versions={"write": [{"version": 2}], "backfilling": []},
            start_dt="2024-01-01T00:00Z",
        )

        result = retire("action", 2, wait_seconds=0.2, poll_seconds=0.05)

        assert result.waiting_for == [str(holder.id)] and not result.complete
        assert DomainVersion.objects.get(domain="action", embedding_version=2).state == "retired"
        assert LedgerEntry.objects.filter(domain="action", embedding_version=2, is_live=True).count() == 3
        SyncRun.objects.filter(pk=holder.pk).update(status=SyncRun.Status.SUCCEEDED)
        done = retire("action", 2)
        assert done.complete and done.already_retired and done.tombstoned == 3
