"""One batch: load the entities and what the ledger says of them, decide, summarize and embed, stage.

Idempotent: a staged batch is not redone, and a redelivered batch reuses the summaries its
first attempt saved. A row version is taken before any state is read, so a later plan that read
later state always carries a higher version. Staging moves the batch pending -> staged exactly
once, and only while its run is still running (a closed run's batch stages nothing). In a
distributed run, the batch that finds a full insert's worth of staged rows then flushes them
(see `flush.flush_ready`).

A batch's fixed cost is its statements (about twenty, two commits): lookups by key are one index
lookup per key whatever the tables' statistics say (`bulk.select_by_keys`), writes are one
statement per table.
"""

from __future__ import annotations

import gc
import os
import uuid
from collections.abc import Sequence
from typing import Any

import structlog
from asgiref.sync import async_to_sync
from django.core.exceptions import FieldDoesNotExist
from django.db import connection, transaction
from django.db.models import BooleanField, ExpressionWrapper, F
from django.utils import timezone

from entity_vectors import budget, conf
from entity_vectors.bulk import select_by_keys
from entity_vectors.changes import change_seqs, key_of
from entity_vectors.models import EntityFailure, EntitySummary, SyncRun, SyncRunBatch
from entity_vectors.providers import configured_summarizer_identity
from entity_vectors.store import get_store
from entity_vectors.versions import next_row_version
from entity_vectors.workflow import ledger
from entity_vectors.workflow.access import ProviderAccess
from entity_vectors.workflow.awaiting import still_to_embed, take_batch_api_results
from entity_vectors.workflow.context import BatchOutcome, RunContext
from entity_vectors.workflow.flush import flush_ready
from entity_vectors.workflow.memory import record_failures, save_summaries
from entity_vectors.workflow.plan import (
    EMBED,
    REUSE,
    SKIP,
    TOMBSTONE,
    EntityWork,
    decide_gone,
    decide_live,
    summary_input_hash,
)
from entity_vectors.workflow.progress import progress
from entity_vectors.workflow.selection import eligible_filter
from entity_vectors.workflow.stage import fail_batch, plan_writes, stage_batch
from entity_vectors.workflow.vectorize import error_text, vectorize

log = structlog.get_logger("entity_vectors")


