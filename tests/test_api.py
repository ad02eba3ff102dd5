"""The public surface: names, registry, inputs, and a new domain added the seed's way."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest
from django.db.models import F, Q

import entity_vectors
from app.models import Action
from entity_vectors import (
    EntityConfig,
    InvalidInputsError,
    SyncEntityVectorsInputs,
    UnknownDomainError,
    get_entity_config,
    register_entity_config,
    registered_domains,
    search_entities,
)
from entity_vectors.exceptions import DuplicateDomainError
from entity_vectors.providers import summarize_texts
from entity_vectors.registry import EntityConfigRegistry
from entity_vectors.store import EmbeddingStore
from tests.conftest import run_workflow
from tests.factories import make_team
from tests.support.openai_server import OpenAIServer
from tests.testapp.models import Notebook


class TestPublicNames:
    """`entity_vectors` exports exactly its public API."""

    def test_all_lists_the_public_api(self) -> None:
        assert sorted(entity_vectors.__all__) == [
            "DuplicateDomainError",
            "EntityConfig",
            "EntityHit",
            "EntityVectorsError",
            "InvalidInputsError",
            "PermanentError",
            "SyncEntityVectorsInputs",
            "TransientError",
            "UnknownDomainError",
            "get_entity_config",
            "register_entity_config",
            "registered_domains",
            "search_entities",
        ]
        for name in entity_vectors.__all__:
            assert getattr(entity_vectors, name) is not None

    def test_the_host_registers_its_three_domains(self) -> None:
        assert registered_domains() == ["action", "cohort", "event_definition"]
        assert get_entity_config("action").model_class is Action


class _OtherActionConfig(EntityConfig[Action]):
    """A second config claiming the `action` domain."""

    @property
    def domain_name(self) -> str:
        return "action"

    @property
    def model_class(self) -> type[Action]:
        return Action

    def get_queryset_filter(self, start_dt: datetime) -> Q:
        return Q()

    def get_queryset_ordering(self) -> list[str]:
        return ["id"]

    def get_sync_values_fields(self) -> list[str]:
        return ["team_id", "id", "summary"]

    def build_clickhouse_properties(self, entity_dict: dict[str, Any]) -> dict[str, Any]:
        return {}

    def get_entity_id_field(self) -> str:
        return "action_id"


class TestRegistry:
    """Unknown key: an error listing what exists. Duplicate: an error."""

    def test_unknown_domain_names_the_registered_ones(self) -> None:
        with pytest.raises(UnknownDomainError) as caught:
            get_entity_config("dashboard")
        assert (
            str(caught.value)
            == "unknown domain 'dashboard'; registered domains: action, cohort, event_definition"
        )
        assert isinstance(caught.value, ValueError)

    def test_a_different_config_under_a_taken_domain_is_refused(self) -> None:
        registry = EntityConfigRegistry()
        registry.register(get_entity_config("action"))
        with pytest.raises(DuplicateDomainError, match="already registered to ActionEntityConfig"):
            registry.register(_OtherActionConfig())

    def test_registering_the_same_config_again_is_harmless(self) -> None:
        registry = EntityConfigRegistry()
        config = get_entity_config("cohort")
        assert registry.register(config) is config
        assert registry.register(type(config)()) is config
        assert registry.domains() == ["cohort"]

    @pytest.mark.parametrize(
        "domain",
        [
            pytest.param("", id="empty"),
            pytest.param("Has Space", id="space"),
            pytest.param("9lives", id="digit-first"),
        ],
    )
    def test_a_malformed_domain_name_is_refused(self, domain: str) -> None:
        class Named(_OtherActionConfig):
            @property
            def domain_name(self) -> str:
                return domain

        with pytest.raises(ValueError, match="domain_name"):
            EntityConfigRegistry().register(Named())

    def test_a_model_without_tracking_fields_is_refused(self) -> None:
        from app.models import Team

        class TeamConfig(_OtherActionConfig):
            @property
            def domain_name(self) -> str:
                return "team"

            @property
            def model_class(self) -> type[Any]:
                return Team

        with pytest.raises(ValueError, match="lacks summary, last_summarized_at"):
            EntityConfigRegistry().register(TeamConfig())


class TestInputs:
    """SyncEntityVectorsInputs: the seed's fields and defaults, validated when built."""

    def test_defaults_are_the_seeds(self) -> None:
        inputs = SyncEntityVectorsInputs(domain="action")
        assert inputs.as_dict() == {
            "domain": "action",
            "start_dt": None,
            "summarize_batch_size": 96,
            "embed_batch_size": 96,
            "max_parallel_requests": 5,
            "insert_batch_size": 10000,
            "delay_between_batches": 60,
            "embedding_version": 1,
        }

    @pytest.mark.parametrize(
        ("field", "value", "message"),
        [
            pytest.param(
                "summarize_batch_size", 0, "summarize_batch_size=0: must be at least 1", id="zero-batch"
            ),
            pytest.param(
                "embed_batch_size", -5, "embed_batch_size=-5: must be at least 1", id="negative-embed"
            ),
            pytest.param(
                "embed_batch_size", 5000, "embed_batch_size=5000: must be at most 2048", id="embed-over-api"
            ),
            pytest.param(
                "max_parallel_requests", 0, "max_parallel_requests=0: must be at least 1", id="no-parallel"
            ),
            pytest.param(
                "insert_batch_size", "100", "insert_batch_size='100': must be a whole number", id="string"
            ),
            pytest.param(
                "insert_batch_size", True, "insert_batch_size=True: must be a whole number", id="bool"
            ),
            pytest.param(
                "embedding_version", 0, "embedding_version=0: must be at least 1", id="version-zero"
            ),
            pytest.param(
                "delay_between_batches",
                -1,
                "delay_between_batches=-1: must be between 0 and 86400",
                id="negative-delay",
            ),
            pytest.param(
                "start_dt", "yesterday", "start_dt='yesterday': not an ISO 8601 date-time", id="bad-date"
            ),
            pytest.param(
                "start_dt",
                "2999-01-01T00:00:00Z",
                "start_dt='2999-01-01T00:00:00Z': is in the future",
                id="future",
            ),
        ],
    )
    def test_an_invalid_field_names_the_field_and_value(self, field: str, value: Any, message: str) -> None:
        with pytest.raises(InvalidInputsError) as caught:
            SyncEntityVectorsInputs(domain="action", **{field: value})
        assert str(caught.value).startswith(message)
        assert caught.value.field == field
        assert isinstance(caught.value, ValueError)

    def test_unknown_domain_fails_when_built(self) -> None:
        with pytest.raises(UnknownDomainError, match="registered domains: action, cohort, event_definition"):
            SyncEntityVectorsInputs(domain="dashboards")

    def test_unknown_field_from_json_is_named(self) -> None:
        with pytest.raises(InvalidInputsError, match="batchsize=10: unknown field"):
            SyncEntityVectorsInputs.from_kwargs(domain="action", batchsize=10)

    def test_start_dt_accepts_iso_8601_with_or_without_zone(self) -> None:
        naive = SyncEntityVectorsInputs(domain="action", start_dt="2025-01-15T00:00:00")
        zoned = SyncEntityVectorsInputs(domain="action", start_dt="2025-01-15T01:00:00+01:00")
        assert naive.resolved_start_dt() == zoned.resolved_start_dt()
        assert naive.resolved_start_dt().isoformat() == "2025-01-15T00:00:00+00:00"


