"""The registry of entity configs: explicit, unknown and duplicate domains are clear errors."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest
from django.db.models import Q

from app.models import Action
from entity_vectors import (
    EntityConfig,
    UnknownDomainError,
    get_entity_config,
)
from entity_vectors.core.registry import EntityConfigRegistry
from entity_vectors.exceptions import DuplicateDomainError


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
