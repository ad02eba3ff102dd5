"""The pipeline's own tables: its memory (ledger, summaries, changes, versions) and its run history.

The host's entity rows carry `VectorizedModel`'s columns as a mirror for the host's convenience
and for the seed's selection filters; nothing the pipeline decides rests on them, because the
host saves whole rows and a stale instance writes back whatever it loaded.
"""

from __future__ import annotations

from entity_vectors.models.batch_api import BatchApiJob, BatchApiRequest, ProviderBatch
from entity_vectors.models.changes import EntityChange, SweepState
from entity_vectors.models.counter import Counter
from entity_vectors.models.embedding_versions import DomainVersion
from entity_vectors.models.entities import VectorizedModel
from entity_vectors.models.ledger import EntityFailure, EntitySummary, LedgerEntry
from entity_vectors.models.runs import EntityClaim, SyncRun, SyncRunBatch
from entity_vectors.models.spend import BudgetReservation, Spend

__all__ = [
    "BatchApiJob",
    "BatchApiRequest",
    "BudgetReservation",
    "Counter",
    "DomainVersion",
    "EntityChange",
    "EntityClaim",
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
