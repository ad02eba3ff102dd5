"""ClickHouse stores: the embedded engine (chdb) or a server (clickhouse-connect), same SQL."""

from __future__ import annotations

import atexit
import http.client
import math
import os
import re
import socket
import threading
from typing import Any

from entity_vectors import conf
from entity_vectors.exceptions import ConfigurationError, StoreUnavailable
from entity_vectors.store.base import (
    EmbeddingRow,
    EmbeddingStore,
    EntityHit,
    SqlEmbeddingStore,
    StoredRow,
    VectorKey,
    chunked,
    short_error,
)
from entity_vectors.store.driver_logs import quiet_driver

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


SERVE_HINT = "manage.py serve_clickhouse serves the embedded one to other processes"
SEND_RECEIVE_TIMEOUT = 300


def open_store(url: str, table: str) -> EmbeddingStore:
    """A new store for a CLICKHOUSE_URL (prefer `get_store`, which reuses one per process).

    A server that cannot be reached within the connect timeout raises StoreUnavailable with one
    line naming it, the URL (password redacted), the reason and what to do.
    """
    target = conf.parse_clickhouse_url(url)
    cluster = conf.clickhouse_cluster()
    if target.kind == "chdb":
        from entity_vectors.store.shared import SharedEmbeddedStore

        if cluster:
            raise ConfigurationError(
                f"ENTITY_VECTORS_CLICKHOUSE_CLUSTER={cluster!r} needs a ClickHouse server; the embedded "
                "engine (chdb://) is a single node: unset it, or set CLICKHOUSE_URL to a server of the cluster"
            )
        # The first process holds the engine and serves it on loopback; the others connect to it.
        return SharedEmbeddedStore(target.path, table, open_store, serve=conf.embedded_share())
    import clickhouse_connect
    from clickhouse_connect.driver.exceptions import ClickHouseError
    from urllib3 import Timeout

    from entity_vectors.store.server import ServerStore

    where = f"{target.host}:{target.port}"
    timeout = conf.clickhouse_connect_timeout()
    try:
        with quiet_driver():
            client: Any = clickhouse_connect.get_client(
                host=target.host,
                port=target.port,
                username=target.username,
                password=target.password,
                database=target.database,
                secure=target.secure,
                # No server session: a session serialises queries and is not needed here.
                autogenerate_session_id=False,
                connect_timeout=timeout,
                # The handshake gets the connect timeout too: a port that accepts and never answers
                # must not hold a command for minutes. Queries get the long timeout below.
                send_receive_timeout=max(1, math.ceil(timeout)),
                query_retries=0,
            )
    except (ClickHouseError, OSError) as exc:
        raise _unavailable(url, where, timeout, exc) from exc
    client.timeout = Timeout(connect=timeout, read=SEND_RECEIVE_TIMEOUT)
    client.query_retries = 2  # clickhouse-connect's default: a stale pooled connection is retried
    return ServerStore(client, table, where, cluster)


def _unavailable(url: str, where: str, timeout: float, error: BaseException) -> StoreUnavailable:
    """One line: which ClickHouse, its URL without the password, why, and what to do."""
    reason = _unreachable_because(error, timeout)
    if reason is not None:
        return StoreUnavailable(
            f"ClickHouse at {where} is unreachable ({conf.redact(url)}): {reason}; start it, or set "
            f"CLICKHOUSE_URL ({SERVE_HINT})"
        )
    return StoreUnavailable(
        f"ClickHouse at {where} refused the connection ({conf.redact(url)}): {short_error(error)}; "
        "check the user, password and database in CLICKHOUSE_URL"
    )


def _unreachable_because(error: BaseException, timeout: float) -> str | None:
    """Why nothing that speaks ClickHouse answered, or None if a ClickHouse server answered with an error."""
    from urllib3.exceptions import ProtocolError
    from urllib3.exceptions import TimeoutError as Urllib3Timeout

    seen: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and current not in seen and len(seen) < 20:
        seen.append(current)
        current = current.__cause__ or current.__context__
    # Most telling first: urllib3's connection errors are also its timeout errors.
    reasons: list[tuple[type[BaseException] | tuple[type[BaseException], ...], str]] = [
        (ConnectionRefusedError, "connection refused"),
        (socket.gaierror, "its host name does not resolve"),
        ((TimeoutError, Urllib3Timeout), f"no answer within {timeout:g} s"),
        (
            (ConnectionError, ProtocolError, http.client.HTTPException),
            "the connection was closed without an answer (is that ClickHouse's HTTP port?)",
        ),
    ]
    for kinds, reason in reasons:
        if any(isinstance(item, kinds) for item in seen):
            return reason
    status = re.search(r"HTTP status (\d+)", str(error))
    if status is not None and "Code:" not in str(error):
        return f"it answered HTTP {status.group(1)}, not as ClickHouse does (is that ClickHouse's HTTP port?)"
    for item in seen:
        if isinstance(item, OSError):
            return " ".join((item.strerror or str(item)).split()).lower() or type(item).__name__
    return None


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
                from entity_vectors.models.row_version import raise_row_version_floor

                raise_row_version_floor(migrated)
            _stores[key] = store
        return store


def close_store() -> None:
    """Close this process's stores (tests, shutdown)."""
    with _lock:
        # Siblings first: the store that owns a connection closes it last.
        mine = sorted(
            (key for key in _stores if key[0] == os.getpid()), key=lambda key: not _borrowed(_stores[key])
        )
        for key in mine:
            _stores.pop(key).close()


# The stores close before the interpreter tears down: the embedded engine's own shutdown needs
# its thread pools alive, which they no longer are once objects kept out of the collector (the
# batch's `gc.freeze`) are finalised at the very end.
atexit.register(close_store)


def _borrowed(store: EmbeddingStore) -> bool:
    return bool(getattr(store, "_borrowed", False))
