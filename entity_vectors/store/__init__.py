"""ClickHouse stores: the embedded engine (chdb) or a server (clickhouse-connect), same SQL."""

from __future__ import annotations

import os
import threading

from entity_vectors import conf
from entity_vectors.exceptions import StoreUnavailable
from entity_vectors.store.base import (
    EmbeddingRow,
    EmbeddingStore,
    EntityHit,
    SqlEmbeddingStore,
    StoredRow,
    VectorKey,
    chunked,
)

__all__ = [
    "EmbeddingRow",
    "EmbeddingStore",
    "EntityHit",
    "StoredRow",
    "VectorKey",
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

    where = f"{target.host}:{target.port}"
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
            connect_timeout=conf.clickhouse_connect_timeout(),
            send_receive_timeout=300,
        )
    except (ClickHouseError, OSError) as exc:
        raise StoreUnavailable(
            f"cannot reach ClickHouse at {where} ({conf.redact(url)}): {conf.redact(str(exc))}"
        ) from exc
    return ServerStore(client, table, where)


def get_store() -> EmbeddingStore:
    """The process's store for the configured CLICKHOUSE_URL and table, created once and reused.

    Keyed by process id too: a client inherited through fork must not be shared with the parent.
    A table made by the first release is migrated on first use; its rows keep their order and
    every new row version is taken above theirs.
    """
    key = (os.getpid(), conf.clickhouse_url(), conf.clickhouse_table())
    with _lock:
        store = _stores.get(key)
        if store is None:
            same_place = next((s for k, s in _stores.items() if k[:2] == key[:2]), None)
            if isinstance(same_place, SqlEmbeddingStore):
                store = same_place.for_table(key[2])  # one connection per process and place
            else:
                store = open_store(key[1], key[2])
            migrated = store.ensure_schema()
            if migrated:
                from entity_vectors.versions import raise_row_version_floor

                raise_row_version_floor(migrated)
            _stores[key] = store
        return store


def close_store() -> None:
    """Close this process's stores (tests, shutdown)."""
    with _lock:
        # Siblings first: the store that owns a connection closes it last.
        mine = sorted((key for key in _stores if key[0] == os.getpid()), key=lambda key: not _borrowed(_stores[key]))
        for key in mine:
            _stores.pop(key).close()


def _borrowed(store: EmbeddingStore) -> bool:
    return bool(getattr(store, "_borrowed", False))
