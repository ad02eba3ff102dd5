"""The flush: staged rows into ClickHouse in `insert_batch_size` inserts, recorded in the ledger.

For each insert: the ledger records the writes as attempted, the rows go in, the ledger confirms
them, the host's mirror columns follow, the change-log rows of entities now fully handled go,
and the batches fully written are marked flushed (one commit). A crash anywhere leaves the batch
staged; flushing it again repeats an insert of the same rows with the same version, which
ClickHouse's ReplacingMergeTree keeps once.

A distributed run is flushed as it goes, like an inline one: the batch task that finds a full
insert's worth of staged rows, or rows staged longer than ENTITY_VECTORS_FLUSH_INTERVAL ago,
flushes them (`flush_ready`), one worker at a time, so that a long run's entities are searchable
as it goes and the chord's callback flushes only the tail instead of the whole run at the end.
"""

from __future__ import annotations

import uuid
from collections import deque
from dataclasses import dataclass
from typing import Any

import structlog
from django.db import connection, transaction
from django.utils import timezone

from entity_vectors import conf
from entity_vectors.bulk import update_rows
from entity_vectors.capture.changelog import changed_since, clear_changes, record_changes
from entity_vectors.capture.fast_lane import kick_after_commit
from entity_vectors.exceptions import PermanentError
from entity_vectors.models import EntityClaim, SyncRun, SyncRunBatch
from entity_vectors.store import EmbeddingStore, get_store
from entity_vectors.workflow import ledger
from entity_vectors.workflow.context import RunContext
from entity_vectors.workflow.payload import FlushUnit, load_payload, unpack_batch
from entity_vectors.workflow.progress import progress
from entity_vectors.workflow.tally import recount_closed_run

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
    """Packs staged entities into inserts of at most `chunk_size` rows (an entity is never split).

    `whole_batches`: an insert takes whole batches only, and what does not fill one stays staged
    (a flush while the run is still staging).
    """

    def __init__(
        self, context: RunContext, store: EmbeddingStore, chunk_size: int, whole_batches: bool = False
    ) -> None:
        self._context = context
        self._store = store
        self._chunk_size = chunk_size
        self._whole_batches = whole_batches
        self._units: deque[tuple[int, FlushUnit]] = deque()
        self._buffered = 0
        self._remaining: dict[int, int] = {}
        # Per batch: live rows and tombstones inserted so far (a batch may span inserts).
        self._written: dict[int, list[int]] = {}
        self._served = {spec.version for spec in context.versions if spec.served}
        self._run_pk = uuid.UUID(context.run_id)
        self.result = FlushResult()

    def add_batch(self, batch_pk: int, units: list[FlushUnit]) -> None:
        """Queue a batch's entities; insert every full chunk."""
        if not units:
            self._batches_done([batch_pk])
            return
        rows = sum(len(unit.rows) for unit in units)
        if self._whole_batches and self._buffered and self._buffered + rows > self._chunk_size:
            self._write_chunk()  # the whole batches buffered: the next one would not fit
        self._remaining[batch_pk] = len(units)
        self._units.extend((batch_pk, unit) for unit in units)
        self._buffered += rows
        while self._buffered >= self._chunk_size:
            self._write_chunk()

    def finish(self, rest: bool = False) -> None:
        """Insert what is left; while the run stages (whole batches only), only if `rest`: else
        what does not fill an insert stays staged."""
        while self._units and (rest or not self._whole_batches):
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
            raise RunClosed(
                f"run {self._context.run_id} was closed while flushing; what is left waits for the next run"
            )
        self._store.insert(rows)
        done = []
        for batch_pk, unit in chunk:
            written = self._written.setdefault(batch_pk, [0, 0])
            live = sum(1 for row in unit.rows if not row.is_deleted)
            written[0] += live
            written[1] += len(unit.rows) - live
            self._remaining[batch_pk] -= 1
            if self._remaining[batch_pk] == 0:
                done.append(batch_pk)
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
            self._batches_done(done)
            if changed_since(domain, {unit.key: unit.seq for unit in units}):
                # Edited while this batch held them (a pass passed them over): a pass of their own.
                kick_after_commit(domain)
        inserted = sum(1 for row in rows if not row.is_deleted)
        self.result.inserted += inserted
        self.result.tombstoned += len(rows) - inserted
        # Once per insert, not per batch (each is a commit of its own): the run's figures move as it
        # goes; its close counts them again from the batches flushed.
        if not progress(self._context.run_id, inserted=inserted, tombstoned=len(rows) - inserted):
            # The run was closed while these rows went in (the sweeper took it for abandoned): they
            # landed and are confirmed all the same, and the run must say so.
            recount_closed_run(self._context.run_id)

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
        """Mark batches flushed with the rows their flush confirmed (a batch the run's close dropped
        meanwhile included: its rows did land)."""
        if batch_pks:
            # Their entities are written: other writers may have them now.
            EntityClaim.objects.filter(
                run_id=self._run_pk,
                batch_index__in=SyncRunBatch.objects.filter(pk__in=batch_pks).values("index"),
            ).delete()
            update_rows(
                SyncRunBatch,
                {
                    pk: {
                        "status": SyncRunBatch.Status.FLUSHED,
                        "rows": b"",
                        "vectors": b"",
                        "inserted": self._written.get(pk, [0, 0])[0],
                        "tombstoned": self._written.get(pk, [0, 0])[1],
                    }
                    for pk in batch_pks
                },
                ["status", "rows", "vectors", "inserted", "tombstoned"],
            )
            self.result.batches += len(batch_pks)


