"""The run-wide request limiter on real Redis: a bound shared by every process, leases that lapse."""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest
import redis
import redis.asyncio as aioredis
from asgiref.sync import async_to_sync

from entity_vectors.runtime import limiter as limiter_module
from entity_vectors.runtime.limiter import RedisLimiter

T = TypeVar("T")


def redis_address(redis_client: redis.Redis) -> dict[str, Any]:
    """Host, port and database of the test Redis, for clients made in other loops or processes."""
    kwargs = redis_client.connection_pool.connection_kwargs
    return {
        "host": kwargs.get("host", "127.0.0.1"),
        "port": kwargs.get("port", 6379),
        "db": kwargs.get("db", 0),
    }


def run_with_limiter(
    redis_client: redis.Redis,
    work: Callable[[RedisLimiter], Awaitable[T]],
    limit: int,
    lease: float,
    reclaim: float = 1.0,
) -> T:
    """Run `work(limiter)` with a fresh RedisLimiter (new key) on the test database."""
    key = f"test-limiter:{uuid.uuid4().hex}"

    async def main() -> T:
        client = aioredis.Redis(**redis_address(redis_client))
        try:
            return await work(RedisLimiter(client, key, limit, lease_seconds=lease, reclaim_seconds=reclaim))
        finally:
            await client.aclose()

    return async_to_sync(main)()


def held(redis_client: redis.Redis, limiter: RedisLimiter) -> int:
    """Slots held right now (unexpired leases in the limiter's sorted set)."""
    return int(redis_client.zcount(limiter._key, time.time(), "+inf"))


