"""The flush: staged rows into ClickHouse in `insert_batch_size` inserts, recorded in the ledger.

For each insert: the ledger records the writes as attempted, the rows go in, the ledger confirms
them, the host's mirror columns follow, and the change-log rows of entities now fully handled
go. A crash anywhere leaves the batch staged; flushing it again repeats an insert of the same
rows with the same version, which ClickHouse's ReplacingMergeTree keeps once.
"""

from __future__ import annotations

import uuid
from collections import deque
from dataclasses import dataclass
from typing import Any

import structlog
from django.db import transaction
from django.utils import timezone

from entity_vectors.changes import clear_changes, record_changes
from entity_vectors.exceptions import PermanentError
from entity_vectors.models import SyncRun, SyncRunBatch
from entity_vectors.store import EmbeddingStore, get_store
from entity_vectors.workflow import ledger
from entity_vectors.workflow.context import RunContext
from entity_vectors.workflow.progress import progress
from entity_vectors.workflow.staging import FlushUnit, unpack_batch

log = structlog.get_logger("entity_vectors")


@dataclass
class FlushResult:
    """What a flush wrote."""

    inserted: int = 0
    tombstoned: int = 0
    batches: int = 0

    def add(self, other: FlushResult) -> None:
        """Add another flush's counts."""
        self.inserted += other.inserted
        self.tombstoned += other.tombstoned
        self.batches += other.batches


class RunClosed(PermanentError):
    """The run was closed (by the sweeper) while its flush was under way: stop inserting."""


class _Flusher:
    """Packs staged entities into inserts of at most `chunk_size` rows (an entity is never split)."""

    def __init__(self, context: RunContext, store: EmbeddingStore, chunk_size: int) -> None:
        self._context = context
        self._store = store
        self._chunk_size = chunk_size
        self._units: deque[tuple[int, FlushUnit]] = deque()
        self._buffered = 0
        self._remaining: dict[int, int] = {}
        self._served = {spec.version for spec in context.versions if spec.served}
        self._run_pk = uuid.UUID(context.run_id)
        self.result = FlushResult()

    def add_batch(self, batch_pk: int, units: list[FlushUnit]) -> None:
        """Queue a batch's entities; insert every full chunk."""
        if not units:
            self._batches_done([batch_pk])
            return
        self._remaining[batch_pk] = len(units)
        self._units.extend((batch_pk, unit) for unit in units)
        self._buffered += sum(len(unit.rows) for unit in units)
        while self._buffered >= self._chunk_size:
            self._write_chunk()

    def finish(self) -> None:
        """Insert what is left."""
        while self._units:
            self._write_chunk()

    def _write_chunk(self) -> None:
        chunk: list[tuple[int, FlushUnit]] = []
        size = 0
        while self._units and (not chunk or size + len(self._units[0][1].rows) <= self._chunk_size):
            item = self._units.popleft()
            chunk.append(item)
            size += len(item[1].rows)
        self._buffered -= size
        units = [unit for _, unit in chunk]
        writes = [write for unit in units for write in unit.writes]
        rows = [row for unit in units for row in unit.rows]
        domain = self._context.domain
        # The writes were recorded as attempted when their batch was staged.
        if not SyncRun.objects.filter(pk=self._run_pk, status=SyncRun.Status.RUNNING).exists():
            raise RunClosed(f"run {self._context.run_id} was closed while flushing; what is left waits for the next run")
        self._store.insert(rows)
        with transaction.atomic():  # one commit for everything the chunk's insert settles
            confirmed = ledger.confirm(domain, writes)
            won = {(write.entity_id, write.version) for write in confirmed.won}
            self._mirror(units, won)
            clear_changes(
                domain,
                {
                    unit.key: unit.seq
                    for unit in units
                    if unit.clear and all((write.entity_id, write.version) in won for write in unit.writes)
                },
            )
            if confirmed.requeue:
                record_changes(domain, list(confirmed.requeue))
        self.result.inserted += sum(1 for row in rows if not row.is_deleted)
        self.result.tombstoned += sum(1 for row in rows if row.is_deleted)
        done = []
        for batch_pk, _ in chunk:
            self._remaining[batch_pk] -= 1
            if self._remaining[batch_pk] == 0:
                done.append(batch_pk)
        self._batches_done(done)

    def _mirror(self, units: list[FlushUnit], won: set[tuple[str, int]]) -> None:
        """The host's convenience columns follow the served version's confirmed rows."""
        manager = self._context.config.model_class._default_manager
        synced: dict[int, list[Any]] = {}
        cleared: list[Any] = []
        for unit in units:
            for write in unit.writes:
                if write.version not in self._served or (write.entity_id, write.version) not in won:
                    continue
                if write.live_team is not None:
                    synced.setdefault(write.version, []).append(unit.pk)
                else:
                    cleared.append(unit.pk)
        now = timezone.now()
        # update() sends no signals and leaves auto_now alone: syncing is not an edit of the entity.
        for version, pks in synced.items():
            manager.filter(pk__in=pks).update(embedding_last_synced_at=now, embedding_version=version)
        if cleared:
            manager.filter(pk__in=cleared).update(embedding_last_synced_at=None, embedding_version=None)

    def _batches_done(self, batch_pks: list[int]) -> None:
        if batch_pks:
            SyncRunBatch.objects.filter(pk__in=batch_pks).update(
                status=SyncRunBatch.Status.FLUSHED, rows=b"", vectors=b""
            )
            self.result.batches += len(batch_pks)


def flush_staged(context: RunContext, store: EmbeddingStore | None = None) -> FlushResult:
    """Insert every staged batch of the run, one batch's payload in memory at a time."""
    store = store or get_store()
    flusher = _Flusher(context, store, context.inputs.insert_batch_size)
    staged = SyncRunBatch.objects.filter(run_id=uuid.UUID(context.run_id), status=SyncRunBatch.Status.STAGED)
    for batch_pk in list(staged.order_by("index").values_list("pk", flat=True)):
        batch = SyncRunBatch.objects.filter(pk=batch_pk, status=SyncRunBatch.Status.STAGED).first()
        if batch is None:
            continue  # flushed meanwhile by another flush of the same run
        flusher.add_batch(batch.pk, unpack_batch(context.domain, bytes(batch.rows), bytes(batch.vectors)))
        progress(context.run_id)
    flusher.finish()
    result = flusher.result
    if result.batches:
        log.info(
            "sync.flushed",
            domain=context.domain,
            run_id=context.run_id,
            inserted=result.inserted,
            tombstoned=result.tombstoned,
            batches=result.batches,
        )
    return result
