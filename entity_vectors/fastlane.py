"""The fast lane: a committed change is searchable within seconds, not at the next beat tick.

After a transaction that changed a registered entity commits, `kick_fast_lane` sends one
fast-lane task for the domain, at most one per ENTITY_VECTORS_FAST_LANE_DELAY seconds (a Redis
key debounces a burst: 100 edits of one entity in a second cost one pass and one summary). The
task takes the domain's pending changes from the change log and processes exactly those entities
as a small run, under the domain's run lock, through the same stages and ledger: an entity is
never written from two places at once. If a run holds the lock, the pass comes back shortly;
beat's runs stay the safety net.
"""

from __future__ import annotations

import math
from typing import Any

import structlog

from entity_vectors import conf
from entity_vectors.changes import pending_changes
from entity_vectors.domain_versions import served_version
from entity_vectors.inputs import SyncEntityVectorsInputs
from entity_vectors.models import SyncRun

log = structlog.get_logger("entity_vectors")

FAST_LANE_TASK = "ai-sync-entity-vectors-fast-lane"
# How long past its countdown a due pass keeps later changes from sending another.
DEBOUNCE_MARGIN_SECONDS = 30


def _debounce_key(domain: str) -> str:
    return f"entity-vectors:fast-lane:{domain}"


def _debounce(domain: str, hold: bool) -> bool:
    """Take (hold=True; False if already taken) or release the domain's "a pass is due" key.

    The key is released by the pass itself before it reads the change log, so a change committed
    after that read always sends a new pass; its expiry only matters if a pass never starts (a
    lost task), and only costs a duplicate pass when it ends too early.
    """
    import redis

    url = conf.limiter_url()
    if url is None:
        return True
    client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)
    try:
        if not hold:
            client.delete(_debounce_key(domain))
            return True
        expiry = math.ceil(conf.fast_lane_delay()) + DEBOUNCE_MARGIN_SECONDS
        return bool(client.set(_debounce_key(domain), "1", nx=True, ex=expiry))
    finally:
        client.close()


def kick_fast_lane(domain: str) -> bool:
    """Schedule a fast-lane pass for `domain` unless one is already due; True if one was sent."""
    from celery import current_app

    if not _debounce(domain, hold=True):
        return False
    current_app.send_task(
        FAST_LANE_TASK, kwargs={"domain": domain}, queue=conf.queue(), countdown=conf.fast_lane_delay()
    )
    return True


def run_fast_lane(domain: str, task_id: str = "") -> dict[str, Any]:
    """One pass over a domain's pending changes (the fast-lane task's body).

    Returns a small dict; `"status": "locked"` means a run holds the domain's lock and the pass
    should come back later.
    """
    from entity_vectors import workflow
    from entity_vectors.registry import get_entity_config
    from entity_vectors.workflow.selection import to_pks

    config = get_entity_config(domain)
    _debounce(domain, hold=False)  # before the read: a change committed after it sends a new pass
    keys = pending_changes(domain, limit=conf.fast_lane_max_entities(), fresh=True)
    if not keys:
        return {"status": "nothing to do", "domain": domain}
    inputs = SyncEntityVectorsInputs(
        domain=domain, delay_between_batches=0, embedding_version=served_version(domain)
    )
    started = workflow.start_run(
        inputs, task_id=task_id, mode=SyncRun.Mode.INLINE, entity_ids=to_pks(config, keys)
    )
    if started.skipped:
        _debounce(domain, hold=True)  # this pass comes back: changes meanwhile wait for it
        return {"status": "locked", "domain": domain, "reason": started.run.error}
    run = workflow.execute_inline(started, shared_limits=True)
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