class TestRedisLimiter:
    """At most `limit` slots at once; a holder that never returns its slot loses it at the lease's end."""

    def test_bounds_concurrent_holders(self, redis_client: redis.Redis) -> None:
        async def work(limiter: RedisLimiter) -> int:
            holding = peak = 0

            async def one() -> None:
                nonlocal holding, peak
                async with limiter.slot():
                    holding += 1
                    peak = max(peak, holding)
                    await asyncio.sleep(0.05)
                    holding -= 1

            await asyncio.gather(*(one() for _ in range(12)))
            return peak

        assert run_with_limiter(redis_client, work, limit=3, lease=10) == 3

    def test_a_dead_holders_slot_lapses_with_its_lease(self, redis_client: redis.Redis) -> None:
        async def work(limiter: RedisLimiter) -> float:
            await limiter.acquire()  # taken and never released: its process "died"
            started = time.monotonic()
            token = await limiter.acquire()
            await limiter.release(token)
            return time.monotonic() - started

        # Nobody releases, so only the reclaim interval notices the lapsed lease: the wait is the lease.
        waited = run_with_limiter(redis_client, work, limit=1, lease=0.5, reclaim=0.1)
        assert 0.4 <= waited < 0.8

    @pytest.mark.parametrize(
        "across",
        [
            pytest.param(False, id="same-limiter"),
            pytest.param(True, id="another-limiter-on-the-key"),  # as another process would hold it
        ],
    )
    def test_a_released_slot_is_handed_over_at_once(self, redis_client: redis.Redis, across: bool) -> None:
        """No polling delay: the waiter gets the slot as soon as the holder gives it back."""
        key = f"test-limiter:{uuid.uuid4().hex}"

        async def main() -> list[float]:
            clients = [aioredis.Redis(**redis_address(redis_client)) for _ in range(2)]
            # A reclaim interval of 1 s: a handover that waited for it would be plain to see.
            holder, waiter = (
                RedisLimiter(client, key, 1, lease_seconds=30, reclaim_seconds=1.0) for client in clients
            )
            if not across:
                waiter = holder
            delays = []
            try:
                for _ in range(10):
                    token = await holder.acquire()
                    waiting = asyncio.ensure_future(waiter.acquire())
                    await asyncio.sleep(0.1)  # the waiter is blocked by now
                    assert not waiting.done()
                    released = time.monotonic()
                    await holder.release(token)
                    next_token = await waiting
                    delays.append(time.monotonic() - released)
                    await waiter.release(next_token)
            finally:
                for client in clients:
                    await client.aclose()
            return delays

        delays = async_to_sync(main)()

        assert statistics.median(delays) < 0.05, delays
        assert max(delays) < 0.5, delays

    def test_two_processes_never_hold_more_than_the_limit_together(self, redis_client: redis.Redis) -> None:
        key = f"test-limiter:{uuid.uuid4().hex}"
        limit, tasks, rounds = 3, 5, 6
        context = multiprocessing.get_context("spawn")
        records: Any = context.Queue()
        start = context.Barrier(2)
        processes = [
            context.Process(
                target=_hold_slots_in_a_process,
                args=(redis_address(redis_client), key, limit, tasks, rounds, name, start, records),
            )
            for name in ("first", "second")
        ]
        for process in processes:
            process.start()
        intervals = [records.get(timeout=60) for _ in range(2 * tasks * rounds)]
        for process in processes:
            process.join(timeout=30)
            assert process.exitcode == 0

        events = sorted(
            [(acquired, 1) for _, acquired, _ in intervals] + [(released, -1) for _, _, released in intervals]
        )  # at equal times a release (-1) sorts before an acquire
        holding = peak = 0
        for _, change in events:
            holding += change
            peak = max(peak, holding)
        assert peak <= limit
        assert peak == limit  # the processes did contend
        assert {name for name, _, _ in intervals} == {"first", "second"}

    def test_cancelled_waiters_leave_no_slot_held(self, redis_client: redis.Redis) -> None:
        async def work(limiter: RedisLimiter) -> tuple[int, int, float]:
            for attempt in range(20):
                token = await limiter.acquire()
                waiters = [asyncio.ensure_future(limiter.acquire()) for _ in range(3)]
                await asyncio.sleep(0.01)
                waiters[0].cancel()  # cancelled while blocked
                await limiter.release(token)
                # Cancelled around the handover: before, during or just after the slot is granted.
                await asyncio.sleep(attempt * 0.0005)
                waiters[1].cancel()
                waiters[2].cancel()
                for waiter in waiters:
                    with contextlib.suppress(asyncio.CancelledError):
                        await limiter.release(await waiter)  # granted before the cancel landed
            await asyncio.sleep(0.1)  # a slot taken for a waiter that left is given back
            left = held(redis_client, limiter)
            started = time.monotonic()
            await limiter.release(await limiter.acquire())
            took = time.monotonic() - started
            return left, held(redis_client, limiter), took

        left, after, took = run_with_limiter(redis_client, work, limit=1, lease=30, reclaim=1.0)

        assert left == 0 and after == 0
        assert took < 0.5  # the slot was free at once, not after a lease or reclaim interval

    def test_a_redis_failure_reaches_the_waiter(self) -> None:
        async def main() -> None:
            client = aioredis.Redis(host="127.0.0.1", port=1)  # nothing listens there
            limiter = RedisLimiter(client, "test-limiter:unreachable", 1, lease_seconds=5)
            try:
                # redis-py retries the connection a few times (with backoff) before it gives up.
                with pytest.raises(redis.exceptions.ConnectionError):
                    await asyncio.wait_for(limiter.acquire(), timeout=10.0)
            finally:
                await client.aclose()

        async_to_sync(main)()


