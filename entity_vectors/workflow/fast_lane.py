"""The fast lane's pass: a committed change is searchable within seconds, not at the next beat tick.

After a transaction that changed a registered entity commits, `capture.fast_lane` sends one
fast-lane task for the domain, at most one per ENTITY_VECTORS_FAST_LANE_DELAY seconds. The
task takes the domain's pending changes from the change log and processes exactly those entities
as a small run, under the domain's run lock, through the same stages and ledger: an entity is
never written from two places at once. If a run holds the lock, the pass comes back shortly;
beat's runs stay the safety net.
"""

from __future__ import annotations

from typing import Any

import structlog

from entity_vectors import conf
from entity_vectors.capture.changelog import pending_changes
from entity_vectors.capture.fast_lane import debounce, kick_fast_lane
from entity_vectors.core.embedding_versions import served_version
from entity_vectors.core.inputs import SyncEntityVectorsInputs
from entity_vectors.core.registry import get_entity_config
from entity_vectors.models import SyncRun
from entity_vectors.workflow.executor import execute_inline
from entity_vectors.workflow.selection import to_pks
from entity_vectors.workflow.start import start_run

log = structlog.get_logger("entity_vectors")


def run_fast_lane(domain: str, task_id: str = "") -> dict[str, Any]:
    """One pass over a domain's pending changes (the fast-lane task's body).

    Returns a small dict; `"status": "locked"` means a run holds the domain's lock and the pass
    should come back later.
    """
    config = get_entity_config(domain)
    debounce(domain, hold=False)  # before the read: a change committed after it sends a new pass
    keys = pending_changes(domain, limit=conf.fast_lane_max_entities(), fresh=True)
    if not keys:
        return {"status": "nothing to do", "domain": domain}
    inputs = SyncEntityVectorsInputs(
        domain=domain, delay_between_batches=0, embedding_version=served_version(domain)
    )
    started = start_run(inputs, task_id=task_id, mode=SyncRun.Mode.INLINE, entity_ids=to_pks(config, keys))
    if started.skipped:
        debounce(domain, hold=True)  # this pass comes back: changes meanwhile wait for it
        return {"status": "locked", "domain": domain, "reason": started.run.error}
    run = execute_inline(started, shared_limits=True)
    stuck = (
        run.parked + run.over_budget + run.awaiting_batch_api + run.summary_failures + run.embedding_failures
    )
    if len(keys) >= conf.fast_lane_max_entities() and run.selected > stuck:
        # More may wait, and this pass moved: another pass. One that moved nothing queues none.
        kick_fast_lane(domain)
    return {
        "status": "finished",
        "domain": domain,
        "run_id": str(run.id),
        "run_status": run.status,
        **run.counts(),
    }
