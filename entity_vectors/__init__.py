"""entity-vectors: keep vector embeddings of Django entities in sync in ClickHouse.

Public API; everything else is internal. Submodules that touch Django models are imported
lazily, so `import entity_vectors` works before Django's apps are ready.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from entity_vectors.core.entity_config import EntityConfig
from entity_vectors.core.inputs import SyncEntityVectorsInputs
from entity_vectors.core.registry import get_entity_config, register_entity_config, registered_domains
from entity_vectors.exceptions import (
    DuplicateDomainError,
    EntityVectorsError,
    InvalidInputsError,
    PermanentError,
    TransientError,
    UnknownDomainError,
)
from entity_vectors.store.base import EntityHit

if TYPE_CHECKING:
    from entity_vectors.search.query import search_entities

__all__ = [
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


def __getattr__(name: str) -> Any:
    if name == "search_entities":
        from entity_vectors.search.query import search_entities

        return search_entities
    raise AttributeError(f"module 'entity_vectors' has no attribute {name!r}")
