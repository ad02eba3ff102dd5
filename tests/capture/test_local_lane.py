"""The fast lane of a web process with no workers: passes in a thread of its own, a burst costs two."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from django.test import Client

from entity_vectors.capture.fast_lane import LocalLane
from tests.support.processes import wait_until


class Passes:
    """Counts the passes run, each taking `seconds`, and which threads ran them."""

    def __init__(self, seconds: float = 0.05) -> None:
        self.seconds = seconds
        self.domains: list[str] = []
        self.threads: set[str] = set()

    def __call__(self, domain: str) -> bool:
        self.domains.append(domain)
        self.threads.add(threading.current_thread().name)
        time.sleep(self.seconds)
        return False


@pytest.fixture
def lane(settings: Any) -> LocalLane:
    settings.ENTITY_VECTORS_FAST_LANE_DELAY = 0.2
    return LocalLane()


def test_a_burst_costs_the_leading_pass_and_one_more(lane: LocalLane) -> None:
    passes = Passes()
    lane.use_runner(passes)

    started = [lane.kick("action") for _ in range(100)]
    wait_until(lane.idle, timeout=10, what="the passes to end")

    assert started.count(True) == 1
    assert passes.domains == ["action", "action"]
    assert passes.threads == {"fast-lane action"}  # never the caller's thread (a request's)


def test_domains_run_side_by_side_and_a_quiet_domain_goes_at_once(lane: LocalLane) -> None:
    passes = Passes(seconds=0.3)
    lane.use_runner(passes)

    lane.kick("action")
    lane.kick("cohort")
    wait_until(lambda: sorted(passes.domains) == ["action", "cohort"], timeout=5, what="both passes")
    wait_until(lane.idle, timeout=10, what="the passes to end")

    assert sorted(passes.domains) == ["action", "cohort"]


def test_a_failing_pass_is_logged_and_the_lane_goes_on(lane: LocalLane) -> None:
    calls: list[str] = []

    def failing(domain: str) -> bool:
        calls.append(domain)
        raise RuntimeError("provider down")

    lane.use_runner(failing)
    lane.kick("action")
    wait_until(lane.idle, timeout=10, what="the failed pass to end")
    lane.kick("action")
    wait_until(lane.idle, timeout=10, what="the next pass to end")

    assert calls == ["action", "action"]


@pytest.mark.django_db
def test_only_a_process_that_serves_requests_runs_passes_and_never_under_eager_tasks(
    client: Client, settings: Any
) -> None:
    from celery import current_app

    lane = LocalLane()
    lane.use_runner(Passes())
    assert not lane.wanted()  # a command, a worker: the change waits for the next run

    from django.core.signals import request_started

    request_started.connect(lane.serving_requests)
    try:
        client.get("/admin/login/")
        eager = current_app.conf.task_always_eager
        current_app.conf.task_always_eager = False
        try:
            assert lane.wanted()
        finally:
            current_app.conf.task_always_eager = True
        try:
            assert not lane.wanted()  # a host's test settings: its tests decide when runs happen
        finally:
            current_app.conf.task_always_eager = eager
    finally:
        request_started.disconnect(lane.serving_requests)
