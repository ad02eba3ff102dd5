"""A domain added the seed's way (one config, one registration) runs through the same workflow."""

from __future__ import annotations

import pytest

from entity_vectors import (
    register_entity_config,
    registered_domains,
    search_entities,
)
from entity_vectors.store import EmbeddingStore
from tests.conftest import run_workflow
from tests.factories import make_team
from tests.support.openai_server import OpenAIServer
from tests.testapp.configs import NotebookEntityConfig
from tests.testapp.models import Notebook


@pytest.mark.django_db
class TestSeedStyleDomain:
    """One config and one register_entity_config call: the workflow serves the new domain."""

    def test_a_domain_added_the_seeds_way_is_vectorized_and_searchable(
        self, restore_registry: None, llm: OpenAIServer, embedded_store: EmbeddingStore
    ) -> None:
        register_entity_config(NotebookEntityConfig())
        team = make_team()
        other = make_team()
        retention = Notebook.objects.create(
            team=team, name="Retention deep dive", description="Weekly retention curves"
        )
        Notebook.objects.create(
            team=team, name="Pricing experiment", description="A/B test of the pricing page"
        )
        Notebook.objects.create(team=other, name="Retention deep dive", description="Someone else's notebook")
        Notebook.objects.create(
            team=make_team(approved=False), name="Private notebook", description="PRIVATE"
        )

        run = run_workflow("notebook")

        assert run.status == "succeeded"
        assert run.inserted == 3
        assert len(llm.chat_requests()) == 3
        hits = search_entities("notebook", team.id, "retention curves")
        assert hits[0].id == str(retention.pk)
        assert hits[0].properties["notebook_id"] == retention.pk
        assert hits[0].properties["name"] == "Retention deep dive"
        assert {hit.team_id for hit in hits} == {team.id}
        retention.refresh_from_db()
        assert retention.summary == hits[0].text
        assert "notebook" in registered_domains()
