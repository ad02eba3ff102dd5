"""Backfills through OpenAI's Batch API: the same summaries and vectors at half price, within a day.

A job goes summarizing -> embedding -> writing -> done:

1. `start_job` plans the work the way a run would (same selection, same ledger decisions), and
   writes one request per entity and kind into JSONL files (custom_id = the request's row),
   uploads them and creates the provider's batches. Entities needing a summary get a chat
   request; entities whose summary is known but whose vector is not get an embeddings request.
2. `poll_job`, called by a periodic task, brings each batch up to date. A finished batch's result
   files are read and matched back by custom_id (never by position): summaries are kept (as a
   run keeps them), vectors wait in their request rows, failed lines count as the entity's
   failure (it stays eligible, and is parked after repeated failures), lines never run (an
   expired or failed batch) fall back to the normal path. Once the chat batches are in, the new
   summaries' vectors go out as a second batch.
3. A run of exactly the job's entities then writes everything through the same stages and ledger
   as any run, with the job's vectors and no provider call for them.

The job's state lives in the database. A poll takes the job's lease (a second poll meanwhile
does nothing), and each provider batch's results are taken in one transaction that also marks
it processed, so a duplicate poll pays nothing twice and a killed worker loses nothing: a batch
whose creation was not recorded is found again by the key in its metadata, never created twice.
While a request is pending, runs (beat's, the fast lane's) leave its entity to the job, unless
the entity changed since (see `workflow.awaiting`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from types import SimpleNamespace
from typing import Any

import structlog
from django.db import IntegrityError, transaction
from django.db.models import F, Q
from django.utils import timezone

from entity_vectors import conf
from entity_vectors.bulk import upsert_rows
from entity_vectors.changes import key_of
from entity_vectors.domain_versions import ensure_version
from entity_vectors.exceptions import ConfigurationError
from entity_vectors.inputs import SyncEntityVectorsInputs
from entity_vectors.models import (
    BatchApiJob,
    BatchApiRequest,
    DomainVersion,
    EntitySummary,
    ProviderBatch,
    SyncRun,
)
from entity_vectors.pricing import cost
from entity_vectors.providers import check_provider_settings
from entity_vectors.providers.openai import chat_request, decode_embeddings, embedding_request, summary_of
from entity_vectors.providers.specs import openai_identity
from entity_vectors.workflow import ledger
from entity_vectors.workflow.context import BatchOutcome, RunContext
from entity_vectors.workflow.load import load_batch
from entity_vectors.workflow.memory import Failure, count_failures
from entity_vectors.workflow.plan import EMBED, decide_live
from entity_vectors.workflow.selection import select_entity_ids
from entity_vectors.workflow.vectorize import error_text

log = structlog.get_logger("entity_vectors")

CHAT = "/v1/chat/completions"
EMBEDDINGS = "/v1/embeddings"
# A poll holds its job this long at most (a poll that died frees it then).
LEASE = timedelta(minutes=15)
# OpenAI takes batch files of up to 200 MB; stay clear of it.
MAX_FILE_BYTES = 190 * 1024 * 1024
TERMINAL = ("completed", "failed", "expired", "cancelled")
# How many polls may try to submit a batch the provider refuses before it is given up.
MAX_SUBMIT_ATTEMPTS = 10
# How many runs may try to write a job's results before it gives up (its entities stay eligible).
MAX_WRITE_ATTEMPTS = 3


def applies() -> bool:
    """Whether the configured providers have anything for OpenAI's Batch API to do."""
    return conf.summarizer_name() == "openai" or conf.embedder_name() == "openai"


def active_job(domain: str) -> BatchApiJob | None:
    """The domain's job in progress, if any (there is at most one)."""
    return BatchApiJob.objects.filter(domain=domain, status__in=BatchApiJob.ACTIVE).first()


def client() -> Any:
    """A synchronous OpenAI client for files and batches (the SDK's own retries, which suit them)."""
    from openai import OpenAI

    return OpenAI(
        api_key=conf.openai_api_key(),
        base_url=conf.openai_base_url() or "https://api.openai.com/v1",
        timeout=conf.provider_timeout(),
        max_retries=conf.provider_max_retries(),
    )


# Starts the run that writes a job's results, given the entities: inline, or on the workers.
Writer = Callable[[BatchApiJob, SyncEntityVectorsInputs, list[Any]], SyncRun]


@dataclass
class _Line:
    request: BatchApiRequest
    body: dict[str, Any]


# -- starting ----------------------------------------------------------------------------------


