"""Batch API jobs after submission: polls, results matched back by custom_id, and the writing run.

`poll_job` (beat's periodic task) brings each provider batch of a job up to date; a finished
batch's results are taken in one transaction that also marks it processed, so a duplicate poll
pays nothing twice. Once every batch is in, a run of exactly the job's entities writes them (see
`submit` for the whole flow).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import structlog
from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone

from entity_vectors import conf
from entity_vectors.bulk import upsert_rows
from entity_vectors.capture.changelog import key_of
from entity_vectors.core.inputs import SyncEntityVectorsInputs
from entity_vectors.exceptions import ProviderProtocolError
from entity_vectors.models import (
    BatchApiJob,
    BatchApiRequest,
    DomainVersion,
    EntitySummary,
    ProviderBatch,
    SyncRun,
)
from entity_vectors.providers.openai import decode_embeddings, summary_of, usage_figure
from entity_vectors.providers.pricing import cost
from entity_vectors.providers.specs import openai_identity
from entity_vectors.workflow.batch_api.submit import (
    CHAT,
    LEASE,
    MAX_WRITE_ATTEMPTS,
    TERMINAL,
    Writer,
    _close,
    _plan,
    _submit_prepared,
    client,
    describe,
)
from entity_vectors.workflow.dry_run import planning_context
from entity_vectors.workflow.failures import Failure, count_failures

log = structlog.get_logger("entity_vectors")


# -- polling -----------------------------------------------------------------------------------


@dataclass
class PollResult:
    """What one poll of a job did."""

    job: BatchApiJob
    polled: bool
    processed: int = 0
    message: str = ""


def poll_job(job_id: int, write: Writer, api: Any = None) -> PollResult:
    """Bring a job one step further, if no other poll holds it.

    `write` starts the run that writes the results (inline in this process,
    `executor.write_job_inline`, or on the workers); it returns the run, closed (inline) or running
    (dispatched to the workers), and is polled until closed.
    """
    now = timezone.now()
    claimed = (
        BatchApiJob.objects.filter(pk=job_id, status__in=BatchApiJob.ACTIVE)
        .filter(Q(leased_until__isnull=True) | Q(leased_until__lt=now))
        .update(leased_until=now + LEASE)
    )
    job = BatchApiJob.objects.get(pk=job_id)
    if not claimed:
        why = "finished" if job.status not in BatchApiJob.ACTIVE else "another poll holds it"
        return PollResult(job, polled=False, message=f"job {job.pk}: not polled ({why})")
    result = PollResult(job, polled=True)
    try:
        api = api or client()
        _submit_prepared(job, api)
        for batch in job.provider_batches.filter(status=ProviderBatch.Status.SUBMITTED).order_by("pk"):
            remote = api.batches.retrieve(batch.provider_batch_id)
            ProviderBatch.objects.filter(pk=batch.pk).update(provider_status=remote.status)
            if remote.status in TERMINAL:
                result.processed += _collect(job, batch, remote, api)
        job.refresh_from_db()
        waiting = job.provider_batches.exclude(status=ProviderBatch.Status.PROCESSED)
        if job.status == BatchApiJob.Status.SUMMARIZING and not waiting.filter(endpoint=CHAT).exists():
            _plan_vectors(job, api)
            job.refresh_from_db()
        if job.status == BatchApiJob.Status.EMBEDDING and not waiting.exists():
            BatchApiJob.objects.filter(pk=job.pk).update(status=BatchApiJob.Status.WRITING)
            job.refresh_from_db()
        if job.status == BatchApiJob.Status.WRITING:
            _write(job, write)
            job.refresh_from_db()
    finally:
        BatchApiJob.objects.filter(pk=job_id).update(leased_until=None)
    job.refresh_from_db()
    result.job = job
    result.message = describe(job)
    return result


def poll_jobs(write: Writer, api: Any = None) -> list[PollResult]:
    """Poll every job in progress (what the periodic task does)."""
    return [
        poll_job(job_id, api=api, write=write)
        for job_id in BatchApiJob.objects.filter(status__in=BatchApiJob.ACTIVE).values_list("pk", flat=True)
    ]


def _plan_vectors(job: BatchApiJob, api: Any) -> None:
    """The chat batches are in: send the new summaries' vectors as embeddings batches."""
    inputs = SyncEntityVectorsInputs.from_kwargs(**job.inputs)
    ready = set(
        BatchApiRequest.objects.filter(
            job=job, kind=BatchApiRequest.Kind.SUMMARY, state=BatchApiRequest.State.READY
        ).values_list("entity_id", flat=True)
    )
    pks = [pk for pk in job.entity_ids if key_of(pk) in ready]
    context = planning_context(inputs, run_id="batch-api")
    if pks and any(spec.embedder.name == "openai" for spec in context.versions):
        _plan(job, context, pks, summaries=False)
        job.refresh_from_db()
        _submit_prepared(job, api)
    BatchApiJob.objects.filter(pk=job.pk).update(status=BatchApiJob.Status.EMBEDDING)


