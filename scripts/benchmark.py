"""Benchmark a full run on a scratch database and embedded ClickHouse; prints figures, asserts nothing.

    .venv/bin/python scripts/benchmark.py [--entities 20000] [--dimensions 1536] [--insert-batch-size 10000]

Offline providers (template summarizer, hashing embedder) so that the figures measure this
project's own work: selection, staging, the flush into ClickHouse, marking, search. Run it on a
quiet machine and compare figures between commits, not against a threshold.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path


def main() -> int:
    """Seed, run, rerun, search; print the figures."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--entities", type=int, default=20_000)
    parser.add_argument("--teams", type=int, default=10)
    parser.add_argument("--dimensions", type=int, default=1536)
    parser.add_argument("--summarize-batch-size", type=int, default=96)
    parser.add_argument("--insert-batch-size", type=int, default=10_000)
    parser.add_argument("--searches", type=int, default=50)
    parser.add_argument("--keep", action="store_true", help="keep the scratch database and ClickHouse data")
    args = parser.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="entity-vectors-bench-"))
    os.environ.update(
        {
            "DJANGO_SETTINGS_MODULE": "app.settings",
            "DATABASE_URL": f"sqlite:///{scratch / 'bench.sqlite3'}",
            "CLICKHOUSE_URL": f"chdb://{scratch / 'clickhouse'}",
            "ENTITY_VECTORS_SUMMARIZER": "template",
            "ENTITY_VECTORS_EMBEDDER": "hashing",
            "ENTITY_VECTORS_EMBEDDING_DIMENSIONS": str(args.dimensions),
            "ENTITY_VECTORS_LOG_LEVEL": "WARNING",
        }
    )
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import django

    django.setup()
    from django.core.management import call_command

    from app.models import Action, Organization, Team
    from entity_vectors import workflow
    from entity_vectors.models import SyncRun, SyncRunBatch
    from entity_vectors.search import search_entities
    from entity_vectors.store import close_store, get_store
    from entity_vectors.tasks import sync_entities

    call_command("migrate", verbosity=0)
    organization = Organization.objects.create(name="Bench", is_ai_data_processing_approved=True)
    teams = [
        Team.objects.create(organization=organization, name=f"Team {index}") for index in range(args.teams)
    ]
    words = [
        "signup",
        "checkout",
        "invoice",
        "upload",
        "share",
        "folder",
        "pricing",
        "trial",
        "cancel",
        "invite",
        "export",
        "report",
    ]
    started = time.perf_counter()
    Action.objects.bulk_create(
        [
            Action(
                team=teams[index % len(teams)],
                name=f"{words[index % len(words)]} {words[(index * 7) % len(words)]} {index}",
                description=f"Tracks {words[(index * 3) % len(words)]} events of flow {index % 97}",
                steps=[
                    {
                        "event": f"{words[index % len(words)]}_done",
                        "url": f"/{words[(index * 5) % len(words)]}",
                    }
                ],
            )
            for index in range(args.entities)
        ],
        batch_size=2000,
    )
    print(f"seeded {args.entities} actions in {time.perf_counter() - started:.1f}s")

    # Measure the flush alone for memory: run the header through the workflow, then trace the flush.
    original_finish = workflow.finish_run
    flush_figures: dict[str, float] = {}

    def traced_finish(run_id: object, store: object = None) -> object:
        tracemalloc.start()
        began = time.perf_counter()
        result = original_finish(run_id, store)  # type: ignore[arg-type]
        flush_figures["seconds"] = time.perf_counter() - began
        flush_figures["peak_mb"] = tracemalloc.get_traced_memory()[1] / 1e6
        tracemalloc.stop()
        return result

    workflow.finish_run = traced_finish  # type: ignore[assignment]
    started = time.perf_counter()
    result = sync_entities.apply(
        kwargs={
            "domain": "action",
            "summarize_batch_size": args.summarize_batch_size,
            "insert_batch_size": args.insert_batch_size,
            "delay_between_batches": 0,
        }
    )
    total = time.perf_counter() - started
    workflow.finish_run = original_finish  # type: ignore[assignment]
    run = SyncRun.objects.get(pk=result.result["run_id"])
    staged = [len(bytes(batch.vectors)) for batch in SyncRunBatch.objects.filter(run=run)]
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    print(f"run: {run.status}, {run.inserted} rows in {total:.1f}s = {run.inserted / total:,.0f} entities/s")
    print(f"  batches: {run.batches_total} of {args.summarize_batch_size}")
    print(
        f"  flush: {flush_figures['seconds']:.1f}s = {run.inserted / flush_figures['seconds']:,.0f} rows/s, "
        f"peak traced memory {flush_figures['peak_mb']:.0f} MB (insert_batch_size={args.insert_batch_size}, "
        f"{args.insert_batch_size * args.dimensions * 4 / 1e6:.0f} MB of float32 per chunk)"
    )
    print(f"  staged payload after flush: {sum(staged)} bytes (cleared), peak RSS {rss_mb:.0f} MB")

    started = time.perf_counter()
    rerun = sync_entities.apply(kwargs={"domain": "action", "delay_between_batches": 0}).result
    print(f"no-op rerun: selected {rerun['selected']}, {time.perf_counter() - started:.2f}s")

    latencies = []
    for index in range(args.searches):
        began = time.perf_counter()
        hits = search_entities(
            "action", teams[index % len(teams)].id, f"{words[index % len(words)]} flow", limit=10
        )
        latencies.append((time.perf_counter() - began) * 1000)
        assert hits, "search found nothing"
    per_team = args.entities // args.teams
    print(
        f"search over {per_team} vectors per team: p50 {statistics.median(latencies):.0f} ms, "
        f"p95 {sorted(latencies)[int(len(latencies) * 0.95) - 1]:.0f} ms"
    )
    print(f"ClickHouse rows: {get_store().count_rows('action')}")
    if args.keep:
        print(f"scratch data kept in {scratch}")
    else:
        close_store()
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