def start_job(
    inputs: SyncEntityVectorsInputs, entity_ids: Sequence[Any] | None = None, api: Any = None
) -> BatchApiJob:
    """Plan the work of a run of `inputs` (or of exactly `entity_ids`) and submit it as batches.

    Returns the domain's job already in progress if there is one. A job with nothing for the
    Batch API to do is recorded as done at once.
    """
    from entity_vectors.dryrun import planning_context  # it builds on the workflow too

    if not applies():
        raise ConfigurationError(
            "the Batch API is OpenAI's: set ENTITY_VECTORS_SUMMARIZER=openai or ENTITY_VECTORS_EMBEDDER=openai "
            "(and OPENAI_API_KEY)"
        )
    check_provider_settings()
    planning_context(inputs)  # checks the version before anything is recorded
    ensure_version(inputs.domain, inputs.embedding_version)  # as a run would: its vectors are for it
    context = planning_context(inputs, run_id="batch-api")
    existing = active_job(inputs.domain)
    if existing is not None:
        return existing
    try:
        with transaction.atomic():
            job = BatchApiJob.objects.create(domain=inputs.domain, inputs=inputs.as_dict())
    except IntegrityError:  # another job started meanwhile
        found = active_job(inputs.domain)
        if found is None:
            raise
        return found
    pks = list(entity_ids) if entity_ids is not None else select_entity_ids(context)
    try:
        planned = _plan(job, context, pks, summaries=True)
    except BaseException as exc:
        _close(job, BatchApiJob.Status.FAILED, f"planning failed: {conf.redact(repr(exc))}")
        raise
    if not planned:
        _close(job, BatchApiJob.Status.DONE, "nothing for the Batch API: every selected entity is up to date")
        return job
    job.refresh_from_db()
    _submit_prepared(job, api or client())
    log.info("batch_api.started", domain=job.domain, job=job.pk, requests=job.requests)
    return job


def _plan(job: BatchApiJob, context: RunContext, pks: Sequence[Any], summaries: bool) -> int:
    """Write the requests for `pks` (a summary where one is missing, else vectors) into batches.

    Returns how many requests were planned. Entities the job already has are not added again.
    """
    config = context.config
    inputs = context.inputs
    versions = context.versions
    chat_model = conf.chat_model()
    prompt = config.get_summary_prompt()
    max_summary = conf.max_summary_input_tokens()
    max_embedding = conf.max_embedding_input_tokens()
    lines: dict[str, list[_Line]] = {CHAT: [], EMBEDDINGS: []}
    known = set(job.entity_ids)
    added: list[Any] = []
    for offset in range(0, len(pks), inputs.summarize_batch_size):
        chunk = pks[offset : offset + inputs.summarize_batch_size]
        works = load_batch(context, chunk, BatchOutcome(), readonly=True)
        entries = ledger.load_entries(
            context.domain, [work.key for work in works], [s.version for s in versions]
        )
        chunk_lines: list[_Line] = []
        for work in works:
            if not work.live or work.parked or work.error:
                continue
            base = {
                "job": job,
                "domain": context.domain,
                "entity_id": work.key,
                "team_id": work.team_id,
                "input_hash": work.input_hash,
            }
            if work.summary is None:
                if summaries and conf.summarizer_name() == "openai":
                    body, _ = chat_request(chat_model, prompt, work.description, max_summary)
                    request = BatchApiRequest(
                        kind=BatchApiRequest.Kind.SUMMARY, content_hash=work.input_hash, **base
                    )
                    chunk_lines.append(_Line(request, body))
                continue
            decide_live(
                config, work, {s.version: entries.get((work.key, s.version)) for s in versions}, versions
            )
            for version, version_work in work.versions.items():
                embedder = version_work.spec.embedder
                if version_work.action != EMBED or embedder.name != "openai":
                    continue
                body, _ = embedding_request(
                    embedder.model, embedder.dimensions, [work.summary], max_embedding
                )
                request = BatchApiRequest(
                    kind=BatchApiRequest.Kind.VECTOR,
                    embedding_version=version,
                    content_hash=version_work.text_hash,
                    **base,
                )
                chunk_lines.append(_Line(request, body))
        if not chunk_lines:
            continue
        # One request per entity and kind (and version): the row's id is the line's custom_id.
        BatchApiRequest.objects.bulk_create([line.request for line in chunk_lines], batch_size=1000)
        for line in chunk_lines:
            endpoint = CHAT if line.request.kind == BatchApiRequest.Kind.SUMMARY else EMBEDDINGS
            lines[endpoint].append(line)
        requested = {line.request.entity_id for line in chunk_lines}
        for work in works:
            if work.key in requested and _json_pk(work.pk) not in known:
                known.add(_json_pk(work.pk))
                added.append(work.pk)
    planned = 0
    for endpoint, endpoint_lines in lines.items():
        for part in _files(endpoint_lines, conf.batch_api_max_requests()):
            _prepare(job, endpoint, part)
            planned += len(part)
    BatchApiJob.objects.filter(pk=job.pk).update(requests=F("requests") + planned)
    if added:
        job.entity_ids = [*job.entity_ids, *(_json_pk(pk) for pk in added)]
        BatchApiJob.objects.filter(pk=job.pk).update(entity_ids=job.entity_ids)
    return planned


