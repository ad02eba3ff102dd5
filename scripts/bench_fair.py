"""The fairness job of the benchmark: freshness under load, and what sharing costs the backlog.

A backlog of N actions in one team goes through the workers against the loopback OpenAI server
with latency, twice: alone, then while edits arrive (one a second in turn in each of
`--fair-teams` other teams, and one every third second in the backlogged team itself, each a
rename of an action synced before) and while a small team of 4 new actions waits with it. This
process makes the edits and polls a text search (every 0.25 s) until each is found under its new
name, and polls the small team's actions the same way.

Figures: edit -> searchable p50 / p95 / max per group (other teams, the backlogged team), the
small team's first sync (seconds into the backlog's run, and the share of the run's wall time),
the backlog's throughput alone and shared, and their ratio.

Two worker processes: one on the batch queue and one on the fast queue (the layout the README
recommends), or both on the batch queue where the code has no fast queue.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bench_infra as infra
import bench_pipeline as jobs
import bench_sql
from bench_fresh import made_up_name, searchable
from bench_infra import emit, percentile, progress

Params = dict[str, Any]
POLL_SECONDS = 0.25
SMALL_TEAM = 4


@dataclass
class Edit:
    """One rename, from its commit until a text search found it."""

    group: str
    team_id: int
    pk: int
    name: str
    committed: float
    found: float | None = None


@dataclass
class Load:
    """The edits made during a run, and when the small team was all found."""

    edits: list[Edit] = field(default_factory=list)
    small_found: float | None = None


def job_fairness(params: Params) -> None:
    """Freshness under load: a slow backlog beside edits of many teams, against the backlog alone."""
    tmp = Path(params["tmp"])
    with contextlib.ExitStack() as stack:
        url, clickhouse, server = jobs.distributed_services(stack, params, "fairness", params["latencies"])
        assert server is not None
        env = infra.service_env(
            url,
            clickhouse,
            params["redis"],
            dimensions=params["dims"],
            execution="distributed",
            openai_url=server.base_url,
            fast_lane=True,
            extra={
                "ENTITY_VECTORS_FAST_LANE_DELAY": str(params["delay"]),
                "ENTITY_VECTORS_FLUSH_INTERVAL": "1",
                # The batch worker stays on the batch queue: the fast worker runs the passes.
                "ENTITY_VECTORS_FAST_LANE_ON_BATCH_WORKERS": "false",
            },
        )
        jobs.setup_django(env)
        backlogged, others, small, targets = seed_teams(params["teams_editing"])
        queues, layout = worker_queues()
        stack.enter_context(infra.workers(env, [1, 1], tmp, "fairness", queues=queues))
        stack.callback(infra.flush_redis, params["redis"])
        options = {
            "max_parallel_requests": params["parallel"],
            "summarize_batch_size": params["batch"],
            "embed_batch_size": params["batch"],
        }
        first, _ = jobs.run_distributed(options)
        progress(f"edit targets synced: {jobs.describe_run(first)}; workers: {layout}")

        bench_sql.seed_actions(params["entities"], [backlogged])
        alone, _ = jobs.run_distributed(options)
        progress(f"backlog alone: {jobs.describe_run(alone)}")

        bench_sql.seed_actions(params["entities"], [backlogged])
        small_names = seed_small_team(small)
        shared, load = run_under_load(options, params, targets, others, backlogged, small, small_names)
        progress(f"backlog shared: {jobs.describe_run(shared)}")
    report(params, alone, shared, load, layout)


def seed_teams(editing: int) -> tuple[int, list[int], int, dict[int, list[int]]]:
    """The backlogged team, `editing` other teams, the small team, and the actions edits rename
    (three per team, synced before the backlog)."""
    from app.models import Organization, Team
    from tests.factories import make_action

    organization = Organization.objects.create(name="Bench", is_ai_data_processing_approved=True)
    teams = [Team.objects.create(organization=organization, name=f"Team {i}") for i in range(editing + 2)]
    backlogged, small, others = teams[0], teams[1], teams[2:]
    targets = {
        team.pk: [make_action(team, name=made_up_name(1000 + 10 * team.pk + i, "seed")).pk for i in range(3)]
        for team in [backlogged, *others]
    }
    return backlogged.pk, [team.pk for team in others], small.pk, targets


def seed_small_team(team_id: int) -> list[str]:
    """A small team's new actions, written without signals (no pass): the run's to take."""
    from app.models import Action

    names = [made_up_name(900_000 + i, "small") for i in range(SMALL_TEAM)]
    Action.objects.bulk_create(
        [Action(team_id=team_id, name=name, steps=[{"event": f"small_{i}"}]) for i, name in enumerate(names)]
    )
    return names


def worker_queues() -> tuple[list[str], str]:
    """A batch worker and a fast one where the code has a fast queue, else two batch workers."""
    from entity_vectors import conf

    if hasattr(conf, "fast_queue"):
        return [infra.QUEUE, conf.fast_queue()], "1 process on the batch queue + 1 on the fast queue"
    return [infra.QUEUE, infra.QUEUE], "2 processes on the one queue"


def run_under_load(
    options: dict[str, Any],
    params: Params,
    targets: dict[int, list[int]],
    others: list[int],
    backlogged: int,
    small: int,
    small_names: list[str],
) -> tuple[Any, Load]:
    """Start the backlog's run; edit and poll until it is over and every edit is found (or late)."""
    from entity_vectors.models import SyncRun
    from entity_vectors.tasks import sync_entities

    started = sync_entities.delay("action", delay_between_batches=0, **options).get(timeout=60)
    began = time.monotonic()
    load = Load()
    number = 0
    next_edit = began
    run = SyncRun.objects.get(pk=started["run_id"])
    while True:
        now = time.monotonic()
        running = run.status == SyncRun.Status.RUNNING
        if running and now >= next_edit:
            second = int(now - began)
            team_id = others[second % len(others)]
            load.edits.append(edit(targets, team_id, "other teams", number))
            number += 1
            if second % 3 == 0:
                load.edits.append(edit(targets, backlogged, "backlogged team", number))
                number += 1
            next_edit += 1.0
        poll(load, small, small_names, began)
        late = [e for e in load.edits if e.found is None and now - e.committed < params["timeout"]]
        if not running and not late and load.small_found is not None:
            break
        if not running and now - began > params["timeout"] * 20:
            break
        time.sleep(POLL_SECONDS)
        run.refresh_from_db()
    return run, load


