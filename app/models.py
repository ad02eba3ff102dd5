"""The host models: organizations, teams, and the entities that get vectorized."""

from __future__ import annotations

import hashlib
import secrets

from django.db import models

from entity_vectors.models import VectorizedModel

TOKEN_PREFIX = "ev_"


def new_api_token() -> str:
    """A random per-team API token."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_api_token(token: str) -> str:
    """What is stored of a token: its SHA-256 (a token is random, so no salt or stretching is needed)."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


class Organization(models.Model):
    """A customer; `is_ai_data_processing_approved` gates every provider call for its data."""

    name = models.CharField(max_length=200)
    is_ai_data_processing_approved = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return self.name


class Team(models.Model):
    """A project inside an organization; searches are scoped to one team."""

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="teams")
    name = models.CharField(max_length=200)
    # Only the token's hash is stored (and its first characters, to recognise it): the token itself
    # is shown once, when it is issued (`manage.py team_api_token`).
    api_token_hash = models.CharField(max_length=64, unique=True, editable=False)
    api_token_hint = models.CharField(max_length=16, blank=True, default="", editable=False)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return self.name

    def save(self, *args: object, **kwargs: object) -> None:
        """A new team gets a token (its value is lost unless `rotate_api_token` is called)."""
        if not self.api_token_hash:
            self._set_token(new_api_token())
        super().save(*args, **kwargs)  # type: ignore[arg-type]

    def _set_token(self, token: str) -> None:
        self.api_token_hash = hash_api_token(token)
        self.api_token_hint = token[:10]

    def rotate_api_token(self) -> str:
        """Issue a new token (the old one stops working at once) and return it; it is not stored."""
        token = new_api_token()
        self._set_token(token)
        self.save(update_fields=["api_token_hash", "api_token_hint"])
        return token


class Action(VectorizedModel):
    """A named set of match groups over events; any group matching means the action happened.

    `steps` is a list of groups, each a dict with optional keys: `event`, `url` and
    `url_matching` (contains, exact, regex), `text` and `text_matching`, `selector`, `href` and
    `href_matching`, and `properties` (a list of {key, value, operator, type} filters).
    """

    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="actions")
    name = models.CharField(max_length=400, blank=True, default="")
    description = models.TextField(blank=True, default="")
    steps = models.JSONField(default=list, blank=True)
    deleted = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True, db_index=True)

    def __str__(self) -> str:
        return self.name or f"action {self.pk}"


class Cohort(VectorizedModel):
    """A group of persons defined by a tree of property and behavioural filters, or a static list.

    `filters` is {"properties": group}, where a group is {"type": "AND"|"OR", "values": [...]}
    and each value is a group or a filter: {"type": "person", "key", "operator", "value"},
    {"type": "behavioral", "key" (event), "value" (performed_event, performed_event_multiple,
    performed_event_first_time), "time_value", "time_interval", "operator", "operator_value"},
    or {"type": "cohort", "value" (cohort id)}; a filter may carry "negation": true.
    """

    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="cohorts")
    name = models.CharField(max_length=400, blank=True, default="")
    description = models.TextField(blank=True, default="")
    filters = models.JSONField(default=dict, blank=True)
    is_static = models.BooleanField(default=False)
    count = models.PositiveIntegerField(null=True, blank=True)
    deleted = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True, db_index=True)

    def __str__(self) -> str:
        return self.name or f"cohort {self.pk}"


class EventDefinition(VectorizedModel):
    """An event name seen in a team's data, with its documentation."""

    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="event_definitions")
    name = models.CharField(max_length=400)
    description = models.TextField(blank=True, default="")
    tags = models.JSONField(default=list, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True, db_index=True)

    def __str__(self) -> str:
        return self.name
