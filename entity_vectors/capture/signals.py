"""Signals: record ORM changes where triggers are off, and send the fast lane once a change commits."""

from __future__ import annotations

from typing import Any

from django.db import models
from django.db.models.signals import post_delete, post_save

from entity_vectors.capture.changelog import key_of, record_changes
from entity_vectors.capture.fast_lane import kick_after_commit
from entity_vectors.capture.triggers import MIRROR_FIELDS, triggers_supported


def watch_model(domain: str, model: type[models.Model]) -> None:
    """Record a registered model's changes made through the ORM, and kick the fast lane.

    Per model, not for every model: Django gives up its fast (SQL-only) cascade delete for any
    model with a delete receiver, and the host's other models must keep it.
    """

    def on_save(sender: type[Any], instance: Any, **kwargs: Any) -> None:
        if kwargs.get("raw"):
            return  # loaddata
        update_fields = kwargs.get("update_fields")
        if update_fields is not None and set(update_fields) <= set(MIRROR_FIELDS):
            return
        key = key_of(instance.pk)
        if not triggers_supported():
            record_changes(domain, [key])
        kick_after_commit(domain)

    def on_delete(sender: type[Any], instance: Any, **kwargs: Any) -> None:
        key = key_of(instance.pk)
        if not triggers_supported():
            record_changes(domain, [key])
        kick_after_commit(domain)

    uid = f"entity_vectors.{domain}.{model._meta.label_lower}"
    post_save.connect(on_save, sender=model, weak=False, dispatch_uid=f"{uid}.save")
    post_delete.connect(on_delete, sender=model, weak=False, dispatch_uid=f"{uid}.delete")
