"""The fast lane's task: a domain's recent changes processed now, through the same stages and ledger as a run."""

from __future__ import annotations

from typing import Any

from entity_vectors import conf
from entity_vectors.capture.fast_lane import use_sender
from entity_vectors.tasks.names import FAST_LANE_TASK
from entity_vectors.tasks.policy import BATCH_SOFT_LIMIT, entity_task
from entity_vectors.tasks.sync import _defer
from entity_vectors.workflow.fast_lane import run_fast_lane

# How often a fast-lane pass waits for a running run to free the lock before leaving it to beat.
FAST_LANE_MAX_WAITS = 30


@entity_task(FAST_LANE_TASK, soft_time_limit=BATCH_SOFT_LIMIT, display=lambda kw: f"fast lane {kw['domain']}")
def fast_lane(self: Any, domain: str) -> dict[str, Any]:
    """Process a domain's recent changes now, through the same stages and ledger as a run."""
    result = run_fast_lane(domain, task_id=self.request.id or "")
    if result["status"] == "locked" and not self.request.is_eager:
        _defer(self, max(conf.fast_lane_delay(), 1.0) * 2, limit=FAST_LANE_MAX_WAITS)
    return result


def send_fast_lane(domain: str) -> None:
    """Send a fast-lane pass of `domain`, after ENTITY_VECTORS_FAST_LANE_DELAY (a burst costs one)."""
    fast_lane.apply_async(kwargs={"domain": domain}, queue=conf.queue(), countdown=conf.fast_lane_delay())


use_sender(send_fast_lane)  # committed changes of this process send passes from now on
