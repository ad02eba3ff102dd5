"""The embedded store: the ClickHouse engine in-process (chdb), for one process per directory.

chdb allows one process per data directory and one directory per process, so this store is for
single-process use: the demo, eager runs, the CLI. A second process gets EmbeddedStoreLocked with
what to do instead (run workers against a ClickHouse server).
"""

from __future__ import annotations

import fcntl
import json
import os
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from entity_vectors.exceptions import ConfigurationError, EmbeddedStoreLocked, StoreUnavailable
from entity_vectors.store.base import COLUMNS, STRUCTURE, EmbeddingRow, SqlEmbeddingStore, short_error
from entity_vectors.store.rowbinary import row_binary_parts
from entity_vectors.store.schema import settings_clause

_LOCK_NAME = ".entity-vectors.lock"


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

    def __init__(self, path: str, table: str) -> None:
        super().__init__(table)
        self.path = path
        self._lock = threading.Lock()
        self._purge_after_insert = True
        self._lock_file = self._take_directory(path)
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

    @staticmethod
    def _take_directory(path: str) -> IO[str]:
        Path(path).mkdir(parents=True, exist_ok=True)
        handle = open(Path(path) / _LOCK_NAME, "a+")  # noqa: SIM115 - held for the store's life
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            if holder == str(os.getpid()):
                raise EmbeddedStoreLocked(
                    f"the embedded ClickHouse at {path} is already open in this process; share the "
                    "one store (entity_vectors.store.get_store()) instead of opening it twice"
                ) from None
            raise EmbeddedStoreLocked(
                f"the embedded ClickHouse at {path} is in use by another process (pid {holder}): chdb "
                "allows one process per data directory. The embedded store is for single-process use "
                "(the demo, eager runs); run Celery workers against a ClickHouse server "
                "(CLICKHOUSE_URL=http://user:password@host:8123/db)"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        return handle

    def _run(self, sql: str, fmt: str, params: dict[str, Any] | None) -> Any:
        formatted = {name: format_param(value) for name, value in (params or {}).items()}
        with self._lock:
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

    def _insert_row_binary(self, rows: Sequence[EmbeddingRow]) -> None:
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
                + settings_clause(self.schema.insert_settings),
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
        with self._lock:
            try:
                self._session.close()
            finally:
                self._lock_file.close()
