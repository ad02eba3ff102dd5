"""Beat entries built from the registry: one per domain, each with an expiry."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from celery.beat import PersistentScheduler

from entity_vectors import conf
from entity_vectors.registry import EntityConfigRegistry, default_registry

SWEEP_INTERVAL = timedelta(minutes=5)
# A tick that waited in the queue longer than 1.5 intervals is dropped: the next one will do,
# and a backlog (workers down for a day) never turns into a pile of runs.
EXPIRY_FACTOR = 1.5


def domain_interval(registry: EntityConfigRegistry, domain: str) -> timedelta:
    """A domain's interval: ENTITY_VECTORS_SCHEDULES, else its config's, else the common setting."""
    if domain in conf.schedules():
        return timedelta(seconds=conf.schedules()[domain])
    configured = registry.get(domain).schedule_interval
    if configured is not None:
        return configured
    return timedelta(seconds=conf.schedule_seconds())


def build_beat_schedule(registry: EntityConfigRegistry | None = None) -> dict[str, dict[str, Any]]:
    """One entry per registered domain, plus the sweeper that closes abandoned runs."""
    registry = registry or default_registry
    entries: dict[str, dict[str, Any]] = {}
    for domain in registry.domains():
        interval = domain_interval(registry, domain)
        entries[f"entity-vectors-sync-{domain}"] = {
            "task": "ai-sync-entity-vectors",
            "schedule": interval,
            "kwargs": {"domain": domain, "embedding_version": conf.embedding_version()},
            "options": {"queue": conf.queue(), "expires": interval.total_seconds() * EXPIRY_FACTOR},
        }
    entries["entity-vectors-sweep"] = {
        "task": "ai-sync-entity-vectors-sweep",
        "schedule": SWEEP_INTERVAL,
        "options": {"queue": conf.queue(), "expires": SWEEP_INTERVAL.total_seconds() * EXPIRY_FACTOR},
    }
    return entries


class RegistryScheduler(PersistentScheduler):
    """Beat's scheduler with the registry's entries merged in once Django's apps are ready."""

    def setup_schedule(self) -> None:
        """Add the registry's entries to the configured beat_schedule, then load as usual."""
        import os

        import django
        from django.apps import apps

        filename = str(getattr(self, "schedule_filename", "") or "celerybeat-schedule")
        os.makedirs(os.path.dirname(os.path.abspath(filename)), exist_ok=True)
        if not apps.ready:
            django.setup()
        self.app.conf.beat_schedule = {**build_beat_schedule(), **(self.app.conf.beat_schedule or {})}
        super().setup_schedule()
