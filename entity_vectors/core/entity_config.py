"""The strategy: one `EntityConfig` subclass describes how to vectorize one entity type."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any, Generic, TypeVar

from django.core.exceptions import FieldDoesNotExist
from django.db import models
from django.db.models import Q, QuerySet

from entity_vectors.providers.base import current_summarization

ModelT = TypeVar("ModelT", bound=models.Model)

# Fields the workflow itself reads and writes on every entity (see VectorizedModel).
TRACKING_FIELDS = ("summary", "last_summarized_at", "embedding_last_synced_at", "embedding_version")
_NOT_DESCRIBED = frozenset({"id", "pk", "team_id", "summary", *TRACKING_FIELDS})


class EntityConfig(ABC, Generic[ModelT]):
    """How one entity type is selected, summarized and written to ClickHouse.

    The abstract members are the seed's; every other member has a default, so a config written
    the seed's way works unchanged and a richer one overrides what it needs.
    """

    @property
    @abstractmethod
    def domain_name(self) -> str:
        """The domain this config is registered under, e.g. `action`."""

    @property
    @abstractmethod
    def model_class(self) -> type[ModelT]:
        """The Django model of the entities."""

    @abstractmethod
    def get_queryset_filter(self, start_dt: datetime) -> Q:
        """Entities whose summary is due as of `start_dt` (consent, age and change filters)."""

    @abstractmethod
    def get_queryset_ordering(self) -> list[str]:
        """The order entities of a batch are loaded and summarized in."""

    async def batch_summarize(
        self, entities: list[ModelT], start_dt: str, properties: dict[str, Any]
    ) -> list[str | BaseException]:
        """One summary per entity, same order; a failure is returned in its slot, never raised.

        The default asks the run's summarizer to summarize each entity's `describe()` text
        under `get_summary_prompt()`.
        """
        context = current_summarization()
        texts = [context.descriptions.get(entity.pk) or self.describe(entity) for entity in entities]
        return await context.summarizer.summarize(texts, self.get_summary_prompt())

    @abstractmethod
    def get_sync_values_fields(self) -> list[str]:
        """The fields read (with `.values()`) to build ClickHouse rows."""

    @abstractmethod
    def build_clickhouse_properties(self, entity_dict: dict[str, Any]) -> dict[str, Any]:
        """The JSON properties stored beside the vector, from one `.values()` dict."""

    @abstractmethod
    def get_entity_id_field(self) -> str:
        """The property name under which the entity's id is stored, e.g. `action_id`."""

    # -- optional members, with defaults -------------------------------------------------------

    def describe(self, entity: ModelT) -> str:
        """The deterministic natural-language description: the LLM's input, the template's output.

        The default lists the sync fields other than ids and tracking fields.
        """
        label = str(self.model_class._meta.verbose_name)
        parts: list[str] = []
        for name in self.get_sync_values_fields():
            if name in _NOT_DESCRIBED:
                continue
            value = getattr(entity, name, None)
            if value not in (None, "", [], {}):
                parts.append(f"{name.replace('_', ' ')}: {value}")
        return f"{label.capitalize()}. " + ". ".join(parts) if parts else label.capitalize()

    def get_summary_prompt(self) -> str:
        """The system prompt the chat model summarizes with."""
        label = str(self.model_class._meta.verbose_name)
        return (
            f"You describe a {label} of a product analytics tool so that an AI assistant can find it "
            f"by meaning. Write at most three sentences of plain text. Keep the {label}'s name "
            "exactly as given, say what it captures and when someone would use it, and invent nothing."
        )

    def get_queryset(self) -> QuerySet[ModelT]:
        """The base queryset entities are loaded from (override to add select_related)."""
        return self.model_class._default_manager.all()

    def get_consent_filter(self) -> Q:
        """Entities whose data may be sent to a provider (organization approval by default)."""
        return Q(team__organization__is_ai_data_processing_approved=True)

    def get_team_consent_filter(self) -> Q | None:
        """Teams whose data may be sent to a provider (search queries included), as a filter on the
        team model; None if that cannot be told from the team alone.

        The default derives it from `get_consent_filter()` when every condition there is on the
        entity's team (`team__...`).
        """
        return _strip_team_prefix(self.get_consent_filter())

    def get_budget_owner_field(self) -> str | None:
        """The lookup naming whose monthly budget an entity's provider calls count against.

        Its team's organization by default (`team__organization_id`), else its team; None: no budget.
        """
        team = self.model_class._meta.get_field("team").related_model
        try:
            team._meta.get_field("organization")  # type: ignore[union-attr]
        except (FieldDoesNotExist, AttributeError):
            return "team_id"
        return "team__organization_id"

    def get_deleted_filter(self) -> Q | None:
        """Soft-deleted entities (a `deleted` flag by default), or None if the model has none."""
        try:
            self.model_class._meta.get_field("deleted")
        except FieldDoesNotExist:
            return None
        return Q(deleted=True)

    @property
    def schedule_interval(self) -> timedelta | None:
        """Beat interval for this domain; None means the setting (30 minutes by default)."""
        return None


def consenting_teams(config: EntityConfig[Any], team_ids: Iterable[int]) -> set[int] | None:
    """Which of these teams may have their data sent to a provider now, in one query on the team
    table; None if the config's consent cannot be told from the team alone."""
    condition = config.get_team_consent_filter()
    team_model = config.model_class._meta.get_field("team").related_model
    if condition is None or team_model is None or isinstance(team_model, str):
        return None
    teams = team_model._default_manager.filter(pk__in=sorted(set(team_ids))).filter(condition)
    return set(teams.values_list("pk", flat=True))


def consenting_entities(config: EntityConfig[Any], team_of: dict[Any, int]) -> set[Any]:
    """Which of these entities (primary key -> team) may have their data sent to a provider now:
    one indexed query, on the team table where the consent is a team's."""
    teams = consenting_teams(config, team_of.values())
    if teams is not None:
        return {pk for pk, team in team_of.items() if team in teams}
    consented = config.get_queryset().filter(pk__in=list(team_of)).filter(config.get_consent_filter())
    return set(consented.values_list("pk", flat=True))


def _strip_team_prefix(condition: Q) -> Q | None:
    """`condition` with every `team__x` lookup as `x`; None if a lookup is not on the team."""
    children: list[Any] = []
    for child in condition.children:
        if isinstance(child, Q):
            stripped = _strip_team_prefix(child)
            if stripped is None:
                return None
            children.append(stripped)
        elif isinstance(child, tuple) and isinstance(child[0], str) and child[0].startswith("team__"):
            children.append((child[0][len("team__") :], child[1]))
        else:
            return None
    result = Q(*children)
    result.connector = condition.connector
    result.negated = condition.negated
    return result
