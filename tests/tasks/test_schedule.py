"""The beat schedule: one entry per registered domain, with an expiry, and the sweeper."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from app.celery import app as celery_app
from entity_vectors import register_entity_config
from entity_vectors.tasks.schedule import RegistrySchedule, build_beat_schedule

pytestmark = pytest.mark.django_db


class TestScheduleInTheConfiguration:
    """The beat entries are in the app's configuration, for every scheduler to see."""

    def test_the_configured_app_has_one_entry_per_domain(self) -> None:
        schedule = celery_app.conf.beat_schedule

        assert isinstance(schedule, RegistrySchedule)
        assert set(schedule) == {
            "entity-vectors-sync-action",
            "entity-vectors-sync-cohort",
            "entity-vectors-sync-event_definition",
            "entity-vectors-sweep",
        }
        assert dict(schedule)["entity-vectors-sync-cohort"]["kwargs"] == {"domain": "cohort"}

    @pytest.mark.django_db(transaction=True)  # the scheduler closes database connections
    def test_django_celery_beat_copies_them_into_its_tables(self, settings: Any) -> None:
        from django_celery_beat.models import PeriodicTask
        from django_celery_beat.schedulers import DatabaseScheduler

        DatabaseScheduler(app=celery_app, lazy=False)

        names = set(PeriodicTask.objects.values_list("name", flat=True))
        assert {"entity-vectors-sync-action", "entity-vectors-sync-cohort", "entity-vectors-sweep"} <= names
        entry = PeriodicTask.objects.get(name="entity-vectors-sync-action")
        assert entry.task == "ai-sync-entity-vectors" and entry.queue == "max-ai-task-queue"
        assert entry.expire_seconds == 2700


class TestBeatSchedule:
    """One beat entry per registered domain, each with an expiry."""

    def test_one_entry_per_domain_with_expiry(self, settings: Any) -> None:
        settings.ENTITY_VECTORS_SCHEDULES = {"cohort": 3600}

        schedule = build_beat_schedule()

        assert set(schedule) == {
            "entity-vectors-sync-action",
            "entity-vectors-sync-cohort",
            "entity-vectors-sync-event_definition",
            "entity-vectors-sweep",
        }
        action = schedule["entity-vectors-sync-action"]
        assert action["task"] == "ai-sync-entity-vectors"
        assert action["kwargs"] == {"domain": "action"}  # the run writes the served version
        assert action["schedule"] == timedelta(minutes=30)
        assert action["options"] == {"queue": "max-ai-task-queue", "expires": 2700.0, "expire_seconds": 2700}
        assert schedule["entity-vectors-sync-cohort"]["schedule"] == timedelta(hours=1)

    def test_a_new_domain_gets_its_entry_and_a_config_may_set_its_interval(
        self, restore_registry: None
    ) -> None:
        from tests.testapp.configs import NotebookEntityConfig

        class Hourly(NotebookEntityConfig):
            @property
            def schedule_interval(self) -> timedelta:
                return timedelta(hours=2)

        register_entity_config(Hourly())

        entry = build_beat_schedule()["entity-vectors-sync-notebook"]
        assert entry["schedule"] == timedelta(hours=2)
        assert entry["options"]["expires"] == 3 * 3600
