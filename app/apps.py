"""The host app: registers its entity configs when Django is ready."""

from __future__ import annotations

from django.apps import AppConfig


class HostAppConfig(AppConfig):
    """Registers the action, cohort and event definition configs."""

    name = "app"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from app.entity_configs import ActionEntityConfig, CohortEntityConfig, EventDefinitionEntityConfig
        from app.logging import configure_structlog
        from entity_vectors import register_entity_config

        configure_structlog()
        register_entity_config(ActionEntityConfig())
        register_entity_config(CohortEntityConfig())
        register_entity_config(EventDefinitionEntityConfig())
