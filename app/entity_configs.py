"""The host project's entity configs: actions, cohorts and event definitions."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.db.models import F, Q

from app.models import Action, Cohort, EventDefinition
from app.rendering import render_action, render_cohort, render_event_definition
from entity_vectors import EntityConfig

_SHARED_RULES = (
    "Write at most three sentences of plain text, no lists or markdown. Keep the name exactly as "
    "given, say what it captures and when a product team would use it, and invent nothing that "
    "the definition does not say."
)


def summary_due(start_dt: datetime) -> Q:
    """The seed's selection: approved organizations, unchanged since start_dt, never or re-summarized."""
    return Q(team__organization__is_ai_data_processing_approved=True, updated_at__lte=start_dt) & (
        Q(last_summarized_at__isnull=True)
        | Q(updated_at__gte=F("last_summarized_at"))
        | Q(last_summarized_at=start_dt)
    )


class ActionEntityConfig(EntityConfig[Action]):
    """Actions: named match groups over events."""

    @property
    def domain_name(self) -> str:
        return "action"

    @property
    def model_class(self) -> type[Action]:
        return Action

    def get_queryset_filter(self, start_dt: datetime) -> Q:
        return summary_due(start_dt)

    def get_queryset_ordering(self) -> list[str]:
        return ["id", "team_id", "updated_at"]

    def get_sync_values_fields(self) -> list[str]:
        return ["team_id", "id", "summary", "name", "description"]

    def build_clickhouse_properties(self, entity_dict: dict[str, Any]) -> dict[str, Any]:
        return {"name": entity_dict["name"], "description": entity_dict["description"]}

    def get_entity_id_field(self) -> str:
        return "action_id"

    def describe(self, entity: Action) -> str:
        return render_action(entity.name, entity.description, entity.steps or [])

    def get_summary_prompt(self) -> str:
        return (
            "You summarize an action of a product analytics tool. An action is a named definition "
            "that matches events: any of its match groups matching means the action happened. "
            + _SHARED_RULES
        )


class CohortEntityConfig(EntityConfig[Cohort]):
    """Cohorts: groups of persons by properties and behaviour."""

    @property
    def domain_name(self) -> str:
        return "cohort"

    @property
    def model_class(self) -> type[Cohort]:
        return Cohort

    def get_queryset_filter(self, start_dt: datetime) -> Q:
        return summary_due(start_dt)

    def get_queryset_ordering(self) -> list[str]:
        return ["id", "team_id", "updated_at"]

    def get_sync_values_fields(self) -> list[str]:
        return ["team_id", "id", "summary", "name", "description", "is_static", "count"]

    def build_clickhouse_properties(self, entity_dict: dict[str, Any]) -> dict[str, Any]:
        return {
            "name": entity_dict["name"],
            "description": entity_dict["description"],
            "is_static": entity_dict["is_static"],
            "count": entity_dict["count"],
        }

    def get_entity_id_field(self) -> str:
        return "cohort_id"

    def describe(self, entity: Cohort) -> str:
        return render_cohort(entity.name, entity.description, entity.filters or {}, entity.is_static)

    def get_summary_prompt(self) -> str:
        return (
            "You summarize a cohort of a product analytics tool: a group of persons defined by "
            "person properties and by what they did (or did not do), or a static list. " + _SHARED_RULES
        )


class EventDefinitionEntityConfig(EntityConfig[EventDefinition]):
    """Event definitions: event names with their documentation and tags."""

    @property
    def domain_name(self) -> str:
        return "event_definition"

    @property
    def model_class(self) -> type[EventDefinition]:
        return EventDefinition

    def get_queryset_filter(self, start_dt: datetime) -> Q:
        return summary_due(start_dt)

    def get_queryset_ordering(self) -> list[str]:
        return ["id", "team_id", "updated_at"]

    def get_sync_values_fields(self) -> list[str]:
        return ["team_id", "id", "summary", "name", "description", "tags"]

    def build_clickhouse_properties(self, entity_dict: dict[str, Any]) -> dict[str, Any]:
        return {
            "name": entity_dict["name"],
            "description": entity_dict["description"],
            "tags": entity_dict["tags"],
        }

    def get_entity_id_field(self) -> str:
        return "event_definition_id"

    def describe(self, entity: EventDefinition) -> str:
        return render_event_definition(entity.name, entity.description, entity.tags or [])

    def get_summary_prompt(self) -> str:
        return (
            "You summarize an event definition of a product analytics tool: an event that the "
            "product sends, with its documentation and tags. " + _SHARED_RULES
        )
