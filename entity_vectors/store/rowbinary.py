"""Rows in ClickHouse's RowBinary format, written straight from float32 buffers.

Both stores insert this: the embedded engine reads it from a file, a server from the request
body. A vector goes in as its little-endian float32 bytes, so no Python float is made per value.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from datetime import UTC
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from entity_vectors.store.base import EmbeddingRow

COLUMNS = (
    "domain",
    "team_id",
    "id",
    "vector",
    "text",
    "properties",
    "embedding_version",
    "timestamp",
    "version",
    "is_deleted",
)

_TAIL = struct.Struct("<IqQB")  # embedding_version, timestamp (µs), version, is_deleted
_INT64 = struct.Struct("<q")


def varint(number: int) -> bytes:
    """LEB128, as RowBinary writes lengths."""
    if number < 0x80:
        return bytes((number,))
    out = bytearray()
    while True:
        byte = number & 0x7F
        number >>= 7
        if number:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _string(value: str) -> bytes:
    data = value.encode("utf-8")
    return varint(len(data)) + data


def float32_le(vector: Sequence[float] | np.ndarray[Any, Any]) -> bytes:
    """A vector as little-endian float32 bytes."""
    return np.asarray(vector, dtype="<f4").tobytes()


def row_binary(rows: Sequence[EmbeddingRow]) -> bytes:
    """Rows in COLUMNS order, as one RowBinary block."""
    parts: list[bytes] = []
    append = parts.append
    domains: dict[str, bytes] = {}
    for row in rows:
        timestamp = row.timestamp if row.timestamp.tzinfo else row.timestamp.replace(tzinfo=UTC)
        domain = domains.get(row.domain)
        if domain is None:
            domain = domains[row.domain] = _string(row.domain)
        vector = float32_le(row.vector)
        append(domain)
        append(_INT64.pack(row.team_id))
        append(_string(row.id))
        append(varint(len(vector) // 4))
        append(vector)
        append(_string(row.text))
        append(_string(row.properties))
        append(
            _TAIL.pack(
                row.embedding_version, round(timestamp.timestamp() * 1_000_000), row.version, row.is_deleted
            )
        )
    return b"".join(parts)
