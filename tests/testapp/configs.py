"""The test app's entity config, written the seed's way (a notebook per row)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.db.models import F, Q

from entity_vectors import (
    EntityConfig,
)
from entity_vectors.providers import summarize_texts
from tests.testapp.models import Notebook


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
