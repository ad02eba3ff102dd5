"""One event loop per process for provider calls, so that clients outlive a batch or a search.

Batches and searches are sync code; their provider calls are coroutines. Each call used to get
an event loop of its own, and with it new HTTP and Redis clients: every batch opened up to
`max_parallel_requests` new connections to the provider (a TLS handshake each, against the real
API) and one Redis connection per concurrent slot release. Here a process runs one loop in a
thread of its own; `run()` hands it a coroutine and waits for the result, and `shared()` keeps a
client for the next call on the same loop. A forked process (a Celery pool process) starts its
own loop on first use; the clients are closed when the process exits.

`run()` is for sync code. Code already running on another loop (an async view, a test's
`asyncio.run`) gets no shared clients: `shared()` returns None there and callers make their own.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import contextvars
import inspect
import os
import threading
from collections.abc import AsyncIterator, Callable, Coroutine, Hashable
from typing import Any, TypeVar

T = TypeVar("T")


class _ProcessLoop:
    """An event loop running forever in a daemon thread, and the clients made on it."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.loop = asyncio.new_event_loop()
        self.clients: dict[Hashable, Any] = {}
        self.thread = threading.Thread(target=self._run, name="entity-vectors-loop", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    async def _close_clients(self) -> None:
        clients, self.clients = list(self.clients.values()), {}
        for client in clients:
            with contextlib.suppress(Exception):  # closing at exit: nothing left to tell
                await _close(client)

    def stop(self, timeout: float = 5.0) -> None:
        """Close the clients and stop the loop (at exit)."""
        if self.loop.is_closed() or not self.thread.is_alive():
            return
        with contextlib.suppress(Exception):  # best effort at exit
            asyncio.run_coroutine_threadsafe(self._close_clients(), self.loop).result(timeout)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout)


_current: _ProcessLoop | None = None
_lock = threading.Lock()


def _process_loop() -> _ProcessLoop:
    global _current
    with _lock:
        if _current is None or _current.pid != os.getpid():
            # None yet, or the parent's (a fork keeps the object, not its thread): a new one.
            _current = _ProcessLoop()
        return _current


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run `coroutine` on this process's loop and return its result (or raise its error).

    The caller's context variables go with it (log context). If the wait is interrupted (a
    task's time limit, Ctrl-C), the coroutine is cancelled before the interruption goes on.
    """
    current = _process_loop()
    if threading.current_thread() is current.thread:
        coroutine.close()
        raise RuntimeError("aio.run() was called from the process loop itself; await instead")
    done: concurrent.futures.Future[T] = concurrent.futures.Future()
    started: list[asyncio.Task[T]] = []

    def start() -> None:
        task = current.loop.create_task(coroutine)  # copies the context this runs in: the caller's
        started.append(task)

        def settle(finished: asyncio.Task[T]) -> None:
            if finished.cancelled():
                done.cancel()
            elif (error := finished.exception()) is not None:
                done.set_exception(error)
            else:
                done.set_result(finished.result())

        task.add_done_callback(settle)

    current.loop.call_soon_threadsafe(start, context=contextvars.copy_context())
    try:
        return done.result()
    except BaseException:
        if not done.done():
            current.loop.call_soon_threadsafe(lambda: [task.cancel() for task in started])
        raise


def shared(key: Hashable, make: Callable[[], T]) -> T | None:
    """The client kept under `key` on this process's loop (made by `make` the first time), or
    None when the caller is not running on that loop (it then makes and closes its own)."""
    current = _current
    if current is None or current.pid != os.getpid() or threading.current_thread() is not current.thread:
        return None
    client = current.clients.get(key)
    if client is None:
        client = current.clients[key] = make()
    return client


@contextlib.asynccontextmanager
async def client(key: Hashable, make: Callable[[], T]) -> AsyncIterator[T]:
    """The client kept under `key` on this process's loop (`shared`); elsewhere a new one from
    `make`, closed on exit."""
    kept = shared(key, make)
    if kept is not None:
        yield kept
        return
    own = make()
    try:
        yield own
    finally:
        await _close(own)


async def _close(client: Any) -> None:
    """Close a client by its `aclose()` or `close()`, awaited if it is a coroutine."""
    close = getattr(client, "aclose", None) or getattr(client, "close", None)
    if close is not None:
        result = close()
        if inspect.isawaitable(result):
            await result


def _forget_after_fork() -> None:
    """In a forked child: the parent's loop thread is not there, and the lock may have been held
    by a thread that is not there either."""
    global _current, _lock
    _current = None
    _lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_after_fork)


@atexit.register
def _stop_at_exit() -> None:
    current = _current
    if current is not None and current.pid == os.getpid():
        current.stop()