@dataclass
class _Outcome:
    """One result line, judged."""

    request: BatchApiRequest
    summary: str = ""
    vector: bytes | None = None
    error: str = ""
    unrun: bool = False


def _read_lines(api: Any, file_id: str | None) -> list[dict[str, Any]]:
    if not file_id:
        return []
    text = api.files.content(file_id).text
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _collect(job: BatchApiJob, batch: ProviderBatch, remote: Any, api: Any) -> int:
    """Take a finished batch's results, once: returns how many lines it had (0 if taken already)."""
    requests = {request.custom_id: request for request in batch.items.all()}
    results = _read_lines(api, remote.output_file_id) + _read_lines(api, remote.error_file_id)
    judged: dict[str, _Outcome] = {}
    usage = {"prompt": 0, "completion": 0, "embedding": 0}
    model = ""
    dimensions = dict(
        DomainVersion.objects.filter(domain=job.domain).values_list("embedding_version", "dimensions")
    )
    for line in results:
        request = requests.get(str(line.get("custom_id")))
        if request is None:
            continue  # not ours (a custom_id the batch never had): ignored, never guessed
        judged[request.custom_id] = _judge(request, line, batch.endpoint, usage, dimensions)
        model = model or str(((line.get("response") or {}).get("body") or {}).get("model") or "")
    for custom_id, request in requests.items():
        judged.setdefault(custom_id, _Outcome(request, unrun=True))  # a failed batch's lines never ran
    model = conf.chat_model() if batch.endpoint == CHAT else (model or conf.embedding_model())
    spent = cost(model, usage["prompt"] + usage["embedding"], usage["completion"], batch=True)
    with transaction.atomic():
        taken = ProviderBatch.objects.select_for_update().filter(
            pk=batch.pk, status=ProviderBatch.Status.SUBMITTED
        )
        if not taken.exists():
            return 0  # another poll took these results
        _keep(job, list(judged.values()))
        ProviderBatch.objects.filter(pk=batch.pk).update(
            status=ProviderBatch.Status.PROCESSED, provider_status=remote.status, finished_at=timezone.now()
        )
        BatchApiJob.objects.filter(pk=job.pk).update(
            prompt_tokens=F("prompt_tokens") + usage["prompt"],
            completion_tokens=F("completion_tokens") + usage["completion"],
            embedding_tokens=F("embedding_tokens") + usage["embedding"],
            cost_usd=F("cost_usd") + spent,
        )
    counts = {
        "ok": sum(1 for o in judged.values() if not o.error and not o.unrun),
        "failed": sum(1 for o in judged.values() if o.error),
        "unrun": sum(1 for o in judged.values() if o.unrun),
    }
    log.info("batch_api.collected", job=job.pk, batch=remote.id, status=remote.status, **counts)
    return len(judged)


def _judge(
    request: BatchApiRequest,
    line: dict[str, Any],
    endpoint: str,
    usage: dict[str, int],
    dimensions: dict[int, int],
) -> _Outcome:
    """A result line as an outcome: a summary or a vector, a failure, or a line never run."""
    from openai.types.chat import ChatCompletion

    response = line.get("response")
    if not response:
        return _Outcome(request, unrun=True)  # expired or cancelled before it ran
    body = response.get("body") or {}
    if response.get("status_code") != 200:
        message = (body.get("error") or {}).get("message") or json.dumps(body)[:300]
        return _Outcome(request, error=f"Batch API line failed ({response.get('status_code')}): {message}")
    where = "the Batch API"
    try:
        if endpoint == CHAT:
            completion = ChatCompletion.model_validate(body)
            if completion.usage is not None:
                prompt = usage_figure(completion.usage.prompt_tokens, "prompt_tokens", where)
                completion_tokens = usage_figure(
                    completion.usage.completion_tokens, "completion_tokens", where
                )
                usage["prompt"] += prompt
                usage["completion"] += completion_tokens
            return _Outcome(request, summary=summary_of(completion, where, conf.chat_model()))
        # Base64 vectors (as asked for) are not what the SDK's model types hold: read them as given.
        items = [
            SimpleNamespace(index=int(item["index"]), embedding=item["embedding"]) for item in body["data"]
        ]
        usage["embedding"] += usage_figure(
            (body.get("usage") or {}).get("prompt_tokens") or 0, "prompt_tokens", where
        )
        size = dimensions[request.embedding_version]
        decoded = decode_embeddings(items, 1, size, str(body.get("model", "")), where)
    except ProviderProtocolError as exc:
        # The provider's fault, not the entity's: the line is left to the runs, uncounted.
        log.warning("batch_api.line_unusable", job=request.job_id, request=request.pk, error=str(exc))
        return _Outcome(request, unrun=True)
    except Exception as exc:
        return _Outcome(request, error=f"Batch API answer unusable: {type(exc).__name__}: {exc}"[:500])
    if decoded.failures:
        return _Outcome(request, error=f"embedding failed: {decoded.failures[0]}")
    return _Outcome(request, vector=decoded.vectors[0].astype("<f4").tobytes())