def _flush(
    context: RunContext, store: EmbeddingStore | None, whole_batches: bool, rest: bool = False
) -> FlushResult:
    flusher = _Flusher(context, store or get_store(), context.inputs.insert_batch_size, whole_batches)
    staged = SyncRunBatch.objects.filter(run_id=uuid.UUID(context.run_id), status=SyncRunBatch.Status.STAGED)
    for batch_pk in list(staged.order_by("index").values_list("pk", flat=True)):
        payload = load_payload(batch_pk)
        if payload is None:
            continue  # flushed meanwhile by another flush of the same run
        flusher.add_batch(batch_pk, unpack_batch(context.domain, *payload))
    flusher.finish(rest)
    result = flusher.result
    if result.batches:
        log.info(
            "sync.flushed",
            domain=context.domain,
            run_id=context.run_id,
            inserted=result.inserted,
            tombstoned=result.tombstoned,
            batches=result.batches,
            partial=whole_batches,
        )
    return result


def flush_staged(context: RunContext, store: EmbeddingStore | None = None) -> FlushResult:
    """Insert every staged batch of the run, one batch's payload in memory at a time."""
    return _flush(context, store, whole_batches=False)


def _advisory_key(run_id: str) -> int:
    """A run's PostgreSQL advisory lock key (a signed 64-bit integer)."""
    return int.from_bytes(uuid.UUID(run_id).bytes[:8], "big", signed=True)


def flush_ready(
    context: RunContext, staged_rows: int, oldest_wait: float | None = None
) -> FlushResult | None:
    """While a distributed run stages: insert its staged rows if `staged_rows` (an estimate) fill
    at least one insert, or all of them if the oldest has waited `oldest_wait` seconds, at least
    ENTITY_VECTORS_FLUSH_INTERVAL, and no other worker is flushing the run.

    Returns None if it did not flush. Rows are counted in the run as they are inserted; what
    stays staged waits for the next flush (the callback's, at the latest).
    """
    overdue = oldest_wait is not None and oldest_wait >= conf.flush_interval()
    if (staged_rows < context.inputs.insert_batch_size and not overdue) or connection.vendor != "postgresql":
        return None
    key = _advisory_key(context.run_id)
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_lock(%s)", [key])
        row = cursor.fetchone()
        if row is None or not row[0]:
            return None  # another worker is flushing this run
    try:
        return _flush(context, None, whole_batches=True, rest=overdue)
    finally:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_unlock(%s)", [key])
