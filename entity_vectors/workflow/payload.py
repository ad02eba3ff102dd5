"""A batch's rows between the batch and the flush: compact JSON metadata plus one float32 buffer.

A batch of 96 vectors of 1536 floats is ~600 KB here, stored with its batch row, instead of
passing through the result backend. Each entity's rows and ledger writes stay together, so that
the flush inserts them in one statement and confirms them together.

The metadata is positional (lists, not objects with a key per value): it is written and read once
per entity of every run, and its rows are derived from the ledger writes they carry out (a live
row in the write's team, a tombstone in each team to clear), so nothing is stored twice. On
PostgreSQL the payload travels as binary parameters and results: escaped as text it would be
twice its size, and cost the worker and the server ~3 times the time.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
from django.core.serializers.json import DjangoJSONEncoder
from django.db import connections, router

from entity_vectors.bulk import binary_cursor
from entity_vectors.models import SyncRunBatch
from entity_vectors.store import EmbeddingRow
from entity_vectors.workflow.ledger import LedgerWrite
from entity_vectors.workflow.plan import EntityWork

_EMPTY = np.zeros(0, dtype=np.float32)
# The layout of the metadata; a payload staged by an earlier release (objects per unit) has none.
FORMAT = 2
_WRITE_FIELDS = tuple(field.name for field in dataclasses.fields(LedgerWrite))
_TOMBSTONES = _WRITE_FIELDS.index("tombstone_teams")


@dataclass(frozen=True)
class StagedEntity:
    """An entity's writes, as the batch plans them."""

    work: EntityWork
    writes: list[LedgerWrite]
    # Every version of the entity was handled: its change-log row goes once the writes land.
    clear: bool


@dataclass(frozen=True, slots=True)
class FlushUnit:
    """An entity's rows and ledger writes, as the flush reads them back."""

    pk: Any
    key: str
    seq: int
    clear: bool
    live: bool
    writes: list[LedgerWrite]
    rows: list[EmbeddingRow]


def pack_batch(staged: list[StagedEntity], row_version: int, read_at: datetime) -> tuple[bytes, bytes]:
    """The batch's payload: metadata (JSON) and the vectors (little-endian float32)."""
    units = []
    buffers: list[bytes] = []
    for entity in staged:
        work = entity.work
        writes = []
        for write in entity.writes:
            properties, dims = "{}", 0
            if write.live_team is not None:
                version_work = work.versions[write.version]
                if version_work.vector is None:
                    # np.asarray(None) is a one-value NaN array: never write it as a row's vector.
                    raise ValueError(
                        f"{work.key} at embedding version {write.version}: a live row without a vector"
                    )
                vector = np.asarray(version_work.vector, dtype="<f4")
                buffers.append(vector.tobytes())
                properties, dims = version_work.properties, int(vector.size)
            # Not dataclasses.astuple: it deep-copies every value, and this runs once per entity.
            writes.append([*(getattr(write, name) for name in _WRITE_FIELDS), properties, dims])
        units.append([work.pk, work.key, work.seq, entity.clear, work.live, work.summary or "", writes])
    meta = {"format": FORMAT, "row_version": row_version, "read_at": read_at.isoformat(), "units": units}
    return json.dumps(meta, cls=DjangoJSONEncoder, separators=(",", ":")).encode(), b"".join(buffers)


def unpack_batch(domain: str, payload: bytes, vectors: bytes | memoryview) -> list[FlushUnit]:
    """The payload back as flush units; vectors are views of the buffer, not copies."""
    if not payload:
        return []
    meta = json.loads(payload)
    if meta.get("format") != FORMAT:
        return _unpack_objects(domain, meta, vectors)
    buffer = np.frombuffer(vectors, dtype="<f4") if len(vectors) else _EMPTY
    offset = 0
    row_version = int(meta["row_version"])
    read_at = datetime.fromisoformat(meta["read_at"])
    units = []
    for pk, key, seq, clear, live, text, staged_writes in meta["units"]:
        key = str(key)
        rows = []
        writes = []
        for *values, properties, dims in staged_writes:
            values[_TOMBSTONES] = tuple(values[_TOMBSTONES])
            write = LedgerWrite(*values)
            writes.append(write)
            if write.live_team is not None:
                rows.append(
                    EmbeddingRow(
                        domain=domain,
                        team_id=write.live_team,
                        id=key,
                        vector=buffer[offset : offset + dims],
                        text=text,
                        properties=properties,
                        embedding_version=write.version,
                        timestamp=read_at,
                        version=row_version,
                        is_deleted=0,
                    )
                )
                offset += dims
            rows.extend(
                EmbeddingRow(
                    domain=domain,
                    team_id=team,
                    id=key,
                    vector=_EMPTY,
                    text="",
                    properties="{}",
                    embedding_version=write.version,
                    timestamp=read_at,
                    version=row_version,
                    is_deleted=1,
                )
                for team in write.tombstone_teams
            )
        units.append(
            FlushUnit(
                pk=pk, key=key, seq=int(seq), clear=bool(clear), live=bool(live), writes=writes, rows=rows
            )
        )
    if offset != buffer.size:
        raise ValueError(f"staged vectors hold {buffer.size} floats but the rows describe {offset}")
    return units


