"""The pipeline's benchmark jobs (in-process and through workers), and what every job process shares:
its Django set-up, the seeded data, a scratch database. Run by `bench_jobs.py`.

A provider-bound run also prints where its wall time went (`provider_timeline`);
BENCH_TIMELINE_DUMP=<path> keeps the raw timeline as JSON.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import bench_infra as infra
import bench_sql
from bench_infra import emit, progress

Params = dict[str, Any]


def setup_django(env: dict[str, str]) -> None:
    """Configure this process for the job, then migrate its scratch database."""
    os.environ.update(env)
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


SEEDED: dict[str, float] = {}


def seed(entities: int, teams: int) -> list[int]:
    """An approved organization, its teams and `entities` actions; returns the team ids."""
    from app.models import Organization, Team

    organization = Organization.objects.create(name="Bench", is_ai_data_processing_approved=True)
    team_ids = [Team.objects.create(organization=organization, name=f"Team {i}").pk for i in range(teams)]
    began = time.perf_counter()
    bench_sql.seed_actions(entities, team_ids)
    SEEDED["seconds"] = time.perf_counter() - began
    progress(f"seeded {entities:,} actions in {SEEDED['seconds']:.1f}s")
    return team_ids


def wall_seconds(run: Any) -> float:
    """finished_at - started_at of a SyncRun."""
    return float((run.finished_at - run.started_at).total_seconds())


def run_distributed(options: dict[str, Any], timeout: float = 24 * 3600) -> tuple[Any, float]:
    """`sync_entities.delay("action", ...)` for the workers; poll the SyncRun until it is closed.

    Returns the run and the seconds from `delay()` until this process saw it closed (20 ms polls).
    """
    from entity_vectors.models import SyncRun
    from entity_vectors.tasks import sync_entities

    began = time.perf_counter()
    started = sync_entities.delay("action", delay_between_batches=0, **options).get(timeout=timeout)
    if "run_id" not in started:
        raise RuntimeError(f"the run did not start: {started}")
    last_report = time.monotonic()
    while True:
        run = SyncRun.objects.get(pk=started["run_id"])
        if run.status != SyncRun.Status.RUNNING:
            return run, time.perf_counter() - began
        if time.monotonic() - last_report > 15:
            progress(f"  run {run.batches_done}/{run.batches_total} batches, {run.inserted:,} inserted")
            last_report = time.monotonic()
        if time.perf_counter() - began > timeout:
            raise RuntimeError(f"run {run.id} still running after {timeout:.0f}s")
        time.sleep(0.02)


def run_here(params: Params) -> tuple[Any, float]:
    """A run in this process (`run_inline`); returns it and the seconds the call took."""
    from entity_vectors.core.inputs import SyncEntityVectorsInputs
    from entity_vectors.workflow import run_inline

    inputs = SyncEntityVectorsInputs.from_kwargs(
        domain="action",
        summarize_batch_size=params["batch"],
        embed_batch_size=params["batch"],
        insert_batch_size=params["insert_batch"],
        delay_between_batches=0,
    )
    began = time.perf_counter()
    run = run_inline(inputs)
    return run, time.perf_counter() - began


def describe_run(run: Any) -> str:
    """Status and counts of a run, for progress lines."""
    return (
        f"{run.status}: selected {run.selected:,}, inserted {run.inserted:,}, "
        f"provider requests {run.provider_requests:,} in {wall_seconds(run):.1f}s"
    )


def noop_figures(
    where: str, params: Params, run: Any, seconds: float, records: list[bench_sql.Record]
) -> None:
    """Wall time, SQL queries and host-table scans of a no-op run."""
    explained, scans = bench_sql.explain_host_selects(records)
    n = f"{params['entities']:,}"
    size = f"{params['entities']:,} synced entities, {where}"
    own = f"SyncRun started->finished {wall_seconds(run):.2f}s"
    emit("noop", f"no-op run wall @ {n} ({where})", f"{seconds:.2f} s", f"{size}; whole call, {own}")
    emit("noop", f"no-op SQL queries @ {n} ({where})", f"{len(records)}", f"{size}; selected {run.selected}")
    verdict = f"YES ({len(scans)} of {explained} SELECTs)" if scans else f"no (0 of {explained} SELECTs)"
    emit("noop", f"no-op full scan of {bench_sql.HOST_TABLE} @ {n} ({where})", verdict, size)
    for scan in scans:
        progress(f"  full scan: {scan}")


@contextlib.contextmanager
def database(params: Params, kind: str) -> Iterator[str]:
    """A scratch PostgreSQL database, or an SQLite file in the job's temp dir; yields its URL."""
    if kind == "postgres":
        with infra.scratch_database(params["postgres"], params["scratch_db"]) as url:
            yield url
    else:
        yield f"sqlite:///{Path(params['tmp']) / params['label'] / 'db.sqlite3'}"


