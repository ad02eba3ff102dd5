"""One run as plain functions, a module per stage; `entity_vectors.tasks` adapts them to Celery.

A run, in the order it happens (`executor.run_inline` reads this way):

- `start`: validate, snapshot the ids to process (`selection`), plan and record the run's batches;
- `batch`: one batch: load its entities (`load`), decide each against the ledger (`plan`,
  `ledger`), reserve their owners' budget (`budget`), summarize and embed (`vectorize`, through
  `access`), and stage the rows (`staging`, in the compact `payload`); what it keeps besides its
  rows: `summaries`, `failures`;
- `flush`: insert staged rows into ClickHouse and confirm them in the ledger;
- `finish`: close the run (its figures from its batches: `tally`); `sweep` and `reconcile`: the
  sweeper's housekeeping;
- `executor`: the inline executor (the distributed one is the chord in `entity_vectors.tasks`).

Beside it: `fast_lane` (a pass over recent changes), `dry_run` (what a run would do and cost), and
`batch_api/` (OpenAI's Batch API: whether a run hands its work to a job, and the job itself).
Shared values: `context` (the run's context, a batch's outcome), `progress` (liveness).

Nothing here imports Celery.
"""

from __future__ import annotations

from entity_vectors.workflow.batch import BatchDeferred, process_batch
from entity_vectors.workflow.context import BatchOutcome, EmbeddingVersionSpec, RunContext
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
from entity_vectors.workflow.staging import fail_batch
from entity_vectors.workflow.start import PlannedBatch, StartedRun, plan_run, start_run
from entity_vectors.workflow.sweep import sweep

__all__ = [
    "BatchDeferred",
    "BatchOutcome",
    "EmbeddingVersionSpec",
    "FlushResult",
    "PlannedBatch",
    "RunContext",
    "StartedRun",
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
