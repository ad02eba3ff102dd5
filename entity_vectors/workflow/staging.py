"""A batch's rows between the batch and the flush: JSON metadata plus one float32 buffer.

A batch of 96 vectors of 1536 floats is ~600 KB here, stored with its batch row, instead of
passing through the result backend. Each entity's rows and ledger writes stay together, so that
the flush inserts them in one statement and confirms them together.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
from django.core.serializers.json import DjangoJSONEncoder

from entity_vectors.store import EmbeddingRow
from entity_vectors.workflow.ledger import LedgerWrite
from entity_vectors.workflow.plan import EntityWork

_EMPTY = np.zeros(0, dtype=np.float32)


@dataclass(frozen=True)
class StagedEntity:
    """An entity's writes, as the batch plans them."""

    work: EntityWork
    writes: list[LedgerWrite]
    # Every version of the entity was handled: its change-log row goes once the writes land.
    clear: bool


@dataclass(frozen=True)
class FlushUnit:
    """An entity's rows and ledger writes, as the flush reads them back."""

    pk: Any
    key: str
    seq: int
    clear: bool
    live: bool
    writes: list[LedgerWrite]
    rows: list[EmbeddingRow]


def _write_json(write: LedgerWrite) -> dict[str, Any]:
    # Not dataclasses.asdict: it deep-copies every value, and this runs once per entity.
    return {name: getattr(write, name) for name in _WRITE_FIELDS}


_WRITE_FIELDS = tuple(field.name for field in dataclasses.fields(LedgerWrite))


def pack_batch(staged: list[StagedEntity], row_version: int, read_at: datetime) -> tuple[bytes, bytes]:
    """The batch's payload: metadata (JSON) and the vectors (little-endian float32)."""
    units = []
    buffers: list[bytes] = []
    for entity in staged:
        work = entity.work
        rows = []
        for write in entity.writes:
            version_work = work.versions[write.version]
            if write.live_team is not None:
                vector = np.asarray(version_work.vector, dtype="<f4")
                buffers.append(vector.tobytes())
                rows.append(
                    {
                        "team_id": write.live_team,
                        "version": write.version,
                        "text": work.summary or "",
                        "properties": version_work.properties,
                        "dims": int(vector.size),
                    }
                )
            rows.extend(
                {"team_id": team, "version": write.version, "text": "", "properties": "{}", "dims": 0}
                for team in write.tombstone_teams
            )
        units.append(
            {
                "pk": work.pk,
                "key": work.key,
                "seq": work.seq,
                "clear": entity.clear,
                "live": work.live,
                "writes": [_write_json(write) for write in entity.writes],
                "rows": rows,
            }
        )
    meta = {"row_version": row_version, "read_at": read_at.isoformat(), "units": units}
    return json.dumps(meta, cls=DjangoJSONEncoder, separators=(",", ":")).encode(), b"".join(buffers)


def unpack_batch(domain: str, payload: bytes, vectors: bytes | memoryview) -> list[FlushUnit]:
    """The payload back as flush units; vectors are views of the buffer, not copies."""
    if not payload:
        return []
    meta = json.loads(payload)
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