def distributed_services(
    stack: contextlib.ExitStack, params: Params, label: str, latencies: list[float] | None = None
) -> tuple[str, str, infra.OpenAIProcess | None]:
    """What a run through workers needs, stopped with `stack`: a scratch PostgreSQL database, an
    empty Redis database, ClickHouse over HTTP and (with `latencies`) the OpenAI server. Returns
    the database URL, the ClickHouse URL and the server."""
    url = stack.enter_context(database(params, "postgres"))
    infra.flush_redis(params["redis"])
    clickhouse = stack.enter_context(infra.clickhouse_server(Path(params["tmp"]), f"clickhouse-{label}"))
    server = stack.enter_context(infra.openai_server(Path(params["tmp"]), *latencies)) if latencies else None
    return url, clickhouse, server


# -- jobs ---------------------------------------------------------------------------------------


def job_inline(params: Params) -> None:
    """Pipeline, peak RSS and no-op run in this process (embedded ClickHouse)."""
    sections = set(params["sections"])
    work = Path(params["tmp"]) / params["label"]
    work.mkdir(parents=True, exist_ok=True)
    with database(params, params["db"]) as url:
        env = infra.service_env(
            url,
            f"chdb://{work / 'clickhouse'}",
            params["redis"],
            dimensions=params["dims"],
            execution="inline",
        )
        setup_django(env)
        seed(params["entities"], params["teams"])
        sampler = infra.MemorySampler()
        cpu_before = resource.getrusage(resource.RUSAGE_SELF)
        run, _ = run_here(params)
        cpu_after = resource.getrusage(resource.RUSAGE_SELF)
        peaks = sampler.stop()
        progress(f"run: {describe_run(run)}")
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        where = f"in-process, {params['db']} + embedded ClickHouse"
        shape = (
            f"{params['entities']:,} entities, B={params['batch']}, {params['dims']} dims, offline providers"
        )
        if params.get("initial_figure"):
            emit(
                "noop",
                f"initial sync @ {params['entities']:,} (in-process)",
                f"{wall_seconds(run):.0f} s",
                f"{shape}, {where}; seeding took {SEEDED['seconds']:.0f} s",
            )
        if "pipeline" in sections:
            rate = run.inserted / wall_seconds(run)
            emit("pipeline", "pipeline in-process", f"{rate:,.0f} entities/s", f"{shape}, {where}")
            used = {
                "this process": (cpu_after.ru_utime + cpu_after.ru_stime)
                - (cpu_before.ru_utime + cpu_before.ru_stime)
            }
            cpu_figure("pipeline CPU in-process", used, run.inserted, f"{shape}, {where}")
        if "rss" in sections:
            emit("rss", "peak RSS in-process run", f"{rss:,.0f} MB", f"{shape}, {where} (ru_maxrss)")
            emit(
                "rss",
                "  of which anonymous (peak RssAnon)",
                f"{peaks['RssAnon']:,} MB",
                f"file-backed peak {peaks['RssFile']:,} MB: mapped code, the embedded engine's library included",
            )
        if "noop" in sections:
            bench_sql.analyze()
            records: list[bench_sql.Record] = []
            recording = {"on": True}
            bench_sql.attach(bench_sql.Recorder(records.append, lambda: recording["on"]))
            noop, seconds = run_here(params)
            recording["on"] = False
            progress(f"no-op run: {describe_run(noop)}")
            noop_figures(f"in-process, {params['db']}", params, noop, seconds, records)
        from entity_vectors.store import close_store

        close_store()


