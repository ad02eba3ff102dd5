"""Rows in ClickHouse's RowBinary format, written straight from float32 buffers.

Both stores insert this: the embedded engine reads it from a file, a server from the request
body. A vector goes in as its little-endian float32 bytes, so no Python float is made per value,
and as a view of the row's own buffer, so no copy is made per row either: the parts are written
to the file as they are, or joined once into the request body.
"""

from __future__ import annotations

import bisect
import io
import itertools
import struct
from collections.abc import Sequence
from datetime import UTC
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from entity_vectors.store.rows import EmbeddingRow

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
# A piece of RowBinary: bytes, or a byte view of a float32 vector's buffer.
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
    """Rows in COLUMNS order as RowBinary, in parts (after `prefix`): per row, the columns before
    the vector, a byte view of the vector (not a copy), and the columns after it."""
    parts: list[Part] = [prefix] if prefix else []
    append = parts.append
    domains: dict[str, bytes] = {}
    for row in rows:
        timestamp = row.timestamp if row.timestamp.tzinfo else row.timestamp.replace(tzinfo=UTC)
        domain = domains.get(row.domain)
        if domain is None:
            domain = domains[row.domain] = _string(row.domain)
        vector = np.ascontiguousarray(row.vector, dtype="<f4")  # the row's own buffer when it is one
        append(domain + _INT64.pack(row.team_id) + _string(row.id) + varint(vector.size))
        append(vector.data.cast("B"))
        append(
            _string(row.text)
            + _string(row.properties)
            + _TAIL.pack(
                row.embedding_version, round(timestamp.timestamp() * 1_000_000), row.version, row.is_deleted
            )
        )
    return parts


def row_binary(rows: Sequence[EmbeddingRow], prefix: bytes = b"") -> bytes:
    """Rows in COLUMNS order, as one RowBinary block after `prefix` (one allocation)."""
    return b"".join(row_binary_parts(rows, prefix))


class PartsReader(io.RawIOBase):
    """Parts read as one seekable stream: a request body that is never joined in memory.

    Seekable, so that an HTTP client that must send the body again (a retried connection)
    rewinds it instead of sending what is left of it.
    """

    def __init__(self, parts: list[Part]) -> None:
        super().__init__()
        self._parts = parts  # bytes, and byte views of vectors (`row_binary_parts`)
        self._starts = list(itertools.accumulate((len(part) for part in self._parts), initial=0))
        self.size = self._starts[-1]
        self._index = 0  # the part holding the position
        self._offset = 0  # the position within that part

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._starts[self._index] + self._offset

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.tell(), io.SEEK_END: self.size}[whence]
        position = min(max(base + offset, 0), self.size)
        self._index = bisect.bisect_right(self._starts, position) - 1
        self._offset = position - self._starts[self._index]
        return position

    def readinto(self, buffer: Any) -> int:
        target = memoryview(buffer).cast("B")
        filled = 0
        while filled < len(target) and self._index < len(self._parts):
            part = self._parts[self._index]
            count = min(len(part) - self._offset, len(target) - filled)
            target[filled : filled + count] = part[self._offset : self._offset + count]
            filled += count
            self._offset += count
            if self._offset == len(part):
                self._index += 1
                self._offset = 0
        return filled
