"""The freshness job of the benchmark: how long after an edit a text search finds it.

Worker processes run with the fast lane on (and so does this process, which makes the edits):
each edit renames one action with new made-up words in a committed transaction, then this
process polls `search_entities(..., mode="text")` until the action is found under its new name.
Edits are made one after the other, each once the previous one was found.
"""

from __future__ import annotations

import contextlib
import functools
import math
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import bench_infra as infra
import bench_pipeline as jobs
from bench_infra import emit, percentile, progress

Params = dict[str, Any]


def job_freshness(params: Params) -> None:
    """Edit -> searchable through the fast lane, with worker processes running."""
    tmp = Path(params["tmp"])
    with contextlib.ExitStack() as stack:
        url, clickhouse, _ = jobs.distributed_services(stack, params, "freshness")
        extra = {"ENTITY_VECTORS_FAST_LANE_DELAY": str(params["delay"])}
        env = infra.service_env(
            url,
            clickhouse,
            params["redis"],
            dimensions=params["dims"],
            execution="distributed",
            fast_lane=True,
            extra=extra,
        )
        jobs.setup_django(env)
        team_ids = jobs.seed(params["entities"], 1)
        stack.enter_context(infra.workers(env, params["layout"], tmp, "freshness"))
        stack.callback(infra.flush_redis, params["redis"])
        run, _ = jobs.run_distributed(
            {"summarize_batch_size": params["batch"], "embed_batch_size": params["batch"]}
        )
        progress(f"initial run: {jobs.describe_run(run)}")
        latencies = measure_edits(params, team_ids[0])
    procs = infra.describe_layout(params["layout"])
    found = [seconds for seconds in latencies if math.isfinite(seconds)]
    shape = (
        f"{len(latencies)} edits, gap {params['gap']}s, fast-lane delay {params['delay']}s, {procs}, "
        f"offline providers; {len(latencies) - len(found)} not found within {params['timeout']:.0f}s"
    )
    if found:
        shape += f"; over found edits: p50 {percentile(found, 50):.2f}s, p95 {percentile(found, 95):.2f}s"
    for p in (50, 95):
        value = percentile(latencies, p)
        text = f"{value:.2f} s" if math.isfinite(value) else f"> {params['timeout']:.0f} s (not found)"
        emit("freshness", f"edit -> searchable p{p}", text, shape)


def measure_edits(params: Params, team_id: int) -> list[float]:
    """Rename actions one after the other; time each until a text search finds the new name.

    An edit not found within the timeout counts as infinitely late.
    """
    from django.db import transaction

    from app.models import Action

    ids = list(
        Action.objects.filter(team_id=team_id).order_by("id").values_list("id", flat=True)[: params["edits"]]
    )
    latencies: list[float] = []
    for number, pk in enumerate(ids):
        if number:
            time.sleep(params["gap"])
        name = made_up_name(number)
        with transaction.atomic():
            action = Action.objects.get(pk=pk)
            action.name = name
            action.save()
        began = time.perf_counter()
        found = wait_for(functools.partial(searchable, team_id, pk, name), params["timeout"])
        latencies.append(time.perf_counter() - began if found else math.inf)
        if number % 10 == 9:
            found = [seconds for seconds in latencies if math.isfinite(seconds)]
            median = f"{statistics.median(found):.2f}s" if found else "-"
            progress(
                f"  {number + 1} edits, median of found {median}, {len(latencies) - len(found)} not found"
            )
    return latencies


SYLLABLES = ["zor", "qua", "vex", "mib", "tul", "dro", "kap", "yen", "fli", "gus", "hob", "wix"]


def made_up_name(number: int, tag: str = "quill") -> str:
    """A name of made-up words no other action has: a text search finds only the edit."""
    a, b, c = (SYLLABLES[(number // 12**k) % 12] for k in range(3))
    return f"{a}{b}{c}{tag}{number} {c}{a}nebra{number}"


def searchable(team_id: int, pk: int, name: str) -> bool:
    """Whether a text search for `name` finds the action under that name."""
    from entity_vectors.search.query import search_entities

    hits = search_entities("action", team_id, name, mode="text", limit=5)
    return any(hit.id == str(pk) and hit.properties.get("name") == name for hit in hits)


def wait_for(condition: Callable[[], bool], timeout: float) -> bool:
    """Poll every 20 ms until `condition()` or the timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return False