def job_workers(params: Params) -> None:
    """A run through worker processes: provider-bound (OpenAI server) or pipeline-only (offline)."""
    sections = set(params["sections"])
    tmp = Path(params["tmp"])
    label = params["label"]
    query_log = tmp / f"queries-{label}"
    query_log.mkdir(parents=True, exist_ok=True)
    openai_latencies = params.get("latencies")
    with contextlib.ExitStack() as stack:
        url, clickhouse, server = distributed_services(stack, params, label, openai_latencies)
        env = infra.service_env(
            url,
            clickhouse,
            params["redis"],
            dimensions=params["dims"],
            execution="distributed",
            openai_url=server.base_url if server else None,
            # The workers record their statements only for the no-op figure: it costs every statement.
            extra={bench_sql.QUERY_LOG_ENV: str(query_log)} if "noop" in params["sections"] else None,
        )
        setup_django(env)
        seed(params["entities"], params["teams"])
        nodes = stack.enter_context(infra.workers(env, params["layout"], tmp, label, params.get("pool", "prefork")))
        stack.callback(infra.flush_redis, params["redis"])
        progress(f"workers up: {infra.describe_layout(params['layout'], params.get('pool', 'prefork'))}")
        if server:
            server.reset_peak()
        meter = infra.CpuMeter(nodes, str(tmp / f"clickhouse-{label}"))
        options = {
            "max_parallel_requests": params["parallel"],
            "summarize_batch_size": params["batch"],
            "embed_batch_size": params["batch"],
            "insert_batch_size": params["insert_batch"],
        }
        run, _ = run_distributed(options)
        progress(f"run: {describe_run(run)}")
        wall = wall_seconds(run)
        procs = infra.describe_layout(params["layout"], params.get("pool", "prefork"))
        if server:
            provider_figures(params, run, wall, server.stats(), procs)
            # bench_infra's OpenAIProcess asks its server by a stdin line; "timeline" is one of them.
            provider_timeline(run, server._ask("timeline")["requests"], params["parallel"])
            pool = params.get("pool", "prefork")
            clients = sum(params["layout"]) if pool == "prefork" else len(params["layout"])
            provider_ceiling(params, server.base_url, clients, procs)
            return
        shape = (
            f"{params['entities']:,} entities, B={params['batch']}, {params['dims']} dims, offline providers"
        )
        where = f"{procs}, PostgreSQL + ClickHouse over HTTP + Redis"
        if "pipeline" in sections:
            emit(
                "pipeline",
                "pipeline via workers",
                f"{run.inserted / wall:,.0f} entities/s",
                f"{shape}, {where}",
            )
            cpu_figure("pipeline CPU via workers", meter.used(), run.inserted, f"{shape}, {where}")
        if "rss" in sections:
            peak = infra.pool_peak_rss_mb(nodes)
            emit("rss", "peak RSS one worker process", f"{peak:,.0f} MB", f"{shape}, {where} (max VmHWM)")
        if "noop" in sections:
            bench_sql.analyze()
            bench_sql.clear_worker_records(query_log)
            (query_log / "on").touch()
            noop, seconds = run_distributed(options)
            (query_log / "on").unlink()
            progress(f"no-op run: {describe_run(noop)}")
            records = bench_sql.read_worker_records(query_log)
            noop_figures(f"workers, {procs}, PostgreSQL", params, noop, seconds, records)


def cpu_figure(name: str, used: dict[str, float], entities: int, params: str) -> None:
    """CPU seconds per 1,000 entities, in all and by role (`infra.CpuMeter`)."""
    per = 1000 / max(entities, 1)
    parts = ", ".join(f"{role} {seconds * per:.2f}" for role, seconds in used.items())
    emit("pipeline", name, f"{sum(used.values()) * per:.2f} CPU-s per 1,000 entities", f"{parts}; {params}")


