"""One benchmark job in its own process: `python scripts/bench_jobs.py <job> '<json parameters>'`.

Started by `bench.py`, one process per job, so that each job gets its own Django settings
(database, ClickHouse URL, providers, fast lane), its own chdb session and its own peak RSS.
Progress goes to stdout as plain lines, figures as `BENCH-FIGURE {json}` lines. The pipeline's
jobs live in `bench_pipeline.py`, the store's (flush, memory, search) in `bench_store.py`, the
freshness job in `bench_fresh.py`, the fairness job in `bench_fair.py`.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import bench_fair
import bench_fresh
import bench_infra as infra
import bench_pipeline
import bench_store

JOBS: dict[str, Callable[[dict[str, Any]], None]] = {
    "inline": bench_pipeline.job_inline,
    "workers": bench_pipeline.job_workers,
    "freshness": bench_fresh.job_freshness,
    "fairness": bench_fair.job_fairness,
    "flush": bench_store.job_flush,
    "memory": bench_store.job_memory,
    "search": bench_store.job_search,
}


def main() -> int:
    """Run the job named on the command line."""
    infra.interruptible()
    try:
        JOBS[sys.argv[1]](json.loads(sys.argv[2]))
    except KeyboardInterrupt:
        print("    interrupted; job cleaned up", flush=True)
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
