"""A run's liveness: counters bumped by its stages, and its lease extended."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from django.db.models import F, Value
from django.db.models.functions import Greatest
from django.utils import timezone

from entity_vectors import conf
from entity_vectors.models import SyncRun

# A batch that starts extends the lease only if less than this share of it is left: the batch
# still finds most of a lease ahead of it (54 of 60 minutes by default, where the longest task
# may take 31: `checks` keeps the lease above that), and a run's batches do not all write its
# row, which they would otherwise do one after the other, each waiting for the last one's lock.
LEASE_RENEWAL_SHARE = 0.9


def progress(run_id: Any, **increments: int) -> bool:
    """Bump run counters and extend the run's lease: it is alive. False if it is not running."""
    updates: dict[str, Any] = {name: F(name) + value for name, value in increments.items()}
    updates["lease_expires_at"] = Greatest(
        F("lease_expires_at"), Value(timezone.now() + timedelta(seconds=conf.run_lease_seconds()))
    )
    return bool(SyncRun.objects.filter(pk=run_id, status=SyncRun.Status.RUNNING).update(**updates))


def lease_runs_low(lease_expires_at: datetime | None, now: datetime) -> bool:
    """Whether less than LEASE_RENEWAL_SHARE of a full lease is left at `now`."""
    left = conf.run_lease_seconds() * LEASE_RENEWAL_SHARE
    return lease_expires_at is None or (lease_expires_at - now).total_seconds() < left
