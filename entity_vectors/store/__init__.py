"""ClickHouse stores: the embedded engine (chdb) or a server (clickhouse-connect), same SQL."""

from __future__ import annotations

import os
import threading

from entity_vectors import conf
from entity_vectors.exceptions import StoreUnavailable
from entity_vectors.store.base import EmbeddingRow, EmbeddingStore, EntityHit, StoredRow, chunked

__all__ = [
    "EmbeddingRow",
    "EmbeddingStore",
    "EntityHit",
    "StoredRow",
    "chunked",
    "close_store",
    "get_store",
    "open_store",
]

_stores: dict[tuple[int, str, str], EmbeddingStore] = {}
_lock = threading.Lock()


def open_store(url: str, table: str) -> EmbeddingStore:
    """A new store for a CLICKHOUSE_URL (prefer `get_store`, which reuses one per process)."""
    target = conf.parse_clickhouse_url(url)
    if target.kind == "chdb":
        from entity_vectors.store.embedded import EmbeddedStore

        return EmbeddedStore(target.path, table)
    import clickhouse_connect
    from clickhouse_connect.driver.exceptions import ClickHouseError

    from entity_vectors.store.server import ServerStore

    try:
        client = clickhouse_connect.get_client(
            host=target.host,
            port=target.port,
            username=target.username,
            password=target.password,
            database=target.database,
            secure=target.secure,
            # No server session: a session serialises queries and is not needed here.
            autogenerate_session_id=False,
            connect_timeout=10,
            send_receive_timeout=300,
        )
    except (ClickHouseError, OSError) as exc:
        raise StoreUnavailable(f"cannot connect to ClickHouse at {target.host}:{target.port}: {exc}") from exc
    return ServerStore(client, table)


def get_store() -> EmbeddingStore:
    """The process's store for the configured CLICKHOUSE_URL and table, created once and reused.

    Keyed by process id too: a client inherited through fork must not be shared with the parent.
    """
    key = (os.getpid(), conf.clickhouse_url(), conf.clickhouse_table())
    with _lock:
        store = _stores.get(key)
        if store is None:
            store = open_store(key[1], key[2])
            store.ensure_schema()
            _stores[key] = store
        return store


def close_store() -> None:
    """Close this process's stores (tests, shutdown)."""
    with _lock:
        for key in [key for key in _stores if key[0] == os.getpid()]:
            _stores.pop(key).close()