def ideal_seconds(params: Params) -> float:
    """N*Lc/P + ceil(N/B)*Le/P: the wall time of the run's requests at exactly P in flight."""
    n, p, b = params["entities"], params["parallel"], params["batch"]
    chat, embedding = params["latencies"]
    return float((n * chat / p) + (-(-n // b)) * embedding / p)


def provider_figures(params: Params, run: Any, wall: float, stats: dict[str, int], procs: str) -> None:
    """Provider-bound efficiency: ideal time at P requests in flight over the wall time."""
    n, p, b = params["entities"], params["parallel"], params["batch"]
    chat, embedding = params["latencies"]
    ideal = ideal_seconds(params)
    shape = f"N={n:,}, P={p}, B={b}, Lc={chat}s, Le={embedding}s, {procs}"
    emit(
        "provider",
        f"provider-bound efficiency ({procs})",
        f"{ideal / wall:.1%}",
        f"{shape}; ideal {ideal:.1f}s, wall {wall:.1f}s",
    )
    emit("provider", f"provider-bound throughput ({procs})", f"{n / wall:,.1f} entities/s", shape)
    emit(
        "provider",
        f"peak requests in flight ({procs})",
        f"{stats['peak_in_flight']} (P={p})",
        f"{stats['chat']:,} chat + {stats['embeddings']:,} embedding requests, status {run.status}",
    )


def provider_ceiling(params: Params, url: str, clients: int, procs: str) -> None:
    """The same N chat and ceil(N/B) embedding requests sent by bare SDK loops in `clients`
    processes (P split among them, no pipeline): the share of the ideal that the loopback
    server, the SDK and the CPUs leave, to read the run's efficiency against."""
    n, p, b = params["entities"], params["parallel"], params["batch"]
    ideal = ideal_seconds(params)
    command = [sys.executable, str(Path(__file__).with_name("bench_ceiling.py")), "--url", url]
    command += ["--entities", str(n), "--parallel", str(p), "--batch", str(b), "--processes", str(clients)]
    completed = subprocess.run(command, capture_output=True, text=True, check=True, timeout=3600)
    wall = float(json.loads(completed.stdout.strip().splitlines()[-1])["wall"])
    emit(
        "provider",
        f"ceiling: bare SDK loops, no pipeline ({clients} proc)",
        f"{ideal / wall:.1%}",
        f"same requests, server and P as the run ({procs}); ideal {ideal:.1f}s, wall {wall:.1f}s",
    )


def provider_timeline(run: Any, requests: list[list[Any]], parallel: int) -> None:
    """Where a provider-bound run's wall time went, as progress lines: before the first request,
    requests in flight while they ran, each worker process's batches, and after the last answer.

    `requests` are the server's (kind, start, end, what), wall-clock seconds, like the run's times.
    With BENCH_TIMELINE_DUMP=<path> the raw timeline is written there as JSON too.
    """
    from entity_vectors.models import SyncRunBatch

    batches = list(SyncRunBatch.objects.filter(run=run).order_by("started_at"))
    if os.environ.get("BENCH_TIMELINE_DUMP"):
        dump_timeline(Path(os.environ["BENCH_TIMELINE_DUMP"]), run, requests, batches)
    spans = sorted((float(start), float(end)) for _, start, end, *_ in requests if end is not None)
    if not spans:
        return
    began, finished = run.started_at.timestamp(), run.finished_at.timestamp()
    first, last = spans[0][0], max(end for _, end in spans)
    dispatched = run.dispatched_at.timestamp() if run.dispatched_at else began
    events = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
    level, at, by_level = 0, first, [0.0] * (max(parallel, 1) + 64)
    for moment, step in events:
        by_level[min(level, len(by_level) - 1)] += moment - at
        level, at = level + step, moment
    busy = sum(end - start for start, end in spans)
    middle = last - first
    full = sum(by_level[parallel:])
    progress(
        f"  timeline: start->dispatched {dispatched - began:.2f}s, ->first request {first - dispatched:.2f}s, "
        f"requests {middle:.2f}s, last answer->run closed {finished - last:.2f}s"
    )
    progress(
        f"  in flight while requests ran: mean {busy / middle:.1f} of P={parallel}; at P {full:.2f}s, "
        f"below P {middle - full:.2f}s (none in flight {by_level[0]:.2f}s); slot-seconds {busy:.1f} "
        f"(= {busy / parallel:.2f}s at P)"
    )
    per_pid: dict[int, list[Any]] = {}
    for batch in batches:
        if batch.started_at and batch.finished_at:
            per_pid.setdefault(batch.worker_pid or 0, []).append(batch)
    for pid, own in sorted(per_pid.items()):
        gaps = [
            (later.started_at - earlier.finished_at).total_seconds()
            for earlier, later in itertools.pairwise(own)
        ]
        lasted = [(batch.finished_at - batch.started_at).total_seconds() for batch in own]
        progress(
            f"  process {pid}: {len(own)} batches, first start +{own[0].started_at.timestamp() - began:.2f}s, "
            f"last end +{own[-1].finished_at.timestamp() - began:.2f}s, batch {min(lasted):.2f}-{max(lasted):.2f}s, "
            f"idle between batches {sum(gaps):.2f}s (max {max(gaps, default=0):.2f}s)"
        )
    ends = [batch.finished_at.timestamp() for batch in batches if batch.finished_at]
    if ends:
        progress(
            f"  last batch staged +{max(ends) - began:.2f}s, {finished - max(ends):.2f}s before the run closed"
        )


def dump_timeline(path: Path, run: Any, requests: list[list[Any]], batches: list[Any]) -> None:
    """The raw timeline as JSON: requests, batches (index, pid, start, end, ids), action name -> id."""
    from app.models import Action

    dump = {
        "run": [run.started_at.timestamp(), run.finished_at.timestamp()],
        "requests": requests,
        "batches": [
            [
                batch.index,
                batch.worker_pid,
                batch.started_at.timestamp(),
                batch.finished_at.timestamp(),
                batch.entity_ids,
            ]
            for batch in batches
            if batch.started_at and batch.finished_at
        ],
        "names": dict(Action.objects.values_list("name", "pk")),
    }
    path.write_text(json.dumps(dump))
