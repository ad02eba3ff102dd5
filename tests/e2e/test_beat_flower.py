"""Beat triggers every registered domain; Flower lists a run's tasks by name."""

from __future__ import annotations

import json
import socket
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from app.celery import app as celery_app
from entity_vectors.models import SyncRun
from entity_vectors.store import EmbeddingStore
from entity_vectors.tasks import sweep_runs
from tests.e2e.conftest import wait_for_run
from tests.e2e.test_pipeline import start
from tests.factories import make_action, make_cohort, make_event_definition, make_team
from tests.support.processes import http_ok, start_beat, start_celery, wait_until

pytestmark = pytest.mark.slow


def free_port() -> int:
    """A port nobody listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class TestBeat:
    """A real `celery beat` process starts a run of each registered domain on its schedule, with
    Celery's default scheduler and with django-celery-beat's database scheduler alike."""

    @pytest.mark.parametrize(
        "scheduler",
        [
            pytest.param([], id="default-scheduler"),
            pytest.param(["-S", "django_celery_beat.schedulers:DatabaseScheduler"], id="database-scheduler"),
        ],
    )
    def test_beat_triggers_every_registered_domain(
        self,
        scheduler: list[str],
        pipeline: EmbeddingStore,
        service_env: dict[str, str],
        service_logs: Path,
        tmp_path: Path,
    ) -> None:
        team = make_team()
        make_action(team)
        make_cohort(team)
        make_event_definition(team)
        env = {**service_env, "ENTITY_VECTORS_SCHEDULE_SECONDS": "2"}
        beat = start_beat("beat", env, service_logs, tmp_path / "beat-schedule", *scheduler)
        try:
            wait_until(
                lambda: (
                    {"action", "cohort", "event_definition"}
                    <= set(
                        SyncRun.objects.filter(status=SyncRun.Status.SUCCEEDED).values_list(
                            "domain", flat=True
                        )
                    )
                ),
                timeout=60,
                what="a beat-started run of every domain",
            )
        finally:
            beat.stop()
            celery_app.control.purge()  # ticks still queued must not leak into other tests
        log = beat.log()
        for domain in ("action", "cohort", "event_definition"):
            assert f"entity-vectors-sync-{domain}" in log, log[-3000:]
        for run in SyncRun.objects.filter(status=SyncRun.Status.SUCCEEDED):
            assert run.inserted in (0, 1) and run.kind == SyncRun.Kind.RUN


class TestFlower:
    """A real Flower process against the test broker shows the run's tasks by name, with the domain."""

    def test_flower_lists_the_runs_tasks(
        self, pipeline: EmbeddingStore, service_env: dict[str, str], service_logs: Path
    ) -> None:
        port = free_port()
        flower = start_celery(
            "flower",
            ["flower", f"--port={port}", "--address=127.0.0.1"],
            {**service_env, "FLOWER_UNAUTHENTICATED_API": "true"},
            service_logs,
        )
        try:
            wait_until(
                lambda: http_ok(f"http://127.0.0.1:{port}/healthcheck"), timeout=60, what="Flower to serve"
            )
            # Flower serves before its event receiver is connected, and events sent before that
            # are lost: send a harmless probe task every few seconds until Flower shows one.
            probes: list[tuple[float, str]] = []

            def receiving() -> bool:
                if not probes or time.monotonic() - probes[-1][0] > 3:
                    probes.append((time.monotonic(), sweep_runs.delay().id))
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/tasks", timeout=5) as response:
                    listed: dict[str, Any] = json.load(response)
                return any(listed.get(task_id, {}).get("state") == "SUCCESS" for _, task_id in probes)

            wait_until(receiving, timeout=60, what="Flower to receive task events", interval=0.5)
            team = make_team()
            make_cohort(team)
            make_cohort(team)
            run = wait_for_run(start("cohort", summarize_batch_size=1)["run_id"])

            def tasks() -> dict[str, Any]:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/tasks", timeout=5) as response:
                    listed: dict[str, Any] = json.load(response)
                names = {task["name"] for task in listed.values() if task.get("state") == "SUCCESS"}
                seen[:] = sorted(str(name) for name in names)
                short = str(run.id)[:8]
                wanted = {
                    "sync cohort · start",
                    f"sync cohort · run {short} · batch 1/2",
                    f"sync cohort · run {short} · batch 2/2",
                    f"finish cohort · run {short}",
                }
                return listed if wanted <= names else {}

            seen: list[str] = []
            try:
                listed = wait_until(tasks, timeout=30, what="Flower to list the run's tasks by domain and run")
            except AssertionError as exc:
                raise AssertionError(f"{exc}; it lists {seen}") from None
        finally:
            flower.stop()
        assert isinstance(listed, dict)
        batches = [task for task in listed.values() if " · batch " in (task.get("name") or "")]
        assert len(batches) == 2
        assert all(
            "'domain': 'cohort'" in task["kwargs"] and str(run.id) in task["kwargs"] for task in batches
        )
        assert all(task["worker"].startswith("worker") for task in batches)
