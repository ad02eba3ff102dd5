"""The entity_vectors Django app."""

from __future__ import annotations

from typing import Any

from django.apps import AppConfig
from django.db.models.signals import post_migrate


def _install_change_triggers(sender: Any, using: str = "default", **kwargs: Any) -> None:
    """After migrations, every registered model's table gets its change-capture triggers."""
    from django.db import connections

    from entity_vectors.capture.triggers import forget_installed, install_triggers
    from entity_vectors.core.registry import default_registry

    if using != "default" or connections[using].vendor not in ("postgresql", "sqlite"):
        return
    forget_installed()  # a rebuilt database (tests) has none of the triggers this process made
    tables = set(connections[using].introspection.table_names())
    for config in default_registry.configs():
        if config.model_class._meta.db_table in tables:
            install_triggers(config.domain_name, config.model_class)


class EntityVectorsConfig(AppConfig):
    """Registers the system checks and the trigger installation after migrations, and redacts the
    libraries' loggers."""

    name = "entity_vectors"
    verbose_name = "Entity vectors"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from entity_vectors import checks, tasks
        from entity_vectors.conf.redaction import redact_library_loggers

        del checks  # imported for its @register side effect
        tasks.load()  # every task registered, in every process (Celery's configuration imports less)
        # In every process of every host: whatever its LOGGING says, no URL password is printed.
        redact_library_loggers()
        post_migrate.connect(_install_change_triggers, dispatch_uid="entity_vectors.install_triggers")
