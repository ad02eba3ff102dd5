"""A run's liveness: counters bumped by its stages, its lease extended; and what it waits for."""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.db.models import F, Value
from django.db.models.functions import Greatest
from django.utils import timezone

from entity_vectors import conf
from entity_vectors.models import SyncRun, SyncRunBatch

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


# What a wait's reason repeats of an error: enough to recognise it on one line.
REASON_CHARS = 160
DELAY = "delay"
RETRY = "retry"


@dataclass(frozen=True)
class RunWait:
    """A run that is not at work right now: which batch it waits to start, for how long, and why.

    `batch` is the batch's index (0-based); `seconds` None when the wait has no known end (a
    distributed batch's retry, which Celery schedules).
    """

    batch: int
    total: int
    kind: str
    reason: str
    seconds: float | None = None
    attempt: int = 0
    attempts: int = 0

    @property
    def key(self) -> tuple[int, str]:
        """The same wait, whatever its countdown says (a log prints it once)."""
        return (self.batch, self.kind)

    def describe(self) -> str:
        """One line: "batch 3/14 starts in 48 s: delay_between_batches"."""
        name = f"batch {self.batch + 1}/{self.total}"
        when = "" if self.seconds is None else f" in {math.ceil(max(self.seconds, 0))} s"
        if self.kind == DELAY:
            return f"{name} starts{when}: {self.reason}"
        tries = f" (attempt {self.attempt} of {self.attempts})" if self.attempts else ""
        return f"{name} is retried{when}{tries} after {_short(self.reason)}"


def _short(text: str) -> str:
    line = " ".join(text.split())
    return line if len(line) <= REASON_CHARS else line[: REASON_CHARS - 3] + "..."


def run_wait(run: SyncRun, now: datetime | None = None) -> RunWait | None:
    """What a running run waits for, read from its batches: the first batch not done yet, if it may
    not start yet (delay_between_batches) or failed an attempt and waits for its retry; else None.

    Batches start in index order, each no earlier than its `not_before`: when the first pending one
    may not start yet, none may.
    """
    if run.status != SyncRun.Status.RUNNING:
        return None
    now = now or timezone.now()
    first = (
        SyncRunBatch.objects.filter(run_id=uuid.UUID(str(run.pk)), status=SyncRunBatch.Status.PENDING)
        .order_by("index")
        .values("index", "not_before", "error", "attempts")
        .first()
    )
    if first is None:
        return None
    total = run.batches_total
    if first["not_before"] is not None and first["not_before"] > now:
        seconds = (first["not_before"] - now).total_seconds()
        return RunWait(first["index"], total, DELAY, "delay_between_batches", seconds)
    if first["error"] and first["attempts"]:
        return RunWait(first["index"], total, RETRY, first["error"])
    return None
