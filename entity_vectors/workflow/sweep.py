"""The sweeper's tick: close abandoned runs, release lapsed budget reservations, prune history,
reconcile one page of each side per domain."""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal

import structlog

from entity_vectors import conf
from entity_vectors.core.registry import default_registry
from entity_vectors.store import get_store
from entity_vectors.workflow import budget, claims
from entity_vectors.workflow.finish import expire_abandoned_runs, prune_runs
from entity_vectors.workflow.reconcile import reconcile_page, scan_page

log = structlog.get_logger("entity_vectors")


@dataclass
class SweepResult:
    """What one tick did."""

    closed: list[str] = field(default_factory=list)
    pruned: int = 0
    released_usd: Decimal = Decimal(0)
    queued: dict[str, int] = field(default_factory=dict)


def sweep() -> SweepResult:
    """One tick of the sweeper (every few minutes from beat)."""
    result = SweepResult(closed=[str(run.id) for run in expire_abandoned_runs()], pruned=prune_runs())
    result.released_usd = budget.release()  # reservations that outlived their lease
    claims.release_expired()  # claims that outlived theirs (their writer died)
    store = get_store()
    for config in default_registry.configs():
        try:
            result.queued[config.domain_name] = reconcile_page(config, store) + scan_page(config)
        except Exception as exc:  # one domain's trouble does not stop the others' housekeeping
            log.warning("sync.reconcile_failed", domain=config.domain_name, error=conf.redact(str(exc)))
    return result
