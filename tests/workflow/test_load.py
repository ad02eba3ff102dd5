"""Loading a batch: every domain's entities with their own rendering."""

from __future__ import annotations

import pytest

from app.models import Cohort
from entity_vectors.store import EmbeddingStore
from tests.conftest import run_workflow
from tests.factories import make_cohort, make_event_definition, make_team
from tests.support.observe import chat_inputs
from tests.support.openai_server import OpenAIServer

pytestmark = pytest.mark.django_db


class TestCohortSize:
    """A cohort's size is a property, not summary input: a recount costs nothing."""

    def test_a_recount_changes_no_summary(self, llm: OpenAIServer, embedded_store: EmbeddingStore) -> None:
        team = make_team()
        cohort = make_cohort(team, name="Weekly actives", count=100)
        run_workflow("cohort")
        llm.reset()

        cohort.refresh_from_db()
        cohort.count = 250
        cohort.save()
        run = run_workflow("cohort")

        assert run.summaries_reused == 1 and llm.chat_requests() == []


class TestCohortsAndEventDefinitions:
    """Every host domain runs through the same workflow."""

    def test_each_domain_is_vectorized_with_its_own_rendering(
        self, llm: OpenAIServer, embedded_store: EmbeddingStore
    ) -> None:
        team = make_team()
        make_cohort(
            team,
            name="Churned payers",
            filters={
                "properties": {
                    "type": "AND",
                    "values": [
                        {"type": "person", "key": "plan", "operator": "exact", "value": "pro"},
                        {
                            "type": "behavioral",
                            "key": "purchase",
                            "value": "performed_event",
                            "negation": True,
                        },
                    ],
                }
            },
        )
        make_event_definition(team, name="purchase", description="Order paid", tags=["revenue"])

        assert run_workflow("cohort").inserted == 1
        assert run_workflow("event_definition").inserted == 1

        inputs = chat_inputs(llm)
        assert any(
            "person property `plan` is `pro` AND did not perform event `purchase`" in text for text in inputs
        )
        assert any("Event `purchase`" in text and "Tags: revenue." in text for text in inputs)
        assert Cohort.objects.get().embedding_version == 1