def _keep(job: BatchApiJob, outcomes: list[_Outcome]) -> None:
    """Store a batch's outcomes (inside the transaction that marks it processed)."""
    now = timezone.now()
    summaries = [o for o in outcomes if o.summary]
    if summaries:
        _save_summaries(job, summaries, now)
    for outcome in outcomes:
        if outcome.vector is not None:
            BatchApiRequest.objects.filter(pk=outcome.request.pk).update(
                state=BatchApiRequest.State.READY, vector=outcome.vector
            )
    BatchApiRequest.objects.filter(pk__in=[o.request.pk for o in summaries]).update(
        state=BatchApiRequest.State.READY
    )
    failed = [o for o in outcomes if o.error]
    # Failed and never-run lines leave their entities to the runs: no longer pending.
    BatchApiRequest.objects.filter(pk__in=[o.request.pk for o in outcomes if o.error or o.unrun]).delete()
    if failed:
        count_failures(
            job.domain,
            [Failure(o.request.entity_id, o.request.team_id, o.request.input_hash, o.error) for o in failed],
            [],
        )
        recorded = dict(BatchApiJob.objects.values_list("failed", flat=True).get(pk=job.pk))
        recorded.update({o.request.entity_id: conf.redact(o.error)[:500] for o in failed})
        BatchApiJob.objects.filter(pk=job.pk).update(failed=recorded)


def _save_summaries(job: BatchApiJob, outcomes: list[_Outcome], now: Any) -> None:
    """Keep the summaries as a run would, unless a run wrote a newer one since the job started."""
    identity = openai_identity(conf.chat_model())
    keys = [o.request.entity_id for o in outcomes]
    newer = set(
        EntitySummary.objects.filter(domain=job.domain, entity_id__in=keys, summarized_at__gt=job.created_at)
        .exclude(summarized_by="")
        .values_list("entity_id", flat=True)
    )
    upsert_rows(
        EntitySummary,
        ["domain", "entity_id"],
        [
            {
                "domain": job.domain,
                "entity_id": o.request.entity_id,
                "summary": o.summary,
                "input_hash": o.request.content_hash,
                "summarized_by": identity,
                "summarized_at": now,
            }
            for o in outcomes
            if o.request.entity_id not in newer
        ],
        ["summary", "input_hash", "summarized_by", "summarized_at"],
    )


# -- writing -----------------------------------------------------------------------------------


def _write(job: BatchApiJob, write: Writer) -> None:
    """Start (or follow) the run that writes the job's results; finish the job once it is closed."""
    if job.run_id is not None:
        run = SyncRun.objects.get(pk=job.run_id)
        if run.status == SyncRun.Status.RUNNING:
            return  # the workers are at it
        if run.status != SyncRun.Status.SUCCEEDED and job.write_attempts < MAX_WRITE_ATTEMPTS:
            # Not all of it was written: another run writes the rest (what was written is skipped).
            BatchApiJob.objects.filter(pk=job.pk).update(run=None)
            job.run_id = None
        else:
            error = (
                "" if run.status == SyncRun.Status.SUCCEEDED else f"its last writing run ended {run.status}"
            )
            _close(job, BatchApiJob.Status.DONE, error)
            return
    pks = [pk for pk in job.entity_ids if key_of(pk) not in job.failed]
    if not pks:
        _close(job, BatchApiJob.Status.DONE, "")
        return
    # Its work was paid for in the batches: no provider load to spread, no wait between batches.
    inputs = SyncEntityVectorsInputs.from_kwargs(**{**job.inputs, "delay_between_batches": 0})
    run = write(job, inputs, pks)  # never skipped: it runs beside any other writer of the domain
    BatchApiJob.objects.filter(pk=job.pk).update(run=run, write_attempts=F("write_attempts") + 1)
    if run.status != SyncRun.Status.RUNNING:
        job.refresh_from_db()
        _write(job, write)


__all__ = ["PollResult", "poll_job", "poll_jobs"]
