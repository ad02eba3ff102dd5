"""The public surface: names, registry, inputs, and a new domain added the seed's way."""

from __future__ import annotations

import entity_vectors
from app.models import Action
from entity_vectors import (
    get_entity_config,
    registered_domains,
)


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


