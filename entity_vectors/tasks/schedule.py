"""Beat entries built from the registry: one per domain, each with an expiry, and the sweeper.

`RegistrySchedule` is what `celeryconfig.beat_schedule` is set to: a mapping that reads the
registry when it is read, so `app.conf.beat_schedule` holds one entry per registered domain once
the app is configured, and every scheduler sees them: Celery's default one, django-celery-beat's
`DatabaseScheduler` (which copies them into its tables, editable in the admin), and anything
else that reads the setting. A host's own entries are passed in and win on a name clash.

A Celery configuration that installs this schedule (celeryconfig imports this module) also gets
the start-up check of beat: settings that cannot work are one line each and exit status 2 before
beat reads the schedule, not a traceback from inside Celery's scheduler.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from datetime import timedelta
from typing import Any

from celery.signals import import_modules

from entity_vectors import conf
from entity_vectors.core.registry import EntityConfigRegistry, default_registry
from entity_vectors.tasks.names import BATCH_API_TASK, ENTRY_TASK, FAST_LANE_POLL_TASK, SWEEP_TASK

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


def _options(interval: timedelta, queue: str | None = None) -> dict[str, Any]:
    expires = interval.total_seconds() * EXPIRY_FACTOR
    # `expires` for Celery's schedulers, `expire_seconds` for django-celery-beat's tables.
    return {"queue": queue or conf.queue(), "expires": expires, "expire_seconds": max(int(expires), 1)}


def build_beat_schedule(registry: EntityConfigRegistry | None = None) -> dict[str, dict[str, Any]]:
    """One entry per registered domain, the sweeper, the fast lane's poll (on the fast queue), and
    (with OpenAI) the Batch API jobs' poll.

    A tick carries no embedding version: the run writes the domain's served version (and any
    being backfilled), which lives in the database, so a promotion needs no beat restart.
    """
    registry = registry or default_registry
    entries: dict[str, dict[str, Any]] = {}
    for domain in registry.domains():
        interval = domain_interval(registry, domain)
        entries[f"entity-vectors-sync-{domain}"] = {
            "task": ENTRY_TASK,
            "schedule": interval,
            "kwargs": {"domain": domain},
            "options": _options(interval),
        }
    if conf.summarizer_name() == "openai" or conf.embedder_name() == "openai":
        # Batch API jobs (OpenAI's) are polled; without OpenAI there are none.
        poll = timedelta(seconds=conf.batch_api_poll_seconds())
        entries["entity-vectors-batch-api"] = {
            "task": BATCH_API_TASK,
            "schedule": poll,
            "options": _options(poll),
        }
    if conf.fast_lane() and conf.fast_lane_poll_seconds() > 0:
        # Changes no signal sees (`update()`, raw SQL, cascades) reach the fast lane within seconds.
        every = timedelta(seconds=conf.fast_lane_poll_seconds())
        entries["entity-vectors-fast-lane-poll"] = {
            "task": FAST_LANE_POLL_TASK,
            "schedule": every,
            "options": _options(every, conf.fast_queue()),
        }
    entries["entity-vectors-sweep"] = {
        "task": SWEEP_TASK,
        "schedule": SWEEP_INTERVAL,
        "options": _options(SWEEP_INTERVAL),
    }
    return entries


class RegistrySchedule(Mapping[str, dict[str, Any]]):
    """`beat_schedule`: the registry's entries (built when read, Django set up if need be) plus `extra`."""

    def __init__(self, extra: Mapping[str, dict[str, Any]] | None = None) -> None:
        self._extra = dict(extra or {})

    def _entries(self) -> dict[str, dict[str, Any]]:
        from django.apps import apps

        if not apps.ready:
            import django

            django.setup()
        return {**build_beat_schedule(), **self._extra}

    def __getitem__(self, name: str) -> dict[str, Any]:
        return self._entries()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries())

    def __len__(self) -> int:
        return len(self._entries())

    def __repr__(self) -> str:
        return f"RegistrySchedule({sorted(self)})"


@import_modules.connect(weak=False, dispatch_uid="entity_vectors.tasks.schedule.refuse_bad_settings")
def refuse_bad_settings(sender: Any = None, **_: Any) -> None:
    """Run the system checks in a starting beat (or worker), before it reads the beat schedule.

    Celery sends `import_modules` only when a worker or beat starts; its earlier receivers set
    Django up and import the tasks. That is before beat prints its banner, sends its stdout to its
    logger or builds its scheduler. Connected when the configuration is loaded, so it is in place
    before the signal is sent; a worker checks its pool later (`worker_init`).
    """
    from entity_vectors.conf.startup import refuse_to_start, settings_problems

    refuse_to_start("celery", settings_problems())
