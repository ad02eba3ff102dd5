"""The pipeline's own tables: its memory (ledger, summaries, changes, versions) and its run history.

The host's entity rows carry `VectorizedModel`'s columns as a mirror for the host's convenience
and for the seed's selection filters; nothing the pipeline decides rests on them, because the
host saves whole rows and a stale instance writes back whatever it loaded.
"""

from __future__ import annotations

from entity_vectors.models.batchapi import BatchApiJob, BatchApiRequest, ProviderBatch
from entity_vectors.models.entities import VectorizedModel
from entity_vectors.models.memory import (
    BudgetReservation,
    Counter,
    DomainVersion,
    EntityChange,
    EntityFailure,
    EntitySummary,
    LedgerEntry,
    Spend,
    SweepState,
)
from entity_vectors.models.runs import SyncRun, SyncRunBatch

__all__ = [
    "BatchApiJob",
    "BatchApiRequest",
    "BudgetReservation",
    "Counter",
    "DomainVersion",
    "EntityChange",
    "EntityFailure",
    "EntitySummary",
    "LedgerEntry",
    "ProviderBatch",
    "Spend",
    "SweepState",
    "SyncRun",
    "SyncRunBatch",
    "VectorizedModel",
]