# -- a new domain, written exactly the seed's way -------------------------------------------


async def abatch_summarize_notebooks(
    entities: list[Notebook], start_dt: str, properties: dict[str, Any]
) -> list[str | BaseException]:
    """The host's own summarization function, here through the run's summarizer."""
    texts = [f"Notebook {entity.name}. {entity.description}" for entity in entities]
    return await summarize_texts(texts, "Summarize this notebook in at most three sentences.")


class NotebookEntityConfig(EntityConfig[Notebook]):
    @property
    def domain_name(self) -> str:
        return "notebook"

    @property
    def model_class(self) -> type[Notebook]:
        return Notebook

    def get_queryset_filter(self, start_dt: datetime) -> Q:
        return Q(
            team__organization__is_ai_data_processing_approved=True,
            updated_at__lte=start_dt,
        ) & (
            Q(last_summarized_at__isnull=True)
            | Q(updated_at__gte=F("last_summarized_at"))
            | Q(last_summarized_at=start_dt)
        )

    def get_queryset_ordering(self) -> list[str]:
        return ["id", "team_id", "updated_at"]

    async def batch_summarize(
        self, entities: list[Notebook], start_dt: str, properties: dict[str, Any]
    ) -> list[str | BaseException]:
        return await abatch_summarize_notebooks(entities, start_dt=start_dt, properties=properties)

    def get_sync_values_fields(self) -> list[str]:
        return ["team_id", "id", "summary", "name", "description"]

    def build_clickhouse_properties(self, entity_dict: dict[str, Any]) -> dict[str, Any]:
        return {
            "name": entity_dict["name"],
            "description": entity_dict["description"],
        }

    def get_entity_id_field(self) -> str:
        return "notebook_id"


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
