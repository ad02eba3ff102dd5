"""Hard deletes reach ClickHouse: a registered entity deleted outright gets its tombstones."""

from __future__ import annotations

from typing import Any

import structlog
from django.db import transaction
from django.db.models.signals import post_delete

from entity_vectors import conf
from entity_vectors.registry import default_registry

log = structlog.get_logger("entity_vectors")


def _send_tombstones(domain: str, keys: list[tuple[int, str]]) -> None:
    # Never fail the user's delete over this: a run's reconcile sweep catches what is missed.
    try:
        if conf.eager_runs():
            from entity_vectors.workflow import tombstone_entities

            tombstone_entities(domain, keys)
        else:
            from entity_vectors.tasks import tombstone_deleted

            tombstone_deleted.delay(domain=domain, keys=[[team_id, entity_id] for team_id, entity_id in keys])
    except Exception as exc:
        log.warning("sync.tombstone_deferred", domain=domain, count=len(keys), error=str(exc))


def tombstone_on_delete(sender: type[Any], instance: Any, **kwargs: Any) -> None:
    """post_delete receiver: after commit, tombstone the entity if it was ever synced."""
    config = default_registry.config_for_model(sender)
    if config is None or (
        getattr(instance, "embedding_last_synced_at", None) is None
        and getattr(instance, "embedding_version", None) is None
    ):
        return  # never written to ClickHouse
    keys = [(int(instance.team_id), str(instance.pk))]
    domain = config.domain_name
    transaction.on_commit(lambda: _send_tombstones(domain, keys))


def watch_deletes(model: type[Any]) -> None:
    """Listen to one registered model's deletes.

    Per model, not for every model: Django gives up its fast (SQL-only) cascade delete for any
    model with a post_delete receiver, and the host's other models must keep it.
    """
    post_delete.connect(
        tombstone_on_delete, sender=model, dispatch_uid=f"entity_vectors.tombstone.{model._meta.label_lower}"
    )
