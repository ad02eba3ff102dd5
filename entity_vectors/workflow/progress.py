"""A run's liveness: counters bumped by its stages, and the lease of its lock extended."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.db.models import F, Value
from django.db.models.functions import Greatest
from django.utils import timezone

from entity_vectors import conf
from entity_vectors.models import SyncRun


def progress(run_id: Any, **increments: int) -> None:
    """Bump run counters and extend the lock's lease: the run is alive."""
    updates: dict[str, Any] = {name: F(name) + value for name, value in increments.items()}
    updates["lease_expires_at"] = Greatest(
        F("lease_expires_at"), Value(timezone.now() + timedelta(seconds=conf.run_lease_seconds()))
    )
    SyncRun.objects.filter(pk=run_id, status=SyncRun.Status.RUNNING).update(**updates)
