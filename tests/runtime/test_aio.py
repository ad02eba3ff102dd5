"""The process's event loop for provider calls (`entity_vectors.runtime.aio`)."""

from __future__ import annotations

import asyncio
import contextvars
import multiprocessing
import os
import threading

import pytest

from entity_vectors.runtime import aio

REQUEST = contextvars.ContextVar("REQUEST", default="none")


async def _where() -> tuple[int, str, str]:
    await asyncio.sleep(0)
    return os.getpid(), threading.current_thread().name, REQUEST.get()


async def _fail() -> None:
    await asyncio.sleep(0)
    raise ValueError("the provider said no")


def _in_child(conn: multiprocessing.connection.Connection) -> None:
    conn.send(aio.run(_where()))
    conn.close()


class TestRun:
    def test_a_result_comes_back_from_the_loop_thread_with_the_callers_context(self) -> None:
        token = REQUEST.set("batch 7")
        try:
            pid, thread, seen = aio.run(_where())
        finally:
            REQUEST.reset(token)

        assert (pid, thread, seen) == (os.getpid(), "entity-vectors-loop", "batch 7")

    def test_an_error_is_raised_in_the_caller(self) -> None:
        with pytest.raises(ValueError, match="the provider said no"):
            aio.run(_fail())

    def test_a_client_is_kept_on_the_loop_and_only_there(self) -> None:
        async def get() -> object | None:
            return aio.shared(("test", "kept"), object)

        first, second = aio.run(get()), aio.run(get())

        assert first is not None and first is second
        assert asyncio.run(get()) is None  # another loop makes its own

    def test_a_client_of_another_loop_is_made_for_the_call_and_closed_after_it(self) -> None:
        class Client:
            closed = 0

            async def aclose(self) -> None:
                self.closed += 1

        async def use() -> tuple[Client, int]:
            async with aio.client(("test", "closing"), Client) as client:
                return client, client.closed

        kept, closed_inside = aio.run(use())
        again, _ = aio.run(use())
        own, own_closed_inside = asyncio.run(use())

        assert kept is again and kept.closed == 0 and closed_inside == 0
        assert own is not kept and own_closed_inside == 0 and own.closed == 1

    def test_a_forked_process_runs_its_own_loop(self) -> None:
        aio.run(_where())  # the parent's loop exists before the fork, as in a Celery worker
        context = multiprocessing.get_context("fork")
        parent, child = context.Pipe()
        process = context.Process(target=_in_child, args=(child,))
        process.start()
        pid, thread, _ = parent.recv()
        process.join(10)

        assert process.exitcode == 0
        assert pid == process.pid and thread == "entity-vectors-loop"
