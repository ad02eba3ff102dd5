"""Celery adapters: each task turns JSON kwargs into typed values, calls the workflow, returns a small dict.

- `sync`: the entry task (`sync_entities`, `ai-sync-entity-vectors`) and its legacy names, and a
  distributed run's chord (a batch task per batch, then the finishing task);
- `fast_lane`, `batch_api`, `sweep`: the interactive and periodic tasks;
- `names` (every task name, once), `policy` (the one task policy), `metrics` (task counts and
  durations), `schedule` (the beat entries).

The task policy is declared once, in `policy.entity_task`: stable names, acks_late with
reject_on_worker_lost (every task here is idempotent), soft and hard time limits, and Celery's
own `autoretry_for` with exponential backoff and jitter for transient errors only. The package
uses `shared_task` and never imports the host's Celery app.

Importing this package sets nothing of Django up (Celery's configuration imports `schedule` before
Django is ready): the task modules are imported when the app is ready (`load`), and the tasks are
importable from here by name (`from entity_vectors.tasks import sync_entities`).
"""

from __future__ import annotations

import importlib
from typing import Any

from celery.signals import after_setup_logger, after_setup_task_logger

from entity_vectors.conf.redaction import redact_handlers
from entity_vectors.tasks import metrics, policy

# Where each task is defined.
TASKS = {
    "sync_entities": "sync",
    "sync_action_vectors": "sync",
    "sync_cohort_vectors": "sync",
    "sync_batch": "sync",
    "finish_sync": "sync",
    "fast_lane": "fast_lane",
    "poll_fast_lanes": "fast_lane",
    "poll_batch_api": "batch_api",
    "sweep_runs": "sweep",
}

__all__ = sorted(TASKS)

del metrics, policy  # imported for their signal receivers (task metrics; worker start-up)
# Celery's own handlers (worker and beat) redact secrets too. A worker checks its settings on
# worker_init (`policy.refuse_bad_worker`), beat before it reads its schedule (`schedule`).
after_setup_logger.connect(redact_handlers, weak=False)
after_setup_task_logger.connect(redact_handlers, weak=False)


def load() -> None:
    """Import every task module, so that the tasks are registered (when the Django app is ready)."""
    from entity_vectors.tasks import batch_api, fast_lane, sweep, sync

    del batch_api, fast_lane, sweep, sync


def __getattr__(name: str) -> Any:
    module = TASKS.get(name)
    if module is None:
        raise AttributeError(f"module 'entity_vectors.tasks' has no attribute {name!r}")
    return getattr(importlib.import_module(f"entity_vectors.tasks.{module}"), name)
