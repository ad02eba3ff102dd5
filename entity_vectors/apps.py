"""The entity_vectors Django app."""

from __future__ import annotations

from django.apps import AppConfig


class EntityVectorsConfig(AppConfig):
    """Connects the hard-delete signal and registers the system checks."""

    name = "entity_vectors"
    verbose_name = "Entity vectors"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from entity_vectors import checks, signals

        signals.connect()
        del checks  # imported for its @register side effect