class TestHandOver:
    """A slot given back while a request of the same process waits goes to that request directly:
    still counted in Redis the whole time, its lease renewed, never reused once it was reclaimed."""

    def test_a_local_waiter_gets_the_released_slot_itself(self, redis_client: redis.Redis) -> None:
        async def work(limiter: RedisLimiter) -> tuple[str, str, list[int], int]:
            token = await limiter.acquire()
            waiting = asyncio.ensure_future(limiter.acquire())
            await asyncio.sleep(0.05)  # the waiter is queued by now
            counts = [held(redis_client, limiter)]
            await limiter.release(token)
            handed = await waiting
            counts.append(held(redis_client, limiter))
            await limiter.release(handed)
            await limiter.aclose()
            return token, handed, counts, held(redis_client, limiter)

        token, handed, counts, after = run_with_limiter(redis_client, work, limit=1, lease=30)

        assert handed == token  # the same slot, not a new one taken from Redis
        assert counts == [1, 1]  # counted in Redis before and after the hand-over
        assert after == 0  # with nobody waiting, the last release gives it back to Redis

    def test_a_handed_over_slot_gets_a_fresh_lease(
        self, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(limiter_module, "RENEW_DELAY_SECONDS", 0.0)

        async def work(limiter: RedisLimiter) -> tuple[float, float]:
            token = await limiter.acquire()
            first = float(redis_client.zscore(limiter._key, token) or 0)
            waiting = asyncio.ensure_future(limiter.acquire())
            await asyncio.sleep(0.05)
            await limiter.release(token)
            handed = await waiting
            renewed = first
            for _ in range(200):  # the renewal runs in the background
                renewed = float(redis_client.zscore(limiter._key, handed) or 0)
                if renewed > first:
                    break
                await asyncio.sleep(0.01)
            await limiter.release(handed)
            await limiter.aclose()
            return first, renewed

        first, renewed = run_with_limiter(redis_client, work, limit=1, lease=30)

        assert renewed > first

    def test_a_slot_reclaimed_by_another_process_is_not_handed_over_again(
        self, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(limiter_module, "RENEW_DELAY_SECONDS", 0.0)

        async def work(limiter: RedisLimiter) -> tuple[str, str, str, int]:
            token = await limiter.acquire()
            second = asyncio.ensure_future(limiter.acquire())
            third = asyncio.ensure_future(limiter.acquire())
            await asyncio.sleep(0.05)
            # Its lease lapsed and another process took the place: the slot is not ours any more.
            redis_client.zrem(limiter._key, token)
            await limiter.release(token)  # handed over before anyone could know
            handed = await second
            for _ in range(200):  # the renewal finds it gone
                if handed not in limiter._held:
                    break
                await asyncio.sleep(0.01)
            await limiter.release(handed)
            last = await third
            count = held(redis_client, limiter)
            await limiter.release(last)
            await limiter.aclose()
            return token, handed, last, count

        token, handed, last, count = run_with_limiter(redis_client, work, limit=1, lease=30)

        assert handed == token
        assert last != token  # a fresh slot from Redis, within the limit
        assert count == 1

    def test_a_wake_up_for_a_process_that_no_longer_waits_is_passed_on(
        self, redis_client: redis.Redis
    ) -> None:
        """One process's waiter was served by a hand-over while its pump slept on the wake-up list:
        the next wake-up reaches the other process, not only its reclaim interval."""
        key = f"test-limiter:{uuid.uuid4().hex}"

        async def main() -> str:
            clients = [aioredis.Redis(**redis_address(redis_client)) for _ in range(2)]
            # Reclaim intervals of an hour: only a wake-up can serve a waiter within the test.
            first, other = (
                RedisLimiter(client, key, 2, lease_seconds=30, reclaim_seconds=3600) for client in clients
            )
            try:
                one, two = await first.acquire(), await first.acquire()
                local = asyncio.ensure_future(first.acquire())
                await asyncio.sleep(0.1)  # the first process's pump blocks on the wake-up list first
                remote = asyncio.ensure_future(other.acquire())
                await asyncio.sleep(0.1)
                await first.release(one)  # handed over to `local`: its pump still blocks
                handed = await local
                await first.release(two)  # back to Redis: one wake-up, popped by that pump
                token = await asyncio.wait_for(remote, timeout=30)
                for limiter, held_token in ((first, handed), (other, token)):
                    await limiter.release(held_token)
                    await limiter.aclose()
                return token
            finally:
                for client in clients:
                    await client.aclose()

        assert async_to_sync(main)()


def _hold_slots_in_a_process(
    address: dict[str, Any],
    key: str,
    limit: int,
    tasks: int,
    rounds: int,
    name: str,
    start: Any,
    records: Any,
) -> None:
    """In a spawned process: `tasks` coroutines take a slot `rounds` times each, recording when."""

    async def main() -> None:
        client = aioredis.Redis(**address)
        limiter = RedisLimiter(client, key, limit, lease_seconds=30)

        async def one(index: int) -> None:
            for round_ in range(rounds):
                token = await limiter.acquire()
                acquired = time.time()
                await asyncio.sleep(0.01 + 0.01 * ((index + round_) % 3))
                released = time.time()
                await limiter.release(token)
                records.put((name, acquired, released))

        try:
            start.wait(timeout=30)
            await asyncio.gather(*(one(index) for index in range(tasks)))
        finally:
            await client.aclose()

    asyncio.run(main())
