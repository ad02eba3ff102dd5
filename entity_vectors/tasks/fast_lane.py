"""The fast lane's tasks: a pass over a domain's fresh changes, and the poll that sends passes for
changes no signal saw. Both go to the interactive queue (ENTITY_VECTORS_FAST_QUEUE), so a pass
never waits in the broker behind the batch tasks of a large run.

A worker that consumes the batch queue consumes the fast queue too (`consume_fast_queue`), so a
deployment that names only the batch queue (`-Q max-ai-task-queue`) still runs passes; a small
worker of its own (`-Q max-ai-task-queue-fast`), with ENTITY_VECTORS_FAST_LANE_ON_BATCH_WORKERS
off on the batch workers, keeps them off the processes a backfill occupies.
"""

from __future__ import annotations

import uuid
from typing import Any

from celery.signals import celeryd_after_setup

from entity_vectors import conf
from entity_vectors.capture.fast_lane import local_lane, use_sender
from entity_vectors.tasks.names import FAST_LANE_POLL_TASK, FAST_LANE_TASK
from entity_vectors.tasks.policy import BATCH_SOFT_LIMIT, ENTRY_SOFT_LIMIT, entity_task
from entity_vectors.tasks.sync import sync_entities
from entity_vectors.workflow.fast_lane import poll_fast_lane, run_fast_lane


@entity_task(FAST_LANE_TASK, soft_time_limit=BATCH_SOFT_LIMIT, display=lambda kw: f"fast lane {kw['domain']}")
def fast_lane(self: Any, domain: str, trailing: bool = False) -> dict[str, Any]:
    """Process a domain's fresh changes now, through the same stages, claims and ledger as a run."""
    result = run_fast_lane(domain, task_id=self.request.id or "", trailing=trailing)
    if result.overflow:
        # More changed than a pass takes (an import): a run takes the rest, beside this lane.
        sync_entities.apply_async(kwargs={"domain": domain}, queue=conf.queue())
    return result.as_dict()


@entity_task(FAST_LANE_POLL_TASK, soft_time_limit=ENTRY_SOFT_LIMIT, display=lambda kw: "fast lane poll")
def poll_fast_lanes(self: Any) -> dict[str, Any]:
    """Send a pass of each domain with changes no pass has taken: those of `QuerySet.update()`,
    raw SQL, `bulk_create` and cascades, which the triggers log and no signal sees."""
    return {"sent": poll_fast_lane()}


def send_fast_lane(domain: str, countdown: float, trailing: bool) -> None:
    """Send a pass of `domain` to the fast queue, `countdown` seconds from now."""
    fast_lane.apply_async(
        kwargs={"domain": domain, "trailing": trailing},
        queue=conf.fast_queue(),
        countdown=countdown or None,
    )


@celeryd_after_setup.connect(weak=False, dispatch_uid="entity_vectors.tasks.fast_lane.consume_fast_queue")
def consume_fast_queue(sender: Any = None, instance: Any = None, **_: Any) -> None:
    """A starting worker that consumes the batch queue consumes the fast queue too (unless
    ENTITY_VECTORS_FAST_LANE_ON_BATCH_WORKERS is off)."""
    if instance is None or not conf.fast_lane_on_batch_workers():
        return
    queues = instance.app.amqp.queues
    selected = queues.consume_from
    if selected is None or (conf.queue() in selected and conf.fast_queue() not in selected):
        queues.select_add(conf.fast_queue())


def run_here(domain: str) -> bool:
    """A pass of `domain` in this process (a web process with no workers: `capture.fast_lane.local_lane`).
    More changed than a pass takes: an inline run takes the rest, here too. Never more to do after."""
    result = run_fast_lane(domain, task_id=f"fast-lane-{uuid.uuid4()}", shared_limits=False)
    if result.overflow:
        sync_entities.apply(kwargs={"domain": domain})
    return False


use_sender(send_fast_lane)  # committed changes of this process send passes from now on
local_lane.use_runner(run_here)  # ...or, with no workers, run them here if it serves requests
