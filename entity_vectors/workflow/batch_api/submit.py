"""Backfills through OpenAI's Batch API: the same summaries and vectors at half price, within a day.

A job goes summarizing -> embedding -> writing -> done:

1. `start_job` plans the work the way a run would (same selection, same ledger decisions), and
   writes one request per entity and kind into JSONL files (custom_id = the request's row),
   uploads them and creates the provider's batches. Entities needing a summary get a chat
   request; entities whose summary is known but whose vector is not get an embeddings request.
2. `poll_job` (`poll`), called by a periodic task, brings each batch up to date. A finished batch's result
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
the entity changed since (see `batch_api.results`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import structlog
from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from entity_vectors import conf
from entity_vectors.core.embedding_versions import ensure_version
from entity_vectors.core.inputs import SyncEntityVectorsInputs
from entity_vectors.exceptions import ConfigurationError
from entity_vectors.models import BatchApiJob, BatchApiRequest, ProviderBatch, SyncRun
from entity_vectors.providers import check_provider_settings
from entity_vectors.providers.openai import chat_request, embedding_request
from entity_vectors.workflow import ledger
from entity_vectors.workflow.batch_api.jobs import active_job, applies
from entity_vectors.workflow.context import BatchOutcome, RunContext
from entity_vectors.workflow.dry_run import planning_context
from entity_vectors.workflow.load import load_batch
from entity_vectors.workflow.plan import EMBED, EntityWork, decide_live
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
    if not applies(inputs.domain):
        raise ConfigurationError(
            f"the Batch API is OpenAI's, and runs of {inputs.domain} send nothing to OpenAI: set "
            "ENTITY_VECTORS_SUMMARIZER=openai (and OPENAI_API_KEY), or move its vectors to the openai "
            f"embedder with manage.py migrate_embeddings --domain {inputs.domain} --to-version N"
        )
    # Checks the version and every embedder the run writes before anything is recorded.
    check_provider_settings(planning_context(inputs).embedders)
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
    lines: dict[str, list[_Line]] = {CHAT: [], EMBEDDINGS: []}
    known = set(job.entity_ids)
    added: list[Any] = []
    size = context.inputs.summarize_batch_size
    for offset in range(0, len(pks), size):
        works = load_batch(context, pks[offset : offset + size], BatchOutcome(), readonly=True)
        entries = ledger.load_entries(
            context.domain, [work.key for work in works], [spec.version for spec in context.versions]
        )
        chunk_lines = [line for work in works for line in _lines_of(job, context, work, entries, summaries)]
        if not chunk_lines:
            continue
        # One request per entity and kind (and version): the row's id is the line's custom_id.
        BatchApiRequest.objects.bulk_create([line.request for line in chunk_lines], batch_size=1000)
        for line in chunk_lines:
            lines[CHAT if line.request.kind == BatchApiRequest.Kind.SUMMARY else EMBEDDINGS].append(line)
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


def _lines_of(
    job: BatchApiJob, context: RunContext, work: EntityWork, entries: dict[Any, Any], summaries: bool
) -> list[_Line]:
    """An entity's requests: its summary, if it has none (and `summaries`), else a vector at each
    version an OpenAI embedder writes and the ledger says is due."""
    if not work.live or work.parked or work.error:
        return []
    base = {
        "job": job,
        "domain": context.domain,
        "entity_id": work.key,
        "team_id": work.team_id,
        "input_hash": work.input_hash,
    }
    if work.summary is None:
        if not summaries or conf.summarizer_name() != "openai":
            return []
        prompt = context.config.get_summary_prompt()
        body, _ = chat_request(conf.chat_model(), prompt, work.description, conf.max_summary_input_tokens())
        return [
            _Line(
                BatchApiRequest(kind=BatchApiRequest.Kind.SUMMARY, content_hash=work.input_hash, **base), body
            )
        ]
    versions = context.versions
    decide_live(
        context.config, work, {s.version: entries.get((work.key, s.version)) for s in versions}, versions
    )
    lines = []
    for version, version_work in work.versions.items():
        embedder = version_work.spec.embedder
        if version_work.action != EMBED or embedder.name != "openai":
            continue
        body, _ = embedding_request(
            embedder.model, embedder.dimensions, [work.summary], conf.max_embedding_input_tokens()
        )
        request = BatchApiRequest(
            kind=BatchApiRequest.Kind.VECTOR,
            embedding_version=version,
            content_hash=version_work.text_hash,
            **base,
        )
        lines.append(_Line(request, body))
    return lines


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
        f"cost {conf.format_usd(job.cost_usd)} (Batch API price)"
    )
    if job.run_id:
        text += f"; written by run {job.run_id}"
    if job.error:
        text += f"; {job.error}"
    return text


__all__ = [
    "describe",
    "start_job",
]
