"""The entity_vectors Django app."""

from __future__ import annotations

from django.apps import AppConfig


class EntityVectorsConfig(AppConfig):
    """Registers the system checks (the hard-delete signal is connected per registered model)."""

    name = "entity_vectors"
    verbose_name = "Entity vectors"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from entity_vectors import checks

        del checks  # imported for its @register side effect