def _json_pk(pk: Any) -> Any:
    return pk if isinstance(pk, int | str) else str(pk)


def _line_bytes(endpoint: str, line: _Line) -> bytes:
    record = {"custom_id": line.request.custom_id, "method": "POST", "url": endpoint, "body": line.body}
    return json.dumps(record, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


def _files(lines: list[_Line], max_requests: int) -> Iterator[list[tuple[_Line, bytes]]]:
    """The lines split into files within OpenAI's limits (requests and bytes per batch)."""
    part: list[tuple[_Line, bytes]] = []
    size = 0
    for line in lines:
        data = _line_bytes(CHAT if line.request.kind == BatchApiRequest.Kind.SUMMARY else EMBEDDINGS, line)
        if part and (len(part) >= max_requests or size + len(data) > MAX_FILE_BYTES):
            yield part
            part, size = [], 0
        part.append((line, data))
        size += len(data)
    if part:
        yield part


def _prepare(job: BatchApiJob, endpoint: str, part: list[tuple[_Line, bytes]]) -> None:
    """Record one batch with its file's content (sent by `_submit`), and link its requests to it."""
    with transaction.atomic():
        batch = ProviderBatch.objects.create(
            job=job, endpoint=endpoint, requests=len(part), content=b"".join(data for _, data in part)
        )
        BatchApiRequest.objects.filter(pk__in=[line.request.pk for line, _ in part]).update(
            provider_batch=batch
        )


def _submit_prepared(job: BatchApiJob, api: Any) -> None:
    """Submit the job's batches not yet submitted; one the provider keeps refusing is given up.

    A batch given up leaves its entities to the runs (the normal path), like an expired one.
    """
    for batch in job.provider_batches.filter(status=ProviderBatch.Status.PREPARED).order_by("pk"):
        try:
            _submit(batch, api)
        except Exception as exc:
            attempts = batch.submit_attempts + 1
            error = conf.redact(f"could not submit batch {batch.pk} (attempt {attempts}): {error_text(exc)}")
            log.warning("batch_api.submit_failed", job=job.pk, batch=batch.pk, attempts=attempts, error=error)
            with transaction.atomic():
                if attempts >= MAX_SUBMIT_ATTEMPTS:
                    error += "; given up, its entities are left to the runs"
                    BatchApiRequest.objects.filter(provider_batch=batch).delete()
                    ProviderBatch.objects.filter(pk=batch.pk).update(
                        status=ProviderBatch.Status.PROCESSED,
                        provider_status="not submitted",
                        content=b"",
                        finished_at=timezone.now(),
                    )
                ProviderBatch.objects.filter(pk=batch.pk).update(submit_attempts=attempts)
                BatchApiJob.objects.filter(pk=job.pk).update(error=error)


def _submit(batch: ProviderBatch, api: Any) -> None:
    """Upload the batch's file (once) and create the provider's batch (once), recording each step.

    A worker that died after creating the batch but before recording it left the batch with
    this row's key in its metadata: it is found and adopted instead of created again.
    """
    # Without a recorded upload no batch can have been created (the create follows the record).
    remote = _find_remote(batch, api) if batch.input_file_id else None
    if remote is None:
        if not batch.input_file_id:
            uploaded = api.files.create(
                file=(f"entity-vectors-{batch.job_id}-{batch.pk}.jsonl", bytes(batch.content)),
                purpose="batch",
            )
            batch.input_file_id = uploaded.id
            ProviderBatch.objects.filter(pk=batch.pk).update(input_file_id=uploaded.id)
        remote = api.batches.create(
            input_file_id=batch.input_file_id,
            endpoint=batch.endpoint,
            completion_window="24h",
            metadata={"entity_vectors_batch": str(batch.key), "entity_vectors_job": str(batch.job_id)},
        )
    BatchApiJob.objects.filter(pk=batch.job_id).update(error="")
    ProviderBatch.objects.filter(pk=batch.pk).update(
        status=ProviderBatch.Status.SUBMITTED,
        provider_batch_id=remote.id,
        provider_status=remote.status,
        input_file_id=remote.input_file_id,
        content=b"",
    )
    batch.refresh_from_db()
    log.info(
        "batch_api.submitted",
        job=batch.job_id,
        batch=remote.id,
        endpoint=batch.endpoint,
        requests=batch.requests,
    )


def _find_remote(batch: ProviderBatch, api: Any) -> Any:
    """The provider's batch created for this row, if one was (newest first, back to the row's creation)."""
    since = batch.created_at.timestamp() - 300
    for remote in api.batches.list(limit=100):
        if (remote.metadata or {}).get("entity_vectors_batch") == str(batch.key):
            return remote
        if remote.created_at < since:
            return None
    return None


# -- polling -----------------------------------------------------------------------------------


@dataclass
class PollResult:
    """What one poll of a job did."""

    job: BatchApiJob
    polled: bool
    processed: int = 0
    message: str = ""


def poll_job(job_id: int, api: Any = None, write: Writer | None = None) -> PollResult:
    """Bring a job one step further, if no other poll holds it.

    `write` starts the run that writes the results (default: inline, in this process); it returns
    the run, closed (inline) or running (dispatched to the workers), and is polled until closed.
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
            _write(job, write or write_inline)
            job.refresh_from_db()
    finally:
        BatchApiJob.objects.filter(pk=job_id).update(leased_until=None)
    job.refresh_from_db()
    result.job = job
    result.message = describe(job)
    return result


def poll_jobs(api: Any = None, write: Any = None) -> list[PollResult]:
    """Poll every job in progress (what the periodic task does)."""
    return [
        poll_job(job_id, api=api, write=write)
        for job_id in BatchApiJob.objects.filter(status__in=BatchApiJob.ACTIVE).values_list("pk", flat=True)
    ]


def _plan_vectors(job: BatchApiJob, api: Any) -> None:
    """The chat batches are in: send the new summaries' vectors as embeddings batches."""
    from entity_vectors.dryrun import planning_context

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
                usage["prompt"] += completion.usage.prompt_tokens
                usage["completion"] += completion.usage.completion_tokens
            return _Outcome(request, summary=summary_of(completion, where))
        # Base64 vectors (as asked for) are not what the SDK's model types hold: read them as given.
        items = [SimpleNamespace(index=int(item["index"]), embedding=item["embedding"]) for item in body["data"]]
        usage["embedding"] += int((body.get("usage") or {}).get("prompt_tokens") or 0)
        size = dimensions[request.embedding_version]
        decoded = decode_embeddings(items, 1, size, str(body.get("model", "")), where)
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


def write_inline(job: BatchApiJob, inputs: SyncEntityVectorsInputs, pks: list[Any]) -> SyncRun:
    from entity_vectors.workflow.executor import execute_inline
    from entity_vectors.workflow.start import start_run

    started = start_run(
        inputs,
        task_id=f"batch-api-{job.pk}",
        mode=SyncRun.Mode.INLINE,
        entity_ids=pks,
        kind=SyncRun.Kind.BATCH_API,
    )
    return execute_inline(started, shared_limits=True)


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
    run = write(job, inputs, pks)
    if run.status == SyncRun.Status.SKIPPED:
        return  # another run holds the domain's lock: the next poll tries again
    BatchApiJob.objects.filter(pk=job.pk).update(run=run, write_attempts=F("write_attempts") + 1)
    if run.status != SyncRun.Status.RUNNING:
        job.refresh_from_db()
        _write(job, write)


def _close(job: BatchApiJob, status: str, error: str) -> None:
    """End the job; its requests (and their vectors) go: what was not written, a run does."""
    with transaction.atomic():
        BatchApiRequest.objects.filter(job=job).delete()
        ProviderBatch.objects.filter(job=job).update(content=b"")
        BatchApiJob.objects.filter(pk=job.pk).update(status=status, error=error, finished_at=timezone.now())
    job.refresh_from_db()
    log.info("batch_api.finished", job=job.pk, domain=job.domain, status=status, error=error)


# -- reporting ---------------------------------------------------------------------------------


def describe(job: BatchApiJob) -> str:
    """One line on a job, for the command line and logs."""
    batches = list(job.provider_batches.values_list("endpoint", "status", "provider_status"))
    parts = ", ".join(
        f"{'chat' if endpoint == CHAT else 'embeddings'} {status}"
        + (f" ({provider})" if provider and status != ProviderBatch.Status.PROCESSED else "")
        for endpoint, status, provider in batches
    )
    text = (
        f"Batch API job {job.pk} of {job.domain}: {job.status}; {job.requests} requests for "
        f"{len(job.entity_ids)} entities; {len(job.failed)} failed; batches: {parts or 'none'}; "
        f"cost ${Decimal(job.cost_usd):.4f} (Batch API price)"
    )
    if job.run_id:
        text += f"; written by run {job.run_id}"
    if job.error:
        text += f"; {job.error}"
    return text


__all__ = [
    "PollResult",
    "active_job",
    "applies",
    "describe",
    "poll_job",
    "poll_jobs",
    "start_job",
    "write_inline",
]
