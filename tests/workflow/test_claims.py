"""Claims: one writer per entity at a time, on PostgreSQL's clock, released when done or failed,
taken over once their lease is out."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from entity_vectors.core.inputs import SyncEntityVectorsInputs
from entity_vectors.models import EntityClaim, SyncRun
from entity_vectors.store import EmbeddingStore
from entity_vectors.workflow import claims
from tests.conftest import run_workflow
from tests.factories import make_action, make_team

pytestmark = pytest.mark.django_db


def a_run() -> SyncRun:
    return SyncRun.objects.create(
        domain="action", start_dt=timezone.now(), lease_expires_at=timezone.now() + timedelta(hours=1)
    )


class TestClaim:
    """What one writer holds, no other takes; its own redelivery takes it again."""

    def test_a_held_entity_is_not_taken_by_another_writer(self) -> None:
        first, second = a_run(), a_run()

        assert claims.claim("action", ["1", "2"], str(first.id), 0) == {"1", "2"}
        assert claims.claim("action", ["2", "3"], str(second.id), 0) == {"3"}
        assert claims.claim("action", ["1", "2"], str(first.id), 0) == {"1", "2"}  # a redelivery
        assert claims.claim("action", ["1"], str(first.id), 1) == set()  # another batch of the run
        assert claims.claim("cohort", ["1"], str(second.id), 0) == {"1"}  # another domain
        held = EntityClaim.objects.filter(domain="action").values_list("entity_id", "run_id")
        assert dict(held) == {"1": first.id, "2": first.id, "3": second.id}

    def test_released_and_expired_claims_go_to_the_next_writer(self) -> None:
        first, second = a_run(), a_run()
        claims.claim("action", ["1", "2"], str(first.id), 0)
        claims.claim("action", ["3"], str(first.id), 1)

        assert claims.release(first.id, [0]) == 2
        assert claims.claim("action", ["1", "3"], str(second.id), 0) == {"1"}
        EntityClaim.objects.filter(entity_id="3").update(expires_at=timezone.now() - timedelta(seconds=1))
        assert claims.claim("action", ["3"], str(second.id), 0) == {"3"}  # a dead writer's, taken over
        assert EntityClaim.objects.get(entity_id="3").run_id == second.id

    def test_the_sweeper_drops_claims_past_their_lease(self) -> None:
        run = a_run()
        claims.claim("action", ["1", "2"], str(run.id), 0)
        EntityClaim.objects.filter(entity_id="1").update(expires_at=timezone.now() - timedelta(seconds=1))

        assert claims.release_expired() == 1
        assert list(EntityClaim.objects.values_list("entity_id", flat=True)) == ["2"]


class TestWritersSideBySide:
    """A batch leaves what another writer holds to it, and the run says so."""

    def test_a_held_entity_is_left_to_its_holder(
        self, offline: None, embedded_store: EmbeddingStore, settings: Any
    ) -> None:
        team = make_team()
        held, free = make_action(team, name="Held elsewhere"), make_action(team, name="Free")
        holder = a_run()
        claims.claim("action", [str(held.pk)], str(holder.id), 0)

        run = run_workflow("action")

        assert run.status == SyncRun.Status.SUCCEEDED
        assert (run.selected, run.inserted, run.held_elsewhere) == (2, 1, 1)
        assert {row.id for row in embedded_store.latest_rows("action")} == {str(free.pk)}
        assert run.versions.get("completes") == [] or run.held_elsewhere  # says nothing of completeness
        assert not EntityClaim.objects.filter(run=run).exists()  # its own released

        claims.release(holder.id)
        again = run_workflow("action")
        assert (again.inserted, again.held_elsewhere) == (1, 0)  # the change waited in the log

    def test_a_failed_batch_releases_its_claims(
        self, llm: Any, embedded_store: EmbeddingStore, settings: Any
    ) -> None:
        from entity_vectors.workflow import run_inline

        make_action(make_team(), name="Fails for the provider")
        llm.fail_when("Fails for the provider", status=500)
        settings.ENTITY_VECTORS_TASK_MAX_RETRIES = 0

        run = run_inline(SyncEntityVectorsInputs(domain="action", delay_between_batches=0))

        assert run.batches_failed == 1
        assert not EntityClaim.objects.exists()
