"""One run as plain functions, a module per stage; `tasks.py` adapts them to Celery.

- `selection`: which entities a run must look at (a snapshot of primary keys);
- `start`: validate, lock, snapshot, record the run and its batches;
- `batch` (with `plan` and `vectorize`): decide against the ledger, summarize and embed, stage;
- `flush` (with `ledger` and `staging`): insert staged rows, confirm them in the ledger;
- `finish`: close the run, free its lock; the sweeper's housekeeping (with `reconcile`);
- `executor`: the inline executor (the distributed one is the chord in `tasks.py`).

Nothing here imports Celery.
"""

from __future__ import annotations

from entity_vectors.workflow.batch import BatchDeferred, process_batch
from entity_vectors.workflow.context import BatchOutcome, RunContext, VersionSpec
from entity_vectors.workflow.executor import execute_inline, run_inline
from entity_vectors.workflow.finish import (
    close_run,
    expire_abandoned_runs,
    finish_run,
    flush_and_close,
    prune_runs,
)
from entity_vectors.workflow.flush import FlushResult, flush_staged
from entity_vectors.workflow.plan import build_properties, summary_input_hash
from entity_vectors.workflow.selection import select_entity_ids
from entity_vectors.workflow.stage import fail_batch
from entity_vectors.workflow.start import PlannedBatch, StartedRun, plan_run, start_run
from entity_vectors.workflow.sweep import sweep

__all__ = [
    "BatchDeferred",
    "BatchOutcome",
    "FlushResult",
    "PlannedBatch",
    "RunContext",
    "StartedRun",
    "VersionSpec",
    "build_properties",
    "close_run",
    "execute_inline",
    "expire_abandoned_runs",
    "fail_batch",
    "finish_run",
    "flush_and_close",
    "flush_staged",
    "plan_run",
    "process_batch",
    "prune_runs",
    "run_inline",
    "select_entity_ids",
    "start_run",
    "summary_input_hash",
    "sweep",
]
