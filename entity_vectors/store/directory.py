"""Who holds an embedded ClickHouse data directory, and where it serves the directory to others.

chdb opens a data directory from one process at a time. The process that opens it takes an
exclusive lock on a file in it (and writes its pid there); when it serves the engine over HTTP on
loopback (`devserver.ClickHouseHTTPAdapter`), it records the server's URL, with its password, in a
second file readable by its user only. Another process that finds the directory held reads that
URL and connects through clickhouse-connect (`store.shared`).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from pathlib import Path
from typing import IO

from entity_vectors.exceptions import EmbeddedStoreLocked

LOCK_NAME = ".entity-vectors.lock"
SERVER_NAME = ".entity-vectors.server"


class DirectoryHeld(EmbeddedStoreLocked):
    """Another process holds the data directory (`holder` is its pid, or "unknown")."""

    def __init__(self, message: str, holder: str) -> None:
        super().__init__(message)
        self.holder = holder


def take_directory(path: str) -> IO[str]:
    """Lock `path` for this process (the handle holds the lock until it is closed).

    Raises EmbeddedStoreLocked when this process holds it already, DirectoryHeld when another does.
    """
    Path(path).mkdir(parents=True, exist_ok=True)
    handle = open(Path(path) / LOCK_NAME, "a+")  # noqa: SIM115 - held for the store's life
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
        raise DirectoryHeld(
            f"the embedded ClickHouse at {path} is in use by another process (pid {holder}), which does "
            "not serve it to other processes: chdb allows one process per data directory",
            holder,
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    return handle


def holder(path: str) -> str:
    """The pid written by the process that holds (or last held) the directory, or "unknown"."""
    try:
        return (Path(path) / LOCK_NAME).read_text().strip() or "unknown"
    except OSError:
        return "unknown"


def announce(path: str, url: str) -> None:
    """Record that this process serves `path` at `url` (the URL carries the password: mode 0600)."""
    target = Path(path) / SERVER_NAME
    partial = target.with_name(f"{SERVER_NAME}.{os.getpid()}")
    descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        json.dump({"pid": os.getpid(), "url": url}, handle)
    os.replace(partial, target)


def withdraw(path: str) -> None:
    """Remove this process's record of serving `path` (a record of another process stays)."""
    target = Path(path) / SERVER_NAME
    pid, _ = _served_by(target)
    if pid == str(os.getpid()):
        with contextlib.suppress(OSError):
            target.unlink()


def served_url(path: str, by: str, wait: float) -> str | None:
    """The URL at which process `by` serves `path`, waiting up to `wait` seconds for it to say so
    (it may be opening the engine); None if it does not serve it."""
    deadline = time.monotonic() + wait
    target = Path(path) / SERVER_NAME
    while True:
        pid, url = _served_by(target)
        if pid == by and url:
            return url
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.05)


def _served_by(target: Path) -> tuple[str | None, str | None]:
    try:
        record = json.loads(target.read_text())
        return str(record["pid"]), str(record["url"])
    except (OSError, ValueError, KeyError, TypeError):
        return None, None
