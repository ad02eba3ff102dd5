"""The fast lane's pass: a committed change is searchable within seconds, not at the next beat tick.

A pass takes the domain's fresh changes from the change log, newest first and at most
ENTITY_VECTORS_FAST_LANE_MAX_ENTITIES of them (`changelog.pending_changes(fresh=True)`: none set
aside for the runs, none of an entity another writer holds), and processes exactly those entities
as a small run, through the same stages, claims and ledger as any run, beside whatever else is at
work on the domain. It works in the interactive lane: its own queue, a reserved share of the
provider's rate budget, and one brief retry of a failing request, so a failing entity (set aside
by its batch) costs the pass a second, not the provider's full retries.

More fresh changes than a pass takes (an import, a `bulk_create`) are set aside for a run, which
the task then requests: the lane stays for edits, and a later edit's pass takes only its own.

Passes are sent once a change commits (`capture.fast_lane`: leading edge, one trailing pass), and
by the poll (`poll_fast_lane`, every ENTITY_VECTORS_FAST_LANE_POLL_SECONDS from beat) for changes
no signal saw: `QuerySet.update()`, raw SQL, `bulk_create`, cascades, which the triggers log.
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass, field
from typing import Any

import structlog

from entity_vectors import conf
from entity_vectors.capture.changelog import fresh_pending, newest_change, pending_changes, set_aside
from entity_vectors.capture.fast_lane import kick_fast_lane, trailing_pass_started
from entity_vectors.core.embedding_versions import served_version
from entity_vectors.core.inputs import SyncEntityVectorsInputs
from entity_vectors.core.registry import default_registry, get_entity_config
from entity_vectors.models import SyncRun
from entity_vectors.workflow.executor import execute_inline
from entity_vectors.workflow.selection import to_pks
from entity_vectors.workflow.start import start_run

log = structlog.get_logger("entity_vectors")


@dataclass
class PassResult:
    """What one pass did: `overflow` means it set changes aside for a run (the task requests it)."""

    status: str
    domain: str
    taken: int = 0
    set_aside: int = 0
    overflow: bool = False
    run_id: str = ""
    run_status: str = ""
    counts: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """The task's result (what Flower shows)."""
        result = asdict(self)
        return {**result.pop("counts"), **result}


def run_fast_lane(
    domain: str, task_id: str = "", trailing: bool = False, shared_limits: bool = True
) -> PassResult:
    """One pass over a domain's fresh changes (the fast-lane task's body).

    `trailing`: the pass its window scheduled; it reopens the window to later changes before it
    reads the change log, so a change committed after the read sends a pass of its own.
    `shared_limits`: count its requests against the limits every worker shares (Redis), not this
    process's own (a web process's pass with no workers: `capture.fast_lane`'s local lane).
    """
    config = get_entity_config(domain)
    if trailing:
        trailing_pass_started(domain)
    limit = conf.fast_lane_max_entities()
    newest = newest_change(domain)
    keys = pending_changes(domain, limit=limit + 1, fresh=True)
    result = PassResult(status="nothing to do", domain=domain, overflow=len(keys) > limit)
    if result.overflow:
        keys = dict(itertools.islice(keys.items(), limit))  # the newest: the edits of now
        result.set_aside = set_aside(domain, up_to=newest, taken=keys)
        log.info("sync.fast_lane_overflow", domain=domain, taken=len(keys), set_aside=result.set_aside)
    if not keys:
        return result
    inputs = SyncEntityVectorsInputs(
        domain=domain, delay_between_batches=0, embedding_version=served_version(domain)
    )
    started = start_run(inputs, task_id=task_id, mode=SyncRun.Mode.INLINE, entity_ids=to_pks(config, keys))
    run = execute_inline(started, shared_limits=shared_limits, interactive=True)
    result.status = "finished"
    result.taken = len(keys)
    result.run_id = str(run.id)
    result.run_status = str(run.status)
    result.counts = run.counts()
    return result


def poll_fast_lane() -> list[str]:
    """Send a pass of every domain with fresh changes no pass has taken (one query per domain when
    nothing is pending); returns the domains a pass was sent for."""
    sent = []
    for domain in default_registry.domains():
        if fresh_pending(domain) and kick_fast_lane(domain):
            sent.append(domain)
    return sent
