"""Every task's name, defined once: the contract's names and the pipeline's own."""

from __future__ import annotations

# The contract's: the generic entry, and the legacy names kept as thin aliases of it.
ENTRY_TASK = "ai-sync-entity-vectors"
LEGACY_ACTIONS_TASK = "ai-sync-vectors"
LEGACY_COHORTS_TASK = "ai-sync-cohort-vectors"
# A distributed run's chord: one batch task per batch, and the task that flushes and closes.
BATCH_TASK = "ai-sync-entity-vectors-batch"
FINISH_TASK = "ai-sync-entity-vectors-finish"
# Periodic and interactive work.
SWEEP_TASK = "ai-sync-entity-vectors-sweep"
FAST_LANE_TASK = "ai-sync-entity-vectors-fast-lane"
FAST_LANE_POLL_TASK = "ai-sync-entity-vectors-fast-lane-poll"
BATCH_API_TASK = "ai-sync-entity-vectors-batch-api"
