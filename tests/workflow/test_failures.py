"""An entity that fails K runs in a row is parked, listed, and comes back when it changes."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.core.management.base import CommandError

from entity_vectors.models import EntityFailure
from entity_vectors.store import EmbeddingStore
from tests.conftest import run_command, run_workflow
from tests.factories import make_action, make_team
from tests.support.openai_server import OpenAIServer

pytestmark = pytest.mark.django_db


class TestParking:
    """An entity that fails K runs in a row is parked, listed, and comes back when it changes."""

    def test_parked_after_repeated_failures_and_unparked_by_an_edit(
        self, llm: OpenAIServer, embedded_store: EmbeddingStore, settings: Any
    ) -> None:
        settings.ENTITY_VECTORS_PARK_AFTER = 2
        team = make_team()
        poison = make_action(team, name="Poison", description="POISON-PILL")
        make_action(team, name="Healthy")
        llm.fail_when("POISON-PILL", status=400, path="/chat/completions")

        run_workflow("action")
        second = run_workflow("action")

        assert second.summary_failures == 1
        failure = EntityFailure.objects.get(entity_id=str(poison.pk))
        assert failure.parked_at is not None and failure.failures == 2 and "400" in failure.last_error
        llm.reset()
        third = run_workflow("action")
        assert third.parked == 1 and llm.chat_requests() == []  # parked: not sent again
        out, _ = run_command("entity_vectors_status", "--domain", "action")
        assert "parked 1" in out and str(poison.pk) in out

        poison.refresh_from_db()
        poison.description = "fixed now"
        poison.save()
        fourth = run_workflow("action")
        assert fourth.summarized == 1 and not EntityFailure.objects.exists()

    def test_a_success_clears_the_count_so_only_failures_in_a_row_park(
        self, llm: OpenAIServer, embedded_store: EmbeddingStore, settings: Any
    ) -> None:
        settings.ENTITY_VECTORS_PARK_AFTER = 2
        flaky = make_action(make_team(), name="Flaky", description="FLAKY-ONE")
        llm.fail_when("FLAKY-ONE", status=400, path="/chat/completions")
        assert run_workflow("action").summary_failures == 1
        assert EntityFailure.objects.get(entity_id=str(flaky.pk)).failures == 1

        llm.reset()
        assert run_workflow("action").summarized == 1
        assert not EntityFailure.objects.exists()  # the success cleared the count

        flaky.refresh_from_db()
        flaky.description = "FLAKY-ONE again"
        flaky.save()
        llm.fail_when("FLAKY-ONE", status=400, path="/chat/completions")
        assert run_workflow("action").summary_failures == 1
        failure = EntityFailure.objects.get(entity_id=str(flaky.pk))
        assert failure.failures == 1 and failure.parked_at is None  # one failure since the success

    def test_the_unpark_command(self, offline: None, embedded_store: EmbeddingStore) -> None:
        action = make_action(make_team(), name="Parked by hand")
        EntityFailure.objects.create(
            domain="action",
            entity_id=str(action.pk),
            failures=3,
            last_failed_at="2026-01-01T00:00:00Z",
            parked_at="2026-01-01T00:00:00Z",
        )

        with pytest.raises(CommandError, match="give --id ID"):
            run_command("entity_vectors_unpark", "--domain", "action")
        with pytest.raises(CommandError, match="not parked in action: 999"):
            run_command("entity_vectors_unpark", "--domain", "action", "--id", "999")
        out, _ = run_command("entity_vectors_unpark", "--domain", "action", "--all")

        assert "unparked 1 entities" in out and not EntityFailure.objects.exists()
        assert json.dumps(run_workflow("action").counts())  # the next run takes it
