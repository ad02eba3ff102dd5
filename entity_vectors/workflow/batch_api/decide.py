"""Whether a run's work goes to the Batch API: a selection at ENTITY_VECTORS_BATCH_API_THRESHOLD or
above starts a job (half price, results within a day) and the run leaves that work to it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import structlog

from entity_vectors import conf
from entity_vectors.core.inputs import SyncEntityVectorsInputs
from entity_vectors.workflow.batch_api.jobs import active_job, applies
from entity_vectors.workflow.batch_api.submit import start_job

log = structlog.get_logger("entity_vectors")


def hand_over_large_selection(inputs: SyncEntityVectorsInputs, entity_ids: Sequence[Any]) -> None:
    """Above the threshold, a Batch API job takes the OpenAI work; the run leaves it to the job
    (its batches find the entities awaiting the job's requests and pass over them)."""
    threshold = conf.batch_api_threshold()
    if not threshold or len(entity_ids) < threshold:
        return
    if not applies(inputs.domain) or active_job(inputs.domain) is not None:
        return
    try:
        job = start_job(inputs, entity_ids)
    except Exception as exc:  # the live path still works: never fail a run for the cheaper one
        log.warning("batch_api.start_failed", domain=inputs.domain, error=conf.redact(repr(exc)))
        return
    log.info("batch_api.job_started", domain=inputs.domain, job=job.pk, requests=job.requests)
