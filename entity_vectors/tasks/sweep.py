"""The sweeper's periodic task: close runs whose callback never came, release lapsed reservations, prune history, reconcile."""

from __future__ import annotations

from typing import Any

from entity_vectors import workflow
from entity_vectors.tasks.names import SWEEP_TASK
from entity_vectors.tasks.policy import FLUSH_SOFT_LIMIT, entity_task


@entity_task(SWEEP_TASK, soft_time_limit=FLUSH_SOFT_LIMIT)
def sweep_runs(self: Any) -> dict[str, Any]:
    """Close runs whose callback never came, prune history, reconcile a page of each domain."""
    result = workflow.sweep()
    return {"closed": result.closed, "pruned": result.pruned, "queued": result.queued}
