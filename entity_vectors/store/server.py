"""The server store: a ClickHouse server over HTTP through clickhouse-connect."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from entity_vectors.exceptions import StoreUnavailable
from entity_vectors.store.base import COLUMNS, EmbeddingRow, SqlEmbeddingStore, short_error
from entity_vectors.store.rowbinary import PartsReader, row_binary_parts


class ServerStore(SqlEmbeddingStore):
    """Runs the shared SQL on a clickhouse-connect client (one per process, reused)."""

    def __init__(self, client: Any, table: str, where: str, cluster: str = "") -> None:
        super().__init__(table, cluster)
        self._client = client
        # Where the server is, for errors: host and port, never the credentials.
        self._where = where
        # clickhouse-connect clients are not meant for concurrent queries from several threads.
        self._lock = threading.Lock()

    def _call(self, what: str, function: Any, *args: Any, **kwargs: Any) -> Any:
        from clickhouse_connect.driver.exceptions import ClickHouseError

        with self._lock:
            try:
                return function(*args, **kwargs)
            except (ClickHouseError, OSError) as exc:
                raise StoreUnavailable(
                    f"ClickHouse at {self._where}: {what} failed: {short_error(exc)}"
                ) from exc

    def _command(self, sql: str, params: dict[str, Any] | None = None) -> None:
        self._call("command", self._client.command, sql, parameters=params)

    def _query(self, sql: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        result = self._call("query", self._client.query, sql, parameters=params)
        return [tuple(row) for row in result.result_rows]

    def _insert_row_binary(self, rows: Sequence[EmbeddingRow], settings: dict[str, str]) -> None:
        # Our own RowBinary: the driver would otherwise turn every float into a Python object.
        # The body is read from the rows' own buffers as it is sent, never joined in memory; the
        # statement leads it (given a table name, the driver would prepend the statement to a
        # copy of the body). The reader rewinds, so a connection retried by urllib3 sends it all.
        statement = f"INSERT INTO {self.table} ({', '.join(COLUMNS)}) FORMAT RowBinary\n"
        body = PartsReader(row_binary_parts(rows, prefix=statement.encode()))
        self._call(
            "insert",
            self._client.raw_insert,
            None,
            insert_block=body,
            settings=settings,
            transport_settings={"Content-Length": str(body.size)},
        )

    def close(self) -> None:
        """Close the HTTP connection pool (a sibling leaves that to its owner)."""
        if not self._borrowed:
            self._client.close()
