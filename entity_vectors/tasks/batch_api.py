"""The Batch API's periodic task: every job a step further; a job whose results are in gets its writing run."""

from __future__ import annotations

from typing import Any

from entity_vectors import conf, workflow
from entity_vectors.core.inputs import SyncEntityVectorsInputs
from entity_vectors.models import SyncRun
from entity_vectors.tasks.names import BATCH_API_TASK
from entity_vectors.tasks.policy import FLUSH_SOFT_LIMIT, entity_task
from entity_vectors.tasks.sync import _dispatch
from entity_vectors.workflow.executor import write_job_inline


@entity_task(BATCH_API_TASK, soft_time_limit=FLUSH_SOFT_LIMIT, display=lambda kw: "Batch API poll")
def poll_batch_api(self: Any) -> dict[str, Any]:
    """Bring every Batch API job a step further; a job whose results are in gets its writing run."""
    from entity_vectors.workflow.batch_api import poll as batchapi_poll

    inline = bool(self.request.is_eager) or conf.inline_by_default()

    def write(job: Any, inputs: SyncEntityVectorsInputs, pks: list[Any]) -> SyncRun:
        if inline:
            return write_job_inline(job, inputs, pks)
        started = workflow.start_run(
            inputs,
            task_id=f"batch-api-{job.pk}",
            mode=SyncRun.Mode.DISTRIBUTED,
            entity_ids=pks,
            kind=SyncRun.Kind.BATCH_API,
        )
        if not started.skipped and not started.already_dispatched:
            try:
                _dispatch(started, inputs)
            except BaseException as exc:
                workflow.close_run(str(started.run.id), error=f"could not dispatch the run's tasks: {exc!r}")
                raise
        return started.run

    results = batchapi_poll.poll_jobs(write=write)
    return {"jobs": [{"job": r.job.pk, "status": r.job.status, "polled": r.polled, "processed": r.processed} for r in results]}
