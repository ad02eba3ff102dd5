"""One run as plain functions: start (lock, snapshot, plan), process a batch, flush, close.

Nothing here imports Celery: `tasks.py` adapts these functions to tasks, and tests call them
directly. Reads and writes are bulk (no query per entity); memory is bounded by one batch in
the header and by `insert_batch_size` rows in the flush.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import structlog
from asgiref.sync import async_to_sync
from django.core.exceptions import ValidationError
from django.db import IntegrityError, models, transaction
from django.db.models import F, Q, Value
from django.db.models.functions import Greatest
from django.utils import timezone

from entity_vectors import conf
from entity_vectors.configs import EntityConfig
from entity_vectors.exceptions import InvalidInputsError, PermanentError
from entity_vectors.inputs import BatchSpec, SyncEntityVectorsInputs
from entity_vectors.models import SyncRun, SyncRunBatch
from entity_vectors.providers import (
    Limiter,
    ProviderUsage,
    SummarizationContext,
    configured_embedder_identity,
    configured_summarizer_identity,
    open_providers,
    summarization_context,
)
from entity_vectors.registry import get_entity_config
from entity_vectors.staging import StagedRow, pack_rows, unpack_rows
from entity_vectors.store import EmbeddingRow, EmbeddingStore, chunked, get_store

log = structlog.get_logger("entity_vectors")

# Ids are read in keyset pages of this size when a run snapshots its work.
SNAPSHOT_PAGE = 10_000
# How many per-entity errors a batch keeps (the count is always exact).
MAX_ITEM_ERRORS = 20
PROVENANCE_KEY = "_vectorized_by"

LimiterFactory = Callable[[], AbstractAsyncContextManager[Limiter]]


# -- selection -------------------------------------------------------------------------------


def may_have_rows() -> Q:
    """Entities ClickHouse may hold rows of: synced, or a write was attempted (see the flush)."""
    return Q(embedding_last_synced_at__isnull=False) | Q(embedding_version__isnull=False)


def tombstone_filter(config: EntityConfig[Any]) -> Q:
    """Entities whose vectors must go: soft-deleted or without consent, and possibly in ClickHouse."""
    gone = ~config.get_consent_filter()
    deleted = config.get_deleted_filter()
    if deleted is not None:
        gone = gone | deleted
    return gone & may_have_rows()


def embedding_due_filter(config: EntityConfig[Any], embedding_version: int) -> Q:
    """Summarized entities whose vector at `embedding_version` is missing or stale."""
    stale = (
        Q(embedding_last_synced_at__isnull=True)
        | Q(embedding_version__isnull=True)
        | Q(embedding_version__lt=embedding_version)
        | Q(embedding_last_synced_at__lt=F("last_summarized_at"))
    )
    return config.get_consent_filter() & Q(summary__isnull=False) & ~Q(summary="") & stale


def live_filter(config: EntityConfig[Any], start_dt: datetime, embedding_version: int) -> Q:
    """Live entities with work to do: a summary due (the config's filter) or a vector due."""
    due = config.get_queryset_filter(start_dt) | embedding_due_filter(config, embedding_version)
    # Consent is required here even if a config's own filter forgot it: nothing of an
    # unapproved organization may reach a provider.
    live = due & config.get_consent_filter()
    deleted = config.get_deleted_filter()
    return live & ~deleted if deleted is not None else live


def selection_filter(config: EntityConfig[Any], start_dt: datetime, embedding_version: int) -> Q:
    """Every entity a run must touch: live work plus tombstones."""
    return live_filter(config, start_dt, embedding_version) | tombstone_filter(config)


def select_entity_ids(config: EntityConfig[Any], start_dt: datetime, embedding_version: int) -> list[Any]:
    """Snapshot the primary keys of a run's work, in keyset pages (stable under concurrent edits)."""
    queryset = config.get_queryset().filter(selection_filter(config, start_dt, embedding_version))
    ids: list[Any] = []
    last: Any = None
    while True:
        page = queryset if last is None else queryset.filter(pk__gt=last)
        chunk = list(page.order_by("pk").values_list("pk", flat=True)[:SNAPSHOT_PAGE])
        ids.extend(chunk)
        if len(chunk) < SNAPSHOT_PAGE:
            return ids
        last = chunk[-1]


def count_pending(config: EntityConfig[Any], embedding_version: int) -> int:
    """How many entities a run started now would touch."""
    query = selection_filter(config, timezone.now(), embedding_version)
    return config.get_queryset().filter(query).count()


def check_embedder_matches(domain: str, embedding_version: int, team_id: int | None = None) -> None:
    """Refuse to mix vectors of different embedders (or sizes) under one embedding version."""
    expected = (configured_embedder_identity(), conf.embedding_dimensions())
    stored = get_store().stored_embedders(domain, embedding_version, team_id)
    others = [(embedder or "unknown", dims) for embedder, dims in stored if (embedder, dims) != expected]
    if others:
        found = ", ".join(f"{embedder} ({dims} dimensions)" for embedder, dims in others)
        raise InvalidInputsError(
            "embedding_version",
            embedding_version,
            f"{domain} vectors at this version were made by {found}, but the configured embedder is "
            f"{expected[0]} ({expected[1]} dimensions); use a new embedding_version for a new embedder",
        )


# -- planning --------------------------------------------------------------------------------


@dataclass(frozen=True)
class PlannedBatch:
    """One header task's share of a run."""

    index: int
    entity_ids: list[Any]
    not_before: datetime


def plan_run(
    entity_ids: Sequence[Any], batch_size: int, delay_between_batches: float, started_at: datetime
) -> list[PlannedBatch]:
    """Split the snapshot into batches; batch i may start `i * delay_between_batches` after the start."""
    return [
        PlannedBatch(
            index=index,
            entity_ids=list(entity_ids[offset : offset + batch_size]),
            not_before=started_at + timedelta(seconds=index * delay_between_batches),
        )
        for index, offset in enumerate(range(0, len(entity_ids), batch_size))
    ]


@dataclass(frozen=True)
class StartedRun:
    """What `start_run` did: a run with its batches, or a skip with the reason."""

    run: SyncRun
    batch_indexes: list[int] = field(default_factory=list)
    skipped: bool = False
    already_dispatched: bool = False

    @property
    def message(self) -> str:
        """A one-line account for logs and the command line."""
        if self.skipped:
            return self.run.error
        return (
            f"run {self.run.id} of {self.run.domain}: {self.run.selected} entities "
            f"in {self.run.batches_total} batches"
        )


def expire_abandoned_runs(domain: str | None = None) -> list[SyncRun]:
    """Fail running runs whose lease ran out (their worker died); frees their locks."""
    now = timezone.now()
    stale = SyncRun.objects.filter(status=SyncRun.Status.RUNNING, lease_expires_at__lt=now)
    if domain is not None:
        stale = stale.filter(domain=domain)
    expired = []
    for run in stale:
        closed = flush_and_close(
            run.id, error=f"abandoned: its lease ran out at {run.lease_expires_at:%Y-%m-%d %H:%M:%S} UTC"
        )
        if closed is not None:
            expired.append(closed)
    return expired


def _take_lock(inputs: SyncEntityVectorsInputs, start_dt: datetime, task_id: str) -> SyncRun | None:
    """Create the domain's running SyncRun (the lock), or None if another run holds it.

    A run held by an earlier delivery of this same entry task is returned as is if its chord went
    out, else closed and the lock taken over, instead of skipping forever behind itself.
    """
    for _ in range(2):
        try:
            with transaction.atomic():
                return SyncRun.objects.create(
                    domain=inputs.domain,
                    start_dt=start_dt,
                    inputs=inputs.as_dict(),
                    task_id=task_id,
                    lease_expires_at=timezone.now() + timedelta(seconds=conf.run_lease_seconds()),
                )
        except IntegrityError:
            holder = SyncRun.objects.filter(domain=inputs.domain, status=SyncRun.Status.RUNNING).first()
            if holder is None or not task_id or holder.task_id != task_id:
                return None
            if holder.dispatched_at is not None:
                return holder  # this task already sent its chord before being delivered again
            flush_and_close(holder.id, error="superseded: its entry task was delivered again")
    return None


def start_run(inputs: SyncEntityVectorsInputs, task_id: str = "") -> StartedRun:
    """Take the domain's lock, snapshot the ids to process, record the run and its batches."""
    config = get_entity_config(inputs.domain)
    start_dt = inputs.resolved_start_dt()
    check_embedder_matches(config.domain_name, inputs.embedding_version)
    expire_abandoned_runs(inputs.domain)
    run = _take_lock(inputs, start_dt, task_id)
    if run is not None and run.dispatched_at is not None:
        return StartedRun(run=run, already_dispatched=True)
    if run is None:
        holder = SyncRun.objects.filter(domain=inputs.domain, status=SyncRun.Status.RUNNING).first()
        reason = (
            f"skipped: run {holder.id} of {inputs.domain} is still running "
            f"(started {holder.started_at:%Y-%m-%d %H:%M:%S} UTC)"
            if holder
            else f"skipped: another run of {inputs.domain} is starting"
        )
        skipped = SyncRun.objects.create(
            domain=inputs.domain,
            status=SyncRun.Status.SKIPPED,
            start_dt=start_dt,
            inputs=inputs.as_dict(),
            task_id=task_id,
            finished_at=timezone.now(),
            error=reason,
        )
        log.info("sync.run_skipped", domain=inputs.domain, run_id=str(skipped.id), reason=reason)
        return StartedRun(run=skipped, skipped=True)
    try:
        entity_ids = select_entity_ids(config, start_dt, inputs.embedding_version)
        planned = plan_run(
            entity_ids, inputs.summarize_batch_size, inputs.delay_between_batches, run.started_at
        )
        SyncRunBatch.objects.bulk_create(
            [
                SyncRunBatch(
                    run=run, index=batch.index, entity_ids=batch.entity_ids, not_before=batch.not_before
                )
                for batch in planned
            ],
            batch_size=500,
        )
        run.selected = len(entity_ids)
        run.batches_total = len(planned)
        # The lease must outlast the last batch's planned start (delay_between_batches).
        last_start = planned[-1].not_before if planned else run.started_at
        run.lease_expires_at = max(last_start, timezone.now()) + timedelta(seconds=conf.run_lease_seconds())
        run.save(update_fields=["selected", "batches_total", "lease_expires_at"])
    except BaseException as exc:
        close_run(run.id, error=f"planning failed: {exc!r}")
        raise
    log.info(
        "sync.run_started",
        domain=inputs.domain,
        run_id=str(run.id),
        selected=run.selected,
        batches=run.batches_total,
        start_dt=start_dt.isoformat(),
    )
    return StartedRun(run=run, batch_indexes=[batch.index for batch in planned])


# -- one batch -------------------------------------------------------------------------------


class BatchDeferred(Exception):
    """The batch may not start yet (delay_between_batches); try again in `seconds`."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"batch may start in {seconds:.1f}s")
        self.seconds = seconds


def summary_input_hash(summarizer_identity: str, system_prompt: str, description: str) -> str:
    """What a summary depends on; equal hashes mean the stored summary is still right."""
    digest = hashlib.sha256()
    for part in (summarizer_identity, system_prompt, description):
        digest.update(part.encode("utf-8"))
        digest.update(b"\x00")
    return digest.hexdigest()


def _values_fields(config: EntityConfig[Any]) -> list[str]:
    fields = ["id", "team_id", "summary"]
    for name in config.get_sync_values_fields():
        if name not in fields:
            fields.append(name)
    return fields


def build_properties(config: EntityConfig[Any], entity_dict: dict[str, Any]) -> str:
    """The row's JSON properties: the config's, the entity id under its field, and provenance."""
    properties = dict(config.build_clickhouse_properties(entity_dict))
    properties.setdefault(config.get_entity_id_field(), entity_dict["id"])
    properties[PROVENANCE_KEY] = {
        "summarizer": entity_dict.get("summarized_by") or configured_summarizer_identity(),
        "embedder": configured_embedder_identity(),
        "dimensions": conf.embedding_dimensions(),
    }
    return json.dumps(properties, ensure_ascii=False, default=str, sort_keys=True)


def _error_text(error: BaseException) -> str:
    text = f"{type(error).__name__}: {error}"
    return text if len(text) <= 500 else text[:497] + "..."


def process_batch(spec: BatchSpec, limiter_factory: LimiterFactory) -> dict[str, Any]:
    """Summarize, save, embed and stage one batch; returns its counts (never vectors).

    Idempotent: a staged batch is not redone, and a redelivered batch reuses the summaries its
    first attempt saved (their input hash matches). Raises BatchDeferred before its start time.
    """
    batch = SyncRunBatch.objects.select_related("run").get(
        run_id=uuid.UUID(spec.run_id), index=spec.batch_index
    )
    run = batch.run
    if run.status != SyncRun.Status.RUNNING:
        return {"status": "run_closed", "run_status": run.status}
    if batch.status in (SyncRunBatch.Status.STAGED, SyncRunBatch.Status.FLUSHED):
        return {"status": "already_staged", **batch.counts}
    now = timezone.now()
    if batch.not_before and batch.not_before > now:
        raise BatchDeferred((batch.not_before - now).total_seconds())
    SyncRunBatch.objects.filter(pk=batch.pk).update(
        attempts=F("attempts") + 1, worker_pid=os.getpid(), started_at=now
    )
    _progress(run.id)  # a batch at work keeps the run's lock alive

    config = get_entity_config(run.domain)
    base = config.get_queryset().filter(pk__in=batch.entity_ids)
    tombstones = list(base.filter(tombstone_filter(config)).values_list("pk", "team_id"))
    live = list(
        base.filter(live_filter(config, run.start_dt, int(run.inputs["embedding_version"])))
        .exclude(pk__in=[pk for pk, _ in tombstones])
        .order_by(*config.get_queryset_ordering())
    )
    usage = ProviderUsage()
    counts: dict[str, int] = {
        "summarized": 0,
        "summaries_reused": 0,
        "summary_failures": 0,
        "embedded": 0,
        "tombstoned": len(tombstones),
        "skipped": len(batch.entity_ids) - len(tombstones) - len(live),
    }

    try:
        return _process_live_batch(config, batch, run, spec, live, tombstones, counts, limiter_factory, usage)
    except BaseException:
        # What a failed attempt spent still counts: the retry adds it to the batch's totals.
        _carry_usage(batch.pk, usage)
        raise


def _carry_usage(batch_pk: int, usage: ProviderUsage) -> None:
    batch = SyncRunBatch.objects.get(pk=batch_pk)
    carried = {name: int(batch.counts.get(name, 0)) + value for name, value in usage.as_counts().items()}
    SyncRunBatch.objects.filter(pk=batch_pk, status=SyncRunBatch.Status.PENDING).update(
        counts={**batch.counts, **carried}
    )


def _describe_all(
    config: EntityConfig[Any], live: list[Any], counts: dict[str, int], item_errors: list[dict[str, str]]
) -> tuple[list[Any], dict[Any, str]]:
    """Each live entity's description; one whose description fails is counted, not fatal."""
    described: list[Any] = []
    descriptions: dict[Any, str] = {}
    for entity in live:
        try:
            descriptions[entity.pk] = config.describe(entity)
        except Exception as error:
            counts["summary_failures"] += 1
            if len(item_errors) < MAX_ITEM_ERRORS:
                item_errors.append(
                    {"id": str(entity.pk), "error": f"describe() failed: {_error_text(error)}"}
                )
            continue
        described.append(entity)
    return described, descriptions


def _process_live_batch(
    config: EntityConfig[Any],
    batch: SyncRunBatch,
    run: SyncRun,
    spec: BatchSpec,
    live: list[Any],
    tombstones: list[tuple[Any, int]],
    counts: dict[str, int],
    limiter_factory: LimiterFactory,
    usage: ProviderUsage,
) -> dict[str, Any]:
    version = int(run.inputs["embedding_version"])
    embed_batch_size = int(run.inputs["embed_batch_size"])
    start_dt = run.start_dt
    now = timezone.now()
    item_errors: list[dict[str, str]] = []

    # 1. Which entities need a new summary: those whose summary input changed.
    identity = configured_summarizer_identity()
    prompt = config.get_summary_prompt()
    live, descriptions = _describe_all(config, live, counts, item_errors)
    hashes = {pk: summary_input_hash(identity, prompt, text) for pk, text in descriptions.items()}
    unchanged = {e.pk for e in live if e.summary and getattr(e, "summary_input_hash", "") == hashes[e.pk]}
    to_summarize = [e for e in live if e.pk not in unchanged]
    reused = [e for e in live if e.pk in unchanged]

    # 2. Summaries, aligned one-to-one with `to_summarize`.
    results: list[str | BaseException] = []
    if to_summarize:
        results = _summarize(config, to_summarize, descriptions, start_dt, spec, limiter_factory, usage)
    changed: list[models.Model] = []
    for entity, result in zip(to_summarize, results, strict=True):
        text = result.strip() if isinstance(result, str) else ""
        if isinstance(result, BaseException) or not text:
            counts["summary_failures"] += 1
            error = result if isinstance(result, BaseException) else ValueError("empty summary")
            if len(item_errors) < MAX_ITEM_ERRORS:
                item_errors.append({"id": str(entity.pk), "error": _error_text(error)})
            continue
        entity.summary = text
        entity.summary_input_hash = hashes[entity.pk]
        changed.append(entity)
        counts["summarized"] += 1

    # 3. Reused summaries: still current. Only those without a current vector are embedded.
    needs_vector = [e for e in reused if _vector_stale(e, version)]
    current = [e for e in reused if not _vector_stale(e, version)]
    counts["summaries_reused"] = len(reused)
    manager = config.model_class._default_manager
    with transaction.atomic():
        # update() and bulk_update leave auto_now `updated_at` alone: saving a summary is not an
        # edit. Values shared by the batch go in one UPDATE; only per-entity ones need bulk_update.
        manager.bulk_update(changed, ["summary", "summary_input_hash"], batch_size=500)
        manager.filter(pk__in=[e.pk for e in changed]).update(
            last_summarized_at=start_dt, summarized_by=identity
        )
        manager.filter(pk__in=[e.pk for e in reused]).update(last_summarized_at=start_dt)
        # A current vector already matches its summary, so it stays synced as of now.
        manager.filter(pk__in=[e.pk for e in current]).update(embedding_last_synced_at=now)

    # 4. Embed the summaries that need a vector, `embed_batch_size` texts per request.
    embed_pks = [entity.pk for entity in changed] + [entity.pk for entity in needs_vector]
    staged: list[StagedRow] = []
    if embed_pks:
        entity_dicts = list(
            config.get_queryset().filter(pk__in=embed_pks).values(*_values_fields(config), "summarized_by")
        )
        by_pk = {entity_dict["id"]: entity_dict for entity_dict in entity_dicts}
        ordered = [by_pk[pk] for pk in embed_pks if pk in by_pk]
        vectors = _embed([str(d["summary"]) for d in ordered], embed_batch_size, limiter_factory, usage)
        for entity_dict, vector in zip(ordered, vectors, strict=True):
            staged.append(
                StagedRow(
                    pk=entity_dict["id"],
                    team_id=int(entity_dict["team_id"]),
                    id=str(entity_dict["id"]),
                    text=str(entity_dict["summary"]),
                    properties=build_properties(config, entity_dict),
                    is_deleted=False,
                    vector=vector,
                )
            )
        counts["embedded"] = len(staged)
    staged.extend(
        StagedRow(
            pk=pk, team_id=int(team_id), id=str(pk), text="", properties="{}", is_deleted=True, vector=()
        )
        for pk, team_id in tombstones
    )

    # 5. Stage the rows for the flush; the batch moves pending -> staged exactly once.
    carried = SyncRunBatch.objects.get(pk=batch.pk).counts  # usage of failed earlier attempts
    counts.update({name: int(carried.get(name, 0)) + value for name, value in usage.as_counts().items()})
    meta, buffer = pack_rows(staged)
    moved = SyncRunBatch.objects.filter(pk=batch.pk, status=SyncRunBatch.Status.PENDING).update(
        status=SyncRunBatch.Status.STAGED,
        counts=counts,
        item_errors=item_errors,
        rows=meta,
        vectors=buffer,
        finished_at=timezone.now(),
        error="",
    )
    if moved:
        _progress(run.id, batches_done=1)
    log.info(
        "sync.batch_done",
        domain=run.domain,
        run_id=str(run.id),
        batch=spec.batch_index,
        ok=counts["summarized"] + counts["summaries_reused"],
        failed=counts["summary_failures"],
        embedded=counts["embedded"],
        tombstones=counts["tombstoned"],
        requests=usage.requests,
    )
    return {"status": "staged", **counts}


def _vector_stale(entity: models.Model, version: int) -> bool:
    synced = getattr(entity, "embedding_last_synced_at", None)
    entity_version = getattr(entity, "embedding_version", None)
    summarized = getattr(entity, "last_summarized_at", None)
    return (
        synced is None
        or entity_version is None
        or entity_version < version
        or (summarized is not None and synced < summarized)
    )


def _summarize(
    config: EntityConfig[Any],
    entities: list[Any],
    descriptions: dict[Any, str],
    start_dt: datetime,
    spec: BatchSpec,
    limiter_factory: LimiterFactory,
    usage: ProviderUsage,
) -> list[str | BaseException]:
    async def run() -> list[str | BaseException]:
        async with limiter_factory() as limiter, open_providers(limiter, usage) as providers:
            context = SummarizationContext(summarizer=providers.summarizer, descriptions=descriptions)
            with summarization_context(context):
                properties = {"run_id": spec.run_id, "domain": spec.domain, "batch_index": spec.batch_index}
                return await config.batch_summarize(entities, start_dt.isoformat(), properties)

    results = async_to_sync(run)()
    if not isinstance(results, list) or len(results) != len(entities):
        got = len(results) if isinstance(results, list) else type(results).__name__
        raise PermanentError(
            f"{type(config).__name__}.batch_summarize returned {got} results for {len(entities)} entities; "
            "it must return exactly one result per entity, in order"
        )
    return results


def _embed(
    texts: list[str], embed_batch_size: int, limiter_factory: LimiterFactory, usage: ProviderUsage
) -> list[Sequence[float]]:
    import asyncio

    async def run() -> list[Sequence[float]]:
        async with limiter_factory() as limiter, open_providers(limiter, usage) as providers:
            chunks = [
                texts[offset : offset + embed_batch_size] for offset in range(0, len(texts), embed_batch_size)
            ]
            results = await asyncio.gather(*(providers.embedder.embed(chunk) for chunk in chunks))
            return [vector for chunk_vectors in results for vector in chunk_vectors]

    return async_to_sync(run)()


def _progress(run_id: Any, **increments: int) -> None:
    """Bump run counters and extend the lock's lease: the run is alive."""
    updates: dict[str, Any] = {name: F(name) + value for name, value in increments.items()}
    updates["lease_expires_at"] = Greatest(
        F("lease_expires_at"), Value(timezone.now() + timedelta(seconds=conf.run_lease_seconds()))
    )
    SyncRun.objects.filter(pk=run_id, status=SyncRun.Status.RUNNING).update(**updates)


def mark_dispatched(run_id: Any) -> None:
    """Record that the run's chord was sent."""
    SyncRun.objects.filter(pk=run_id).update(dispatched_at=timezone.now())


def fail_batch(spec: BatchSpec, error: BaseException) -> None:
    """Record a batch that gave up; the rest of the run proceeds."""
    moved = SyncRunBatch.objects.filter(
        run_id=uuid.UUID(spec.run_id), index=spec.batch_index, status=SyncRunBatch.Status.PENDING
    ).update(status=SyncRunBatch.Status.FAILED, error=_error_text(error), finished_at=timezone.now())
    if moved:
        _progress(spec.run_id, batches_failed=1)
    log.warning("sync.batch_failed", run_id=spec.run_id, batch=spec.batch_index, error=_error_text(error))


# -- flush and close -------------------------------------------------------------------------


@dataclass
class FlushResult:
    """What a flush wrote."""

    inserted: int = 0
    tombstoned: int = 0
    batches: int = 0


def _mark_synced(config: EntityConfig[Any], live_pks: list[Any], gone_pks: list[Any], version: int) -> None:
    manager = config.model_class._default_manager
    now = timezone.now()
    # update() sends no signals and leaves auto_now alone: syncing is not an edit of the entity.
    if live_pks:
        manager.filter(pk__in=live_pks).update(embedding_last_synced_at=now, embedding_version=version)
    if gone_pks:
        manager.filter(pk__in=gone_pks).update(embedding_last_synced_at=None, embedding_version=None)


def tombstone_rows(
    store: EmbeddingStore, domain: str, keys: Iterable[tuple[int, str]], timestamp: datetime
) -> list[EmbeddingRow]:
    """Tombstones for every embedding version that still holds one of `keys` (team_id, id)."""
    wanted = set(keys)
    if not wanted:
        return []
    holders = store.live_versions(domain, sorted({entity_id for _, entity_id in wanted}))
    return [
        EmbeddingRow(
            domain=domain,
            team_id=team_id,
            id=entity_id,
            vector=(),
            text="",
            properties="{}",
            embedding_version=version,
            timestamp=timestamp,
            is_deleted=1,
        )
        for team_id, entity_id, version in holders
        if (team_id, entity_id) in wanted
    ]


@dataclass(frozen=True)
class _FlushUnit:
    """One entity's rows in the flush: its live row, or its tombstones (one per version held)."""

    pk: Any
    live: bool
    rows: list[EmbeddingRow]
    batch_pk: int


class _Flusher:
    """Packs staged entities into inserts of at most `chunk_size` rows and marks what landed.

    An entity is marked (synced, or cleared after its tombstones) right after the insert that
    holds its rows, and a batch is marked flushed once every one of its entities is in.
    """

    def __init__(
        self, config: EntityConfig[Any], store: EmbeddingStore, version: int, chunk_size: int
    ) -> None:
        self._config = config
        self._store = store
        self._version = version
        self._chunk_size = chunk_size
        self._units: deque[_FlushUnit] = deque()
        self._buffered = 0
        self._remaining: dict[int, int] = {}
        self.result = FlushResult()

    def add_batch(self, batch_pk: int, units: list[_FlushUnit]) -> None:
        """Queue a batch's entities; insert every full chunk."""
        if not units:
            self._batches_done([batch_pk])
            return
        self._remaining[batch_pk] = len(units)
        self._units.extend(units)
        self._buffered += sum(len(unit.rows) for unit in units)
        while self._buffered >= self._chunk_size:
            self._write_chunk()

    def finish(self) -> None:
        """Insert what is left."""
        while self._units:
            self._write_chunk()

    def _write_chunk(self) -> None:
        chunk: list[_FlushUnit] = []
        size = 0
        while self._units and (not chunk or size + len(self._units[0].rows) <= self._chunk_size):
            unit = self._units.popleft()
            chunk.append(unit)
            size += len(unit.rows)
        self._buffered -= size
        rows = [row for unit in chunk for row in unit.rows]
        live_pks = [unit.pk for unit in chunk if unit.live]
        if live_pks:
            # Before the insert: "a write at this version was attempted, not confirmed". If we
            # crash after the insert, the entity is still unsynced (so it is retried) and a later
            # delete or revocation still tombstones it.
            self._config.model_class._default_manager.filter(pk__in=live_pks).update(
                embedding_version=self._version, embedding_last_synced_at=None
            )
        if rows:
            self._store.insert(rows)
        self.result.inserted += sum(1 for row in rows if not row.is_deleted)
        self.result.tombstoned += sum(1 for row in rows if row.is_deleted)
        _mark_synced(self._config, live_pks, [unit.pk for unit in chunk if not unit.live], self._version)
        done = []
        for unit in chunk:
            self._remaining[unit.batch_pk] -= 1
            if self._remaining[unit.batch_pk] == 0:
                done.append(unit.batch_pk)
        self._batches_done(done)

    def _batches_done(self, batch_pks: list[int]) -> None:
        if batch_pks:
            SyncRunBatch.objects.filter(pk__in=batch_pks).update(
                status=SyncRunBatch.Status.FLUSHED, rows=[], vectors=b""
            )
            self.result.batches += len(batch_pks)


def row_version(run: SyncRun) -> datetime:
    """The version of every row a run writes: its start_dt, or when it started if that is later.

    Runs of a domain follow one another, so this grows from run to run even when a run is given
    a start_dt in the past; a late retry of an older run carries its older version and loses.
    It is never the insert time.
    """
    return max(run.start_dt, run.started_at)


def _flush_units(run: SyncRun, batch: SyncRunBatch, store: EmbeddingStore, version: int) -> list[_FlushUnit]:
    """A staged batch as flush units; tombstones resolved to the versions ClickHouse holds."""
    units: list[_FlushUnit] = []
    gone: dict[tuple[int, str], Any] = {}
    for row in unpack_rows(batch.rows, bytes(batch.vectors)):
        if row.is_deleted:
            gone[(row.team_id, row.id)] = row.pk
            continue
        live_row = EmbeddingRow(
            domain=run.domain,
            team_id=row.team_id,
            id=row.id,
            vector=row.vector,
            text=row.text,
            properties=row.properties,
            embedding_version=version,
            timestamp=row_version(run),
        )
        units.append(_FlushUnit(pk=row.pk, live=True, rows=[live_row], batch_pk=batch.pk))
    tombstones: dict[tuple[int, str], list[EmbeddingRow]] = {key: [] for key in gone}
    for tombstone in tombstone_rows(store, run.domain, gone, row_version(run)):
        tombstones[(tombstone.team_id, tombstone.id)].append(tombstone)
    units.extend(
        _FlushUnit(pk=gone[key], live=False, rows=rows, batch_pk=batch.pk) for key, rows in tombstones.items()
    )
    return units


def flush_run(run_id: Any, store: EmbeddingStore | None = None) -> FlushResult:
    """Stream the staged rows into ClickHouse in inserts of at most `insert_batch_size` rows.

    Entities are marked synced only after the insert holding their rows; a crash anywhere leaves
    the rest staged (and eligible) for a retry, and repeating an insert is harmless.
    """
    run = SyncRun.objects.get(pk=run_id)
    config = get_entity_config(run.domain)
    store = store or get_store()
    version = int(run.inputs["embedding_version"])
    chunk_size = int(run.inputs["insert_batch_size"])
    flusher = _Flusher(config, store, version, chunk_size)
    staged = run.batches.filter(status=SyncRunBatch.Status.STAGED).order_by("index")
    for batch_pk in list(staged.values_list("pk", flat=True)):
        # One batch's payload in memory at a time, plus at most one chunk of rows.
        batch = SyncRunBatch.objects.get(pk=batch_pk)
        flusher.add_batch(batch.pk, _flush_units(run, batch, store, version))
        _progress(run.id)
    flusher.finish()
    result = flusher.result
    if conf.reconcile_enabled():
        result.tombstoned += reconcile_hard_deletes(config, store, chunk_size)
    log.info(
        "sync.flushed",
        domain=run.domain,
        run_id=str(run.id),
        inserted=result.inserted,
        tombstoned=result.tombstoned,
        batches=result.batches,
    )
    return result


def reconcile_hard_deletes(config: EntityConfig[Any], store: EmbeddingStore, chunk_size: int = 10_000) -> int:
    """Tombstone live ClickHouse rows whose entity no longer exists in the database at all."""
    keys = store.live_keys(config.domain_name)
    pk_field = config.model_class._meta.pk
    assert pk_field is not None
    missing: list[tuple[int, str]] = []
    for offset in range(0, len(keys), chunk_size):
        page = keys[offset : offset + chunk_size]
        candidates: dict[str, Any] = {}
        for _, entity_id, _ in page:
            try:
                candidates[entity_id] = pk_field.to_python(entity_id)
            except ValidationError:
                candidates[entity_id] = None
        present = {
            str(pk)
            for pk in config.model_class._default_manager.filter(
                pk__in=[pk for pk in candidates.values() if pk is not None]
            ).values_list("pk", flat=True)
        }
        missing.extend((team_id, entity_id) for team_id, entity_id, _ in page if entity_id not in present)
    if not missing:
        return 0
    rows = tombstone_rows(store, config.domain_name, missing, timezone.now())
    for chunk in chunked(rows, chunk_size):
        store.insert(chunk)
    log.info("sync.reconciled", domain=config.domain_name, tombstoned=len(rows))
    return len(rows)


def tombstone_entities(
    domain: str, keys: Sequence[tuple[int, str]], store: EmbeddingStore | None = None
) -> int:
    """Tombstone hard-deleted entities now (the post_delete signal's path)."""
    store = store or get_store()
    rows = tombstone_rows(store, domain, keys, timezone.now())
    store.insert(rows)
    return len(rows)


def close_run(run_id: Any, error: str = "", flushed: FlushResult | None = None) -> SyncRun | None:
    """Total the counts, set the final status and free the lock (no ClickHouse work here).

    Batches still staged are not flushed by a closed run: their payloads are dropped and their
    entities stay unsynced, so the next run picks them up. Returns None if the run was not
    running (someone else closed it).
    """
    errors = [error] if error else []
    flushed = flushed or FlushResult()
    with transaction.atomic():
        run = SyncRun.objects.select_for_update().get(pk=run_id)
        if run.status != SyncRun.Status.RUNNING:
            return None
        batches = list(run.batches.all())
        totals = dict.fromkeys(SyncRun.COUNT_FIELDS, 0)
        for batch in batches:
            for name, value in batch.counts.items():
                if name in totals and isinstance(value, int):
                    totals[name] += value
        totals["selected"] = run.selected
        totals["inserted"] = run.inserted + flushed.inserted
        totals["tombstoned"] = run.tombstoned + flushed.tombstoned
        never_ran = [batch for batch in batches if batch.status == SyncRunBatch.Status.PENDING]
        failed = [batch for batch in batches if batch.status == SyncRunBatch.Status.FAILED]
        unflushed = [batch for batch in batches if batch.status == SyncRunBatch.Status.STAGED]
        for batch in failed[:5]:
            errors.append(f"batch {batch.index} failed: {batch.error}")
        if never_ran:
            errors.append(f"{len(never_ran)} batches did not finish")
        if unflushed:
            errors.append(
                f"{len(unflushed)} staged batches were not flushed; their entities wait for the next run"
            )
            SyncRunBatch.objects.filter(pk__in=[batch.pk for batch in unflushed]).update(
                status=SyncRunBatch.Status.FAILED,
                error="not flushed before the run closed",
                rows=[],
                vectors=b"",
            )
        item_errors = [item for batch in batches for item in batch.item_errors][:5]
        if totals["summary_failures"]:
            detail = "; ".join(f"{item['id']}: {item['error']}" for item in item_errors)
            errors.append(f"{totals['summary_failures']} summaries failed ({detail})")
        succeeded_batches = sum(1 for batch in batches if batch.status == SyncRunBatch.Status.FLUSHED)
        if not errors:
            status = SyncRun.Status.SUCCEEDED
        elif succeeded_batches:
            status = SyncRun.Status.PARTIAL
        else:
            status = SyncRun.Status.FAILED
        for name, value in totals.items():
            setattr(run, name, value)
        run.batches_failed = len(failed) + len(never_ran) + len(unflushed)
        run.batches_done = succeeded_batches
        run.status = status
        run.error = "\n".join(errors)[:10_000]
        run.finished_at = timezone.now()
        run.lease_expires_at = None
        run.save()
    log.info(
        "sync.run_finished", domain=run.domain, run_id=str(run.id), status=str(run.status), **run.counts()
    )
    return run


def finish_run(run_id: Any, store: EmbeddingStore | None = None) -> SyncRun | None:
    """The chord body (and its errback): flush, then close. Flush errors propagate, for a retry."""
    if not SyncRun.objects.filter(pk=run_id, status=SyncRun.Status.RUNNING).exists():
        return None
    flushed = flush_run(run_id, store)
    return close_run(run_id, flushed=flushed)


def flush_and_close(run_id: Any, error: str, store: EmbeddingStore | None = None) -> SyncRun | None:
    """Close a run that will not finish on its own, flushing what it staged if ClickHouse allows."""
    flushed = None
    try:
        flushed = flush_run(run_id, store)
    except Exception as exc:
        error = f"{error}; flush failed: {_error_text(exc)}"
        log.exception("sync.flush_failed", run_id=str(run_id))
    return close_run(run_id, error=error, flushed=flushed)


def sweep_stale_runs() -> list[SyncRun]:
    """Close runs whose callback never came (lease ran out); returns the runs it closed."""
    return expire_abandoned_runs()
