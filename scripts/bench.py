"""Benchmark entity-vectors: prints figures (with their parameters and units), asserts nothing.

    make bench BENCH_ARGS="--entities 3000 --noop-entities 0 --search-vectors 20000 --searches 30"
    .venv/bin/python scripts/bench.py [--only provider,pipeline,flush,memory,rss,noop,search,freshness,fairness] ...

Figures (`--only` picks sections; all by default):

provider   (N*Lc/P + ceil(N/B)*Le/P) / wall of a run through Celery workers (Redis, PostgreSQL,
           ClickHouse over HTTP) against the loopback OpenAI server with latencies Lc and Le;
           throughput and the peak requests in flight the server saw; then the ceiling: the same
           requests sent by bare SDK loops in as many processes (`bench_ceiling.py`, no pipeline),
           what the loopback server and the CPUs leave of the ideal. `--processes-sweep 1,2,4`
           repeats it with that many worker processes in all.
pipeline   entities/s with offline providers (template summarizer, hashing embedder): in-process
           (run_inline, SQLite + embedded ClickHouse) and through worker processes, each with the
           CPU seconds per 1,000 entities it took, by role (worker processes, their main
           processes, PostgreSQL, the ClickHouse HTTP adapter).
flush      rows/s of `store.insert(rows)` into the embedded store.
memory     tracemalloc peak of one insert through clickhouse-connect (the HTTP adapter over chdb).
rss        peak RSS of the in-process run (ru_maxrss of its process) and of one worker pool process
           during the distributed run (VmHWM).
noop       a run with nothing changed, after the runs above and at `--noop-entities` in-process:
           wall time, SQL queries issued, and whether a SELECT scanned the host table fully
           (EXPLAIN of each recorded SELECT); also the time of the initial sync it needed.
search     search_entities p50/p95 (vector, hybrid) with 10k and `--search-vectors` vectors in one
           team, and recall@10 of the store's search against exact numpy search.
freshness  edit -> found by a text search, through the fast lane, with workers running.
fairness   freshness under load: a backlog of `--fair-entities` in one team against the OpenAI
           server with latency, while edits arrive in `--fair-teams` other teams (one a second)
           and in the backlogged team; edit -> searchable p50/p95/max per group, a 4-entity
           team's first sync into the run, and the backlog's throughput shared against alone.

Needs PostgreSQL (127.0.0.1:5432, user postgres; a scratch database `bench_entity_vectors` is
created and dropped) and Redis (database 13, flushed). Each job runs in a process of its own
(`bench_jobs.py`); everything it starts is stopped and every temp dir removed at the end, on
Ctrl-C too. On a 2-core machine expect 1.5 hours or more with the defaults: the 1M-vector search
(`--search-vectors`) waits for its HNSW index to be built (3,303 s of building measured on 2
cores), the no-op figure needs a 1M-entity initial sync first (~2,000-3,000 entities/s
in-process, so 6-10 min; `--noop-entities 0` skips it), and each freshness edit not found costs
`--freshness-timeout`. `--search-vectors 100000` builds in a few minutes.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import bench_infra as infra

SECTIONS = ("provider", "pipeline", "flush", "memory", "rss", "noop", "search", "freshness", "fairness")
Figure = dict[str, str]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line; every size is a parameter."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add = parser.add_argument
    add("--only", default=",".join(SECTIONS), help="comma-separated sections (default: all)")
    add("--entities", type=int, default=100_000, help="pipeline, rss and no-op runs")
    add("--teams", type=int, default=10)
    add("--batch-size", type=int, default=96, help="B: summarize and embed batch size")
    add("--insert-batch-size", type=int, default=10_000)
    add("--dimensions", type=int, default=1536)
    add("--inline-db", choices=("sqlite", "postgres"), default="sqlite", help="database of in-process runs")
    add("--pipeline-processes", type=int, default=2, help="worker processes of the pipeline figure")
    add("--provider-entities", type=int, default=2000, help="N of the provider figure")
    add("--parallel", type=int, default=16, help="P: max_parallel_requests")
    add("--chat-latency", "--latency-chat", type=float, default=0.2, help="Lc: seconds per chat reply")
    add(
        "--embedding-latency",
        "--latency-embed",
        type=float,
        default=0.1,
        help="Le: seconds per embedding reply",
    )
    add("--workers", type=int, default=2, help="worker nodes")
    add("--concurrency", type=int, default=2, help="processes (or threads) per worker node")
    add("--pool", choices=("prefork", "threads"), default="prefork", help="the workers' Celery pool")
    add("--processes-sweep", default="", help="e.g. 1,2,4: provider figure at these worker-process totals")
    add("--flush-inserts", type=int, default=3)
    add("--memory-rows", type=int, default=10_000)
    add("--noop-entities", type=int, default=1_000_000, help="0 skips the big in-process no-op run")
    add("--search-vectors", type=int, default=1_000_000)
    add("--search-small", type=int, default=10_000)
    add("--search-dims", type=int, default=256)
    add("--search-store", choices=("embedded", "server"), default="embedded")
    add("--searches", type=int, default=200)
    add("--recall-queries", type=int, default=20)
    add("--edits", type=int, default=50)
    add("--fast-lane-delay", type=float, default=0.5)
    add("--freshness-entities", type=int, default=1000)
    add("--freshness-timeout", type=float, default=10.0, help="an edit not found by then counts as never")
    add("--edit-gap", type=float, default=0.0, help="seconds between one edit found and the next edit")
    add("--fair-entities", type=int, default=1000, help="the fairness backlog")
    add("--fair-teams", type=int, default=20, help="other teams editing during the backlog")
    add("--fair-batch-size", type=int, default=48)
    add("--fair-chat-latency", type=float, default=1.0)
    add("--fair-embedding-latency", type=float, default=0.2)
    add("--fair-timeout", type=float, default=120.0, help="an edit not found by then counts as never")
    add("--redis-url", default="redis://127.0.0.1:6379/13")
    add("--postgres", default="postgresql://postgres@127.0.0.1:5432", help="server URL, no database")
    add("--scratch-db", default="bench_entity_vectors")
    args = parser.parse_args(argv)
    unknown = set(args.only.split(",")) - set(SECTIONS)
    if unknown:
        parser.error(f"--only: unknown sections {sorted(unknown)}; choose from {','.join(SECTIONS)}")
    return args


def plan(args: argparse.Namespace, tmp: Path) -> list[tuple[str, str, dict[str, Any]]]:
    """The jobs to run for the selected sections: (title, job, parameters)."""
    sections = args.only.split(",")
    common = {
        "tmp": str(tmp), "redis": args.redis_url, "postgres": args.postgres, "scratch_db": args.scratch_db,
        "teams": args.teams, "batch": args.batch_size, "insert_batch": args.insert_batch_size,
        "dims": args.dimensions, "parallel": args.parallel, "sections": sections, "pool": args.pool,
    }  # fmt: skip
    jobs: list[tuple[str, str, dict[str, Any]]] = []
    if "flush" in sections:
        jobs.append(("flush", "flush", common | {"label": "flush", "inserts": args.flush_inserts}))
    if "memory" in sections:
        jobs.append(("memory", "memory", common | {"label": "memory", "rows": args.memory_rows}))
    if {"pipeline", "rss", "noop"} & set(sections):
        size = {"entities": args.entities, "db": args.inline_db}
        jobs.append((f"{args.entities:,} entities in-process", "inline", common | size | {"label": "inline"}))
        pool = infra.layout(args.pipeline_processes, args.workers)
        workers = {"entities": args.entities, "layout": pool, "label": "workers"}
        jobs.append((f"{args.entities:,} entities via workers", "workers", common | workers))
    if "search" in sections:
        search = {
            "label": "search", "dims": args.search_dims, "store": args.search_store, "vectors": args.search_vectors,
            "small": args.search_small, "searches": args.searches, "recall_queries": args.recall_queries,
        }  # fmt: skip
        jobs.append(("search", "search", common | search))
    if "provider" in sections:
        totals = [int(p) for p in args.processes_sweep.split(",") if p] or [args.workers * args.concurrency]
        for total in totals:
            pool = infra.layout(total, args.workers)
            provider = {
                "entities": args.provider_entities, "layout": pool, "label": f"provider-{total}",
                "latencies": [args.chat_latency, args.embedding_latency], "sections": ["provider"],
            }  # fmt: skip
            jobs.append((f"provider-bound, {infra.describe_layout(pool, args.pool)}", "workers", common | provider))
    if "freshness" in sections:
        fresh = {
            "label": "freshness", "entities": args.freshness_entities, "edits": args.edits,
            "delay": args.fast_lane_delay, "timeout": args.freshness_timeout, "layout": [1, 1],
            "gap": args.edit_gap,
        }  # fmt: skip
        jobs.append(("freshness", "freshness", common | fresh))
    if "fairness" in sections:
        fair = {
            "label": "fairness", "entities": args.fair_entities, "teams_editing": args.fair_teams,
            "batch": args.fair_batch_size, "latencies": [args.fair_chat_latency, args.fair_embedding_latency],
            "delay": args.fast_lane_delay, "timeout": args.fair_timeout,
        }  # fmt: skip
        jobs.append(("fairness", "fairness", common | fair))
    if "noop" in sections and args.noop_entities > 0:
        big = {
            "entities": args.noop_entities,
            "db": args.inline_db,
            "label": "noop-big",
            "sections": ["noop"],
        }
        jobs.append(
            (
                f"no-op at {args.noop_entities:,} entities in-process",
                "inline",
                common | big | {"initial_figure": True},
            )
        )
    return jobs


def run_job(title: str, job: str, params: dict[str, Any], figures: list[Figure]) -> None:
    """Run one job process, echo its progress, collect its figures."""
    print(f"\n== {title}", flush=True)
    began = time.monotonic()
    command = [sys.executable, str(infra.SCRIPTS / "bench_jobs.py"), job, json.dumps(params)]
    process = subprocess.Popen(command, cwd=infra.ROOT, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    try:
        for line in process.stdout:
            if line.startswith("BENCH-FIGURE "):
                figure = json.loads(line.split(" ", 1)[1])
                figures.append(figure)
                print(f"  -> {figure['figure']}: {figure['value']}   [{figure['params']}]", flush=True)
            else:
                print(line, end="", flush=True)
        code = process.wait()
    except KeyboardInterrupt:
        with contextlib.suppress(ProcessLookupError):
            process.terminate()  # it cleans up (a second signal is ignored)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(90)
        raise
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    if code:
        figures.append({"section": job, "figure": f"{title}: FAILED", "value": f"exit {code}", "params": ""})
    print(f"   ({time.monotonic() - began:.0f}s)", flush=True)


def cleanup(tmp: Path, args: argparse.Namespace) -> None:
    """End processes a dead job left behind, drop the scratch database, remove the temp dir."""
    pids = tmp / "pids.txt"
    if pids.exists():
        for pid in {int(line) for line in pids.read_text().split()}:
            with contextlib.suppress(OSError):
                cmdline = Path(f"/proc/{pid}/cmdline").read_text()
                if any(mark in cmdline for mark in ("celery", "clickhouse_http", "bench_openai")):
                    # A worker leads its own process group (its pool too); the others are single.
                    if os.getpgid(pid) == pid:
                        os.killpg(pid, signal.SIGKILL)
                    else:
                        os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(Exception):
        infra.drop_database(args.postgres, args.scratch_db)
    with contextlib.suppress(Exception):
        infra.flush_redis(args.redis_url)
    shutil.rmtree(tmp, ignore_errors=True)


def machine() -> str:
    """nproc, CPU model and total memory."""
    model = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    memory = 0.0
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = int(line.split()[1]) / 1024**2
    return f"{os.cpu_count()} CPUs (nproc {len(os.sched_getaffinity(0))}), {model}, {memory:.1f} GiB RAM"


def summary(figures: list[Figure]) -> None:
    """The final table: figure, value, parameters."""
    width = max((len(f["figure"]) for f in figures), default=10)
    value_width = max((len(f["value"]) for f in figures), default=10)
    print(f"\n{'figure':<{width}}  {'value':<{value_width}}  parameters")
    print(f"{'-' * width}  {'-' * value_width}  {'-' * 10}")
    for section in (*SECTIONS, *sorted({f["section"] for f in figures} - set(SECTIONS))):
        for f in (f for f in figures if f["section"] == section):
            print(f"{f['figure']:<{width}}  {f['value']:<{value_width}}  {f['params']}")


def main(argv: list[str] | None = None) -> int:
    """Run every selected job, print the summary and the machine, clean up."""
    args = parse_args(argv)
    infra.interruptible()
    for name in list(os.environ):  # figures must not depend on the caller's settings
        if name.startswith(("ENTITY_VECTORS_", "CELERY_", "OPENAI_")) or name in (
            "DATABASE_URL",
            "CLICKHOUSE_URL",
        ):
            del os.environ[name]
    tmp = Path(tempfile.mkdtemp(prefix="entity-vectors-bench-"))
    figures: list[Figure] = []
    began = time.monotonic()
    print(f"entity-vectors benchmark: {args.only}", flush=True)
    try:
        for title, job, params in plan(args, tmp):
            run_job(title, job, params, figures)
    except KeyboardInterrupt:
        print("\ninterrupted; cleaning up", flush=True)
    finally:
        cleanup(tmp, args)
    summary(figures)
    print(f"\nmachine: {machine()}")
    print(f"total time: {time.monotonic() - began:.0f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
