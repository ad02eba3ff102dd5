"""The embedded store: the ClickHouse engine in-process (chdb), in the process that holds the directory.

chdb allows one process per data directory and one directory per process. The process that opens
the directory first runs the engine here and, asked to (`serve=True`, what `store.shared` does),
serves it on loopback to the user's other processes, which then reach it over HTTP.
"""

from __future__ import annotations

import json
import tempfile
import threading
from collections.abc import Sequence
from typing import Any

import structlog

from entity_vectors.exceptions import ConfigurationError, EmbeddedStoreLocked, StoreUnavailable
from entity_vectors.store.base import COLUMNS, STRUCTURE, EmbeddingRow, SqlEmbeddingStore, short_error
from entity_vectors.store.directory import take_directory
from entity_vectors.store.rowbinary import row_binary_parts
from entity_vectors.store.schema import settings_clause

log = structlog.get_logger("entity_vectors")


def format_param(value: Any) -> str:
    """A query parameter in ClickHouse's text form (what the HTTP interface's param_x takes)."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ",".join(_quoted(item) for item in value) + "]"
    if isinstance(value, tuple):
        return "(" + ",".join(_quoted(item) for item in value) + ")"
    raise TypeError(f"unsupported query parameter type {type(value).__name__}")


def _quoted(value: Any) -> str:
    if isinstance(value, str):
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return format_param(value)


# Inserts from this size on give their memory back at once (a flush's are ~60 MB; the fast
# lane's single rows are not worth the call).
PURGE_AFTER_INSERT_BYTES = 16 * 1024 * 1024


class EmbeddedStore(SqlEmbeddingStore):
    """chdb at `path`; statements are serialised because one session is shared by threads."""

    def __init__(self, path: str, table: str, *, serve: bool = False) -> None:
        """Open the engine at `path` (taking the directory: `directory.take_directory` raises if
        another process holds it). `serve`: serve it on loopback to this user's other processes
        too (`store.shared`), recording where beside the data."""
        super().__init__(table)
        self.path = path
        self._lock = threading.Lock()
        self._purge_after_insert = True
        self._server: Any = None
        self._lock_file = take_directory(path)
        try:
            from chdb import session
        except ImportError:
            self._lock_file.close()
            raise ConfigurationError(
                "CLICKHOUSE_URL points at the embedded engine (chdb://...) but chdb is not installed; "
                "install the 'embedded' extra (pip install 'entity-vectors[embedded]') or set "
                "CLICKHOUSE_URL to a ClickHouse server"
            ) from None
        try:
            # chdb ships no type hints: the session is used through the few calls below.
            open_session: Any = session.Session
            self._session: Any = open_session(path)
        except RuntimeError as exc:
            self._lock_file.close()
            raise EmbeddedStoreLocked(
                f"cannot open the embedded ClickHouse at {path}: {exc}. chdb opens one data directory "
                "per process; if another process uses it, stop that process or point CLICKHOUSE_URL "
                "at a ClickHouse server"
            ) from exc
        if serve:
            self._serve()

    def _serve(self) -> None:
        """Serve the session on a free loopback port; a store that cannot serve still works here."""
        from entity_vectors.store.devserver import ClickHouseHTTPAdapter

        adapter = ClickHouseHTTPAdapter(self.path, session=self._session, lock=self._lock)
        try:
            adapter.start()
        except OSError as exc:
            log.warning("store.embedded_not_served", path=self.path, error=short_error(exc))
            return
        self._server = adapter

    @property
    def served_port(self) -> int | None:
        """The loopback port other processes reach this engine at, if it is served."""
        return self._server.port if self._server is not None else None

    def _run(self, sql: str, fmt: str, params: dict[str, Any] | None) -> Any:
        formatted = {name: format_param(value) for name, value in (params or {}).items()}
        with self._lock:
            if self._server is not None:
                self._server.restore_session()
            try:
                return self._session.query(sql, fmt, params=formatted)
            except Exception as exc:
                raise StoreUnavailable(
                    f"embedded ClickHouse at {self.path} failed: {short_error(exc)}"
                ) from exc

    def _command(self, sql: str, params: dict[str, Any] | None = None) -> None:
        self._run(sql, "CSV", params)

    def _query(self, sql: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        result = self._run(sql, "JSONCompact", params)
        payload = result.bytes()
        if not payload:
            return []
        return [tuple(row) for row in json.loads(payload)["data"]]

    def _insert_row_binary(self, rows: Sequence[EmbeddingRow], settings: dict[str, str]) -> None:
        # chdb takes no request body: the rows go through a temporary RowBinary file, written
        # part by part (vectors straight from their buffers, never joined in memory).
        with tempfile.NamedTemporaryFile(dir=self.path, prefix=".insert-", suffix=".bin") as handle:
            handle.writelines(row_binary_parts(rows))
            size = handle.tell()
            handle.flush()
            columns = ", ".join(COLUMNS)
            self._command(
                f"INSERT INTO {self.table} ({columns}) SELECT {columns} "
                f"FROM file({{path:String}}, 'RowBinary', {{structure:String}})"
                + settings_clause(settings),
                {"path": handle.name, "structure": STRUCTURE},
            )
        if size >= PURGE_AFTER_INSERT_BYTES:
            self._release_insert_memory()

    def _release_insert_memory(self) -> None:
        """Hand what an insert used back to the OS (~3 times the insert's size), which the engine's
        allocator would otherwise keep in the host's own process between flushes. The command
        takes 10-40 ms after an insert of 10,000 vectors of 1536 dims, and with the pages the next
        insert takes back from the OS, flushes measured ~15% slower: the price of not holding
        ~130 MB or more for nothing. An engine built without jemalloc has no such command: the
        first refusal stops the attempts."""
        if not self._purge_after_insert:
            return
        try:
            self._command("SYSTEM JEMALLOC PURGE")
        except StoreUnavailable:
            self._purge_after_insert = False

    def close(self) -> None:
        """Close the session and release the directory (a sibling leaves that to its owner)."""
        if self._borrowed:
            return
        if self._server is not None:
            self._server.stop()
            self._server = None
        with self._lock:
            try:
                self._session.close()
            finally:
                self._lock_file.close()