def _unpack_objects(domain: str, meta: dict[str, Any], vectors: bytes | memoryview) -> list[FlushUnit]:
    """A payload staged by an earlier release (an object per unit, write and row)."""
    buffer = np.frombuffer(vectors, dtype="<f4") if len(vectors) else _EMPTY
    offset = 0
    row_version = int(meta["row_version"])
    read_at = datetime.fromisoformat(meta["read_at"])
    units = []
    for unit in meta["units"]:
        rows = []
        for row in unit["rows"]:
            dims = int(row["dims"])
            vector = buffer[offset : offset + dims] if dims else _EMPTY
            offset += dims
            rows.append(
                EmbeddingRow(
                    domain=domain,
                    team_id=int(row["team_id"]),
                    id=str(unit["key"]),
                    vector=vector,
                    text=str(row["text"]),
                    properties=str(row["properties"]),
                    embedding_version=int(row["version"]),
                    timestamp=read_at,
                    version=row_version,
                    is_deleted=0 if dims else 1,
                )
            )
        writes = [
            LedgerWrite(**{**write, "tombstone_teams": tuple(write["tombstone_teams"])})
            for write in unit["writes"]
        ]
        units.append(
            FlushUnit(
                pk=unit["pk"],
                key=str(unit["key"]),
                seq=int(unit["seq"]),
                clear=bool(unit["clear"]),
                live=bool(unit["live"]),
                writes=writes,
                rows=rows,
            )
        )
    if offset != buffer.size:
        raise ValueError(f"staged vectors hold {buffer.size} floats but the rows describe {offset}")
    return units


def _columns(*names: str) -> tuple[Any, list[str]]:
    connection = connections[router.db_for_write(SyncRunBatch)]
    quote = connection.ops.quote_name
    meta = SyncRunBatch._meta
    return connection, [quote(str(getattr(meta.get_field(name), "column", name))) for name in names]


def store_payload(batch_pk: int, meta: bytes, vectors: bytes, **fields: Any) -> bool:
    """Move a pending batch to staged with its payload and `fields`; False if it was not pending."""
    names = ["rows", "vectors", *fields, "status"]
    connection, columns = _columns(*names, "id")
    values = [meta, vectors, *fields.values(), SyncRunBatch.Status.STAGED]
    model_fields: list[Any] = [SyncRunBatch._meta.get_field(name) for name in names]
    params = [
        field.get_db_prep_save(value, connection) for field, value in zip(model_fields, values, strict=True)
    ]
    assignments = ", ".join(f"{column} = %s" for column in columns[:-1])
    table = connection.ops.quote_name(SyncRunBatch._meta.db_table)
    with binary_cursor(connection) as cursor:
        cursor.execute(
            f"UPDATE {table} SET {assignments} WHERE {columns[-1]} = %s AND {columns[names.index('status')]} = %s",
            [*params, batch_pk, SyncRunBatch.Status.PENDING],
        )
        return bool(cursor.rowcount)


def load_payload(batch_pk: int) -> tuple[bytes, bytes] | None:
    """A batch's payload, if it is still staged (another flush of the run may have taken it)."""
    connection, (rows, vectors, pk, status) = _columns("rows", "vectors", "id", "status")
    table = connection.ops.quote_name(SyncRunBatch._meta.db_table)
    with binary_cursor(connection, results=True) as cursor:
        cursor.execute(
            f"SELECT {rows}, {vectors} FROM {table} WHERE {pk} = %s AND {status} = %s",
            [batch_pk, SyncRunBatch.Status.STAGED],
        )
        found = cursor.fetchone()
    if found is None:
        return None
    return bytes(found[0]), bytes(found[1])
