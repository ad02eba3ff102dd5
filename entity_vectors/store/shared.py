"""The embedded store for every process of a laptop: the engine in one, loopback HTTP for the rest.

chdb opens a data directory from one process at a time. With `CLICKHOUSE_URL=chdb://...`, the
first process that needs the store (`runserver`, a command, a worker, the demo) opens the engine
and serves it on a free loopback port with a new password, recording the URL beside the data
(`directory.announce`, readable by the user only). Every other process that opens the same
directory finds it held, reads that URL and connects through clickhouse-connect. When the process
that holds it exits, the next statement of another one takes the directory over (or finds the
process that did), so a command that ends does not break the web server that borrowed its engine.

No manual server, no "in use by another process": that error remains only where the holder does
not serve the directory (ENTITY_VECTORS_EMBEDDED_SHARE=false there, or an older release).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from entity_vectors.exceptions import EmbeddedStoreLocked, StoreUnavailable
from entity_vectors.store.base import EmbeddingRow, EmbeddingStore, SqlEmbeddingStore
from entity_vectors.store.directory import DirectoryHeld, served_url
from entity_vectors.store.driver_logs import quiet_driver
from entity_vectors.store.embedded import EmbeddedStore

# How long to wait for the holder to say where it serves (it may be opening the engine), and to
# take over a directory its holder has just left.
ANNOUNCE_WAIT_SECONDS = 10.0

Connect = Callable[[str, str], EmbeddingStore]
T = TypeVar("T")


class SharedEmbeddedStore(SqlEmbeddingStore):
    """`chdb://path` from any process: the engine here if this process holds the directory, else
    the holder's loopback server. Siblings (`for_table`) share the one connection."""

    def __init__(self, path: str, table: str, connect: Connect, *, serve: bool = True) -> None:
        """`connect(url, table)` opens a server store (clickhouse-connect) for a holder's URL;
        `serve`: serve the engine to other processes when this process holds it."""
        super().__init__(table)
        self.path = path
        self._link = _Link(path, table, connect, serve)

    @property
    def where(self) -> str:
        """Where this process's statements run: the engine here, or another process's over loopback."""
        return self._link.where()

    def _command(self, sql: str, params: dict[str, Any] | None = None) -> None:
        self._link.call(self.table, lambda store: store._command(sql, params), read=False)

    def _query(self, sql: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        return self._link.call(self.table, lambda store: store._query(sql, params), read=True)

    def _insert_row_binary(self, rows: Sequence[EmbeddingRow], settings: dict[str, str]) -> None:
        self._link.call(self.table, lambda store: store._insert_row_binary(rows, settings), read=False)

    def close(self) -> None:
        """Close the engine (and stop serving it) or the connection; a sibling leaves that to its owner."""
        if not self._borrowed:
            self._link.close()


class _Link:
    """The one way this process reaches the directory, replaced when its holder goes away."""

    def __init__(self, path: str, table: str, connect: Connect, serve: bool) -> None:
        self._path = path
        self._table = table
        self._connect = connect
        self._serve = serve
        self._lock = threading.Lock()
        self._base: SqlEmbeddingStore = self._open()
        self._tables: dict[str, SqlEmbeddingStore] = {}

    def where(self) -> str:
        if isinstance(self._base, EmbeddedStore):
            return f"the engine in this process, served to others at 127.0.0.1:{self._base.served_port}"
        return "the engine of another process, over loopback"

    def _open(self) -> SqlEmbeddingStore:
        """Hold the directory, or connect to the process that holds it and serves it."""
        deadline = time.monotonic() + ANNOUNCE_WAIT_SECONDS
        while True:
            try:
                return EmbeddedStore(self._path, self._table, serve=self._serve)
            except DirectoryHeld as held:
                url = served_url(self._path, held.holder, max(0.0, deadline - time.monotonic()))
                if url is None:
                    raise EmbeddedStoreLocked(
                        f"{held}; set ENTITY_VECTORS_EMBEDDED_SHARE=true there (the default) so that it "
                        "serves it, stop it, or point CLICKHOUSE_URL at a ClickHouse server"
                    ) from None
                try:
                    store = self._connect(url, self._table)
                except StoreUnavailable:
                    # The holder stopped between announcing and our connect: take over, or find
                    # the process that did.
                    if time.monotonic() >= deadline:
                        raise
                    time.sleep(0.05)
                    continue
                assert isinstance(store, SqlEmbeddingStore), "a ClickHouse URL opens an SQL store"
                return store

    def store(self, table: str) -> SqlEmbeddingStore:
        with self._lock:
            if table == self._table:
                return self._base
            sibling = self._tables.get(table)
            if sibling is None:
                sibling = self._tables[table] = self._base.for_table(table)
            return sibling

    def call(self, table: str, statement: Callable[[SqlEmbeddingStore], T], *, read: bool) -> T:
        """Run `statement` on this process's way to the directory; if the holder has gone (nothing
        listens any more: nothing ran), reach the directory again and run it once more. A read is
        run again after any lost connection too; a write only when the connection was refused."""
        store = self.store(table)
        try:
            if isinstance(store, EmbeddedStore):
                return statement(store)
            with quiet_driver():  # a holder that has gone is not worth the driver's own warning
                return statement(store)
        except StoreUnavailable as exc:
            if isinstance(store, EmbeddedStore) or not _holder_gone(exc, read):
                raise
            self._replace(store)
        return statement(self.store(table))

    def _replace(self, failed: SqlEmbeddingStore) -> None:
        with self._lock:
            if failed is not self._base and failed not in self._tables.values():
                return  # another thread reconnected already
            old = self._base
            self._base = self._open()
            self._tables = {}
        old.close()

    def close(self) -> None:
        with self._lock:
            self._tables = {}
            self._base.close()


def _holder_gone(error: BaseException, read: bool) -> bool:
    """Whether a statement failed because the holder's server is gone (a write: it never ran)."""
    kinds: tuple[type[BaseException], ...] = (
        (ConnectionRefusedError, ConnectionResetError, ConnectionAbortedError, BrokenPipeError)
        if read
        else (ConnectionRefusedError,)
    )
    seen: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and current not in seen and len(seen) < 20:
        if isinstance(current, kinds):
            return True
        seen.append(current)
        current = current.__cause__ or current.__context__
    text = str(error)
    return "Connection refused" in text or (read and "Connection reset" in text)
