"""Rows in ClickHouse's RowBinary format, written straight from float32 buffers.

Both stores insert this: the embedded engine reads it from a file, a server from the request
body. A vector goes in as its little-endian float32 bytes, so no Python float is made per value,
and as a view of the row's own buffer, so no copy is made per row either: the parts are written
to the file as they are, or joined once into the request body.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from datetime import UTC
from typing import TYPE_CHECKING

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
# A piece of RowBinary: bytes, or a view of a float32 vector's buffer.
Part = bytes | memoryview


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


def row_binary_parts(rows: Sequence[EmbeddingRow], prefix: bytes = b"") -> list[Part]:
    """Rows in COLUMNS order as RowBinary, in parts (after `prefix`); a vector is a view, not a copy."""
    parts: list[Part] = [prefix] if prefix else []
    append = parts.append
    domains: dict[str, bytes] = {}
    for row in rows:
        timestamp = row.timestamp if row.timestamp.tzinfo else row.timestamp.replace(tzinfo=UTC)
        domain = domains.get(row.domain)
        if domain is None:
            domain = domains[row.domain] = _string(row.domain)
        vector = np.ascontiguousarray(row.vector, dtype="<f4")  # the row's own buffer when it is one
        append(domain)
        append(_INT64.pack(row.team_id))
        append(_string(row.id))
        append(varint(vector.size))
        append(vector.data)
        append(_string(row.text))
        append(_string(row.properties))
        append(
            _TAIL.pack(
                row.embedding_version, round(timestamp.timestamp() * 1_000_000), row.version, row.is_deleted
            )
        )
    return parts


def row_binary(rows: Sequence[EmbeddingRow], prefix: bytes = b"") -> bytes:
    """Rows in COLUMNS order, as one RowBinary block after `prefix` (one allocation)."""
    return b"".join(row_binary_parts(rows, prefix))