class BatchDeferred(Exception):
    """The batch may not start yet (delay_between_batches); try again in `seconds`."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"batch may start in {seconds:.1f}s")
        self.seconds = seconds


def _values_fields(context: RunContext) -> list[str]:
    fields = ["team_id"]
    for name in context.config.get_sync_values_fields():
        if name not in fields and name not in ("summary", "pk"):
            fields.append(name)
    return fields


def _instance_values(model: type[Any], fields: list[str]) -> dict[str, str] | None:
    """Field name -> attribute, if every field can be read off an instance (no lookups across relations)."""
    attributes = {}
    for name in fields:
        try:
            field = model._meta.get_field(name)
        except FieldDoesNotExist:
            field = next((f for f in model._meta.concrete_fields if f.attname == name), None)
        if field is None or not getattr(field, "concrete", False) or field.many_to_many:
            return None
        attributes[name] = name if name == field.attname else field.attname
    return attributes


def load_batch(
    context: RunContext, pks: Sequence[Any], outcome: BatchOutcome, readonly: bool = False
) -> list[EntityWork]:
    """The batch's entities in the config's order (missing ones last), with their summaries.

    `readonly` (a dry run): an entity whose content changed since it was parked is reported as it
    would be handled, but not unparked.
    """
    config = context.config
    keys = [key_of(pk) for pk in pks]
    seqs = change_seqs(context.domain, keys)
    queryset = config.get_queryset().filter(pk__in=list(pks))
    instances = list(
        queryset.annotate(
            ev_eligible=ExpressionWrapper(eligible_filter(config), output_field=BooleanField()),
            ev_consented=ExpressionWrapper(config.get_consent_filter(), output_field=BooleanField()),
        ).order_by(*config.get_queryset_ordering())
    )
    fields = _values_fields(context)
    attributes = _instance_values(config.model_class, fields)
    values: dict[Any, dict[str, Any]] = {}
    if attributes is None:  # lookups across relations: ask the database
        eligible = [instance.pk for instance in instances if instance.ev_eligible]
        values = {row["pk"]: row for row in queryset.filter(pk__in=eligible).values("pk", *fields)}
    summaries = {
        entity_id: (summary, input_hash, summarized_by)
        for entity_id, summary, input_hash, summarized_by in select_by_keys(
            EntitySummary,
            {"domain": context.domain},
            "entity_id",
            keys,
            ["entity_id", "summary", "input_hash", "summarized_by"],
        )
    }
    parked = dict(
        select_by_keys(
            EntityFailure,
            {"domain": context.domain},
            "entity_id",
            keys,
            ["entity_id", "input_hash"],
            not_null=["parked_at"],
        )
    )
    identity = configured_summarizer_identity()
    prompt = config.get_summary_prompt()
    works: list[EntityWork] = []
    seen: set[str] = set()
    unparked: list[str] = []
    for instance in instances:
        key = key_of(instance.pk)
        seen.add(key)
        state = "live" if instance.ev_eligible else ("deleted" if instance.ev_consented else "consent")
        work = EntityWork(
            pk=instance.pk, key=key, seq=seqs.get(key, 0), state=state, team_id=instance.team_id
        )
        works.append(work)
        if not work.live:
            continue
        work.instance = instance
        if attributes is None:
            work.values = {"id": instance.pk, **values[instance.pk]}
        else:
            work.values = {"id": instance.pk, "pk": instance.pk}
            work.values.update((name, getattr(instance, attribute)) for name, attribute in attributes.items())
        try:
            work.description = config.describe(instance)
        except Exception as exc:
            work.error = f"describe() failed: {error_text(exc)}"
            continue
        work.input_hash = summary_input_hash(identity, prompt, work.description)
        stored = summaries.get(key)
        if stored is not None and stored[1] == work.input_hash and stored[0]:
            work.summary, work.summarized_by = stored[0], stored[2]
        if key in parked:
            if parked[key] == work.input_hash:
                work.parked = True
            else:  # its content changed since it was parked: give it another chance
                unparked.append(key)
    if unparked and not readonly:
        EntityFailure.objects.filter(domain=context.domain, entity_id__in=unparked).delete()
    for pk, key in zip(pks, keys, strict=True):
        if key not in seen:
            works.append(EntityWork(pk=pk, key=key, seq=seqs.get(key, 0), state="gone"))
    return works


_heap_frozen = False


def _freeze_heap_once() -> None:
    """Exempt what the process holds before its first batch from the cyclic GC's full passes.

    That heap (modules, Django, the host's own state) lives as long as the process, and every
    full collection walks all of it again: at batch rates, ~8% of a run's time went there.
    Later objects are collected as usual; this runs once per process (a forked pool process
    runs it at its own first batch).
    """
    global _heap_frozen
    if not _heap_frozen:
        _heap_frozen = True
        gc.freeze()  # no collection first: it would cost a full pass, the very thing avoided


def process_batch(
    context: RunContext, index: int, access: ProviderAccess, max_attempts: int | None = None
) -> BatchOutcome | None:
    """Summarize, embed and stage one batch; None if it was done already, its run is closed, or it
    gave up after `max_attempts` attempts (recorded as failed, its entities wait for the next run).

    Raises BatchDeferred before the batch's start time.
    """
    _freeze_heap_once()
    batch = SyncRunBatch.objects.select_related("run").get(run_id=uuid.UUID(context.run_id), index=index)
    if batch.run.status != SyncRun.Status.RUNNING or batch.status != SyncRunBatch.Status.PENDING:
        return None
    now = timezone.now()
    if batch.not_before and batch.not_before > now:
        raise BatchDeferred((batch.not_before - now).total_seconds())
    if max_attempts is not None and batch.attempts >= max_attempts:
        fail_batch(
            context.run_id,
            index,
            f"gave up after {batch.attempts} attempts: {batch.error or 'no error recorded'}",
        )
        return None
    with transaction.atomic():  # one commit for both: the attempt counts, and so does the run's lease
        SyncRunBatch.objects.filter(pk=batch.pk).update(
            attempts=F("attempts") + 1, worker_pid=os.getpid(), started_at=now
        )
        progress(context.run_id)  # a batch at work keeps the run's lock alive
    carried = BatchOutcome.from_counts(batch.counts)
    outcome = BatchOutcome()
    try:
        _process(context, batch, access, outcome, carried)
    except BaseException as exc:
        # What a failed attempt paid for still counts: the retry adds it to the batch's totals.
        carried.add(outcome.carried())
        SyncRunBatch.objects.filter(pk=batch.pk, status=SyncRunBatch.Status.PENDING).update(
            counts=carried.as_counts(), error=conf.redact(error_text(exc))
        )
        raise
    outcome.add(carried)
    if context.mode == SyncRun.Mode.DISTRIBUTED:
        _flush_if_ready(context)
    return outcome


def _flush_if_ready(context: RunContext) -> None:
    """A distributed run's staged rows go to ClickHouse as soon as they fill an insert.

    A failure here fails nothing: the rows stay staged for the next flush (the callback's at the
    latest), and this batch is done.
    """
    if connection.vendor != "postgresql":
        return  # one flusher at a time needs an advisory lock
    staged = SyncRunBatch.objects.filter(run_id=uuid.UUID(context.run_id), status=SyncRunBatch.Status.STAGED)
    try:
        flush_ready(context, staged.count() * context.inputs.summarize_batch_size)
    except Exception as exc:
        log.warning("sync.flush_deferred", run_id=context.run_id, error=conf.redact(error_text(exc)))


def _process(
    context: RunContext,
    batch: SyncRunBatch,
    access: ProviderAccess,
    outcome: BatchOutcome,
    carried: BatchOutcome,
) -> None:
    row_version = next_row_version()  # before any state is read: a later plan reads later state
    read_at = timezone.now()
    works = load_batch(context, batch.entity_ids, outcome)
    entries = ledger.load_entries(
        context.domain, [work.key for work in works], [s.version for s in context.versions]
    )

    def entries_of(work: EntityWork) -> dict[int, Any]:
        return {spec.version: entries.get((work.key, spec.version)) for spec in context.versions}

    def decide(work: EntityWork) -> None:
        decide_live(context.config, work, entries_of(work), context.versions)

    to_summarize: list[EntityWork] = []
    for work in works:
        if not work.live:
            decide_gone(work, entries_of(work), context.versions)
        elif work.parked or work.error:
            continue
        elif work.summary is None:
            to_summarize.append(work)
        else:
            decide(work)
    _fetch_reused_vectors(context, works)
    to_embed = [w for w in works if w.live and w.summary is not None and still_to_embed(w)]
    if to_summarize or to_embed:
        take_batch_api_results(context.domain, to_summarize, to_embed)
        to_summarize = [work for work in to_summarize if not work.awaiting_batch_api]
        to_embed = [work for work in to_embed if not work.awaiting_batch_api and still_to_embed(work)]
    reservation = None
    if (to_summarize or to_embed) and budget.enabled():
        reservation, refused = budget.reserve(context.config, [*to_summarize, *to_embed], context.versions)
        for work in refused:
            work.over_budget = True
        to_summarize = [work for work in to_summarize if not work.over_budget]
        to_embed = [work for work in to_embed if not work.over_budget]
    transient = None
    try:
        if to_summarize or to_embed:
            transient = async_to_sync(vectorize)(
                context.config,
                access,
                {spec.version: spec.embedder for spec in context.versions},
                to_summarize,
                to_embed,
                decide,
                outcome.usage,
                context.inputs.embed_batch_size,
                {"run_id": context.run_id, "domain": context.domain, "batch_index": batch.index},
                context.start_dt.isoformat(),
            )
    finally:
        budget.settle(reservation, outcome.usage.cost_usd)
    _count(works, to_summarize, outcome)
    # Everything the batch writes, in one transaction (one commit per batch).
    with transaction.atomic():
        save_summaries(context, works)
        if transient is None:
            record_failures(context, works)
            staged = plan_writes(context, works, row_version, outcome)
            total = BatchOutcome.from_counts(outcome.as_counts())
            total.item_errors = outcome.item_errors
            total.add(carried)
            stage_batch(context, batch, works, staged, row_version, read_at, total)
    if transient is not None:
        raise transient  # the summaries are saved; the retry of the batch only embeds


def _fetch_reused_vectors(context: RunContext, works: list[EntityWork]) -> None:
    """Vectors of rows rewritten without a provider call, taken from ClickHouse.

    Only a row of exactly the expected version is copied (the ledger's confirmed row, or an
    unconfirmed write that did land); anything else is embedded again.
    """
    wanted: dict[tuple[int, str, int], Any] = {}
    for work in works:
        for version, version_work in work.versions.items():
            if version_work.action == REUSE:
                assert version_work.source_team is not None
                wanted[(version_work.source_team, work.key, version)] = version_work
    if not wanted:
        return
    found = get_store().vectors(context.domain, list(wanted))
    for key, version_work in wanted.items():
        vector, row_version = found.get(key, (None, 0))
        if (
            vector is None
            or row_version != version_work.source_version
            or vector.shape != (version_work.spec.embedder.dimensions,)
        ):
            version_work.action = EMBED
        else:
            version_work.vector = vector


def _count(works: list[EntityWork], to_summarize: list[EntityWork], outcome: BatchOutcome) -> None:
    for work in works:
        if work.parked:
            outcome.parked += 1
            continue
        if work.over_budget:
            outcome.over_budget += 1
            continue
        if work.awaiting_batch_api:
            outcome.awaiting_batch_api += 1
            continue
        if work.error:
            outcome.summary_failures += 1
            outcome.item_error(work.key, work.error)
            continue
        if work.live and work.summarized_now:
            outcome.summarized += 1
        elif work.live:
            outcome.summaries_reused += 1
        for version_work in work.versions.values():
            if version_work.error:
                outcome.embedding_failures += 1
                outcome.item_error(work.key, version_work.error)
            elif version_work.action == EMBED and version_work.vector is not None:
                outcome.embedded += 1
            elif version_work.action == REUSE:
                outcome.vectors_reused += 1
        if any(v.action == TOMBSTONE for v in work.versions.values()):
            outcome.tombstoned += 1
        if not work.failed and all(v.action == SKIP for v in work.versions.values()):
            outcome.skipped += 1