def edit(targets: dict[int, list[int]], team_id: int, group: str, number: int) -> Edit:
    """Rename one of the team's synced actions (a committed ORM save: the fast lane hears of it)."""
    from django.db import transaction

    from app.models import Action

    pk = targets[team_id][number % len(targets[team_id])]
    name = made_up_name(number, "fair")
    with transaction.atomic():
        action = Action.objects.get(pk=pk)
        action.name = name
        action.save()
    return Edit(group=group, team_id=team_id, pk=pk, name=name, committed=time.monotonic())


def poll(load: Load, small: int, small_names: list[str], began: float) -> None:
    """One round of text searches: each edit not found yet, and the small team until it is."""
    from app.models import Action

    for pending in load.edits:
        if pending.found is None and searchable(pending.team_id, pending.pk, pending.name):
            pending.found = time.monotonic()
    if load.small_found is None:
        pks = dict(Action.objects.filter(team_id=small).values_list("name", "pk"))
        if all(searchable(small, pks[name], name) for name in small_names):
            load.small_found = time.monotonic() - began


def report(params: Params, alone: Any, shared: Any, load: Load, layout: str) -> None:
    """The section's figures."""
    shape = (
        f"backlog {params['entities']:,} in one team, B={params['batch']}, P={params['parallel']}, "
        f"Lc {params['latencies'][0]} s, Le {params['latencies'][1]} s; {layout}"
    )
    for group in ("other teams", "backlogged team"):
        seconds = [
            (e.found - e.committed) if e.found is not None else math.inf for e in load.edits if e.group == group
        ]
        if not seconds:
            continue
        missing = sum(1 for value in seconds if not math.isfinite(value))
        text = ", ".join(_seconds(name, value) for name, value in _spread(seconds))
        detail = f"{len(seconds)} edits during the backlog's run, {missing} not found within {params['timeout']:.0f} s"
        emit("fairness", f"edit -> searchable, {group}", text, f"{detail}; {shape}")
    wall = jobs.wall_seconds(shared)
    if load.small_found is not None:
        share = load.small_found / wall * 100
        value = f"{load.small_found:.1f} s ({share:.0f}% of the run)"
    else:
        value = "not found"
    emit("fairness", f"{SMALL_TEAM}-entity team's first sync", value, f"its actions added after the backlog; {shape}")
    alone_rate = alone.inserted / jobs.wall_seconds(alone)
    shared_rate = shared.inserted / wall
    emit("fairness", "backlog throughput alone", f"{alone_rate:,.1f} entities/s", shape)
    emit("fairness", "backlog throughput shared", f"{shared_rate:,.1f} entities/s", shape)
    emit("fairness", "shared / alone", f"{shared_rate / alone_rate * 100:.0f}%", shape)


def _spread(seconds: list[float]) -> list[tuple[str, float]]:
    return [("p50", percentile(seconds, 50)), ("p95", percentile(seconds, 95)), ("max", max(seconds))]


def _seconds(name: str, value: float) -> str:
    return f"{name} {value:.1f} s" if math.isfinite(value) else f"{name} not found"
