"""The run-wide request limiter on real Redis: a bound shared by every process, leases that lapse."""

from __future__ import annotations

import asyncio
import time
import uuid

import redis
import redis.asyncio as aioredis
from asgiref.sync import async_to_sync

from entity_vectors.limiter import RedisLimiter


def run_with_limiter(redis_client: redis.Redis, work: object, limit: int, lease: float) -> object:
    """Run `work(limiter)` with a fresh RedisLimiter on the test database."""
    url = redis_client.connection_pool.connection_kwargs
    key = f"test-limiter:{uuid.uuid4().hex}"

    async def main() -> object:
        client = aioredis.Redis(
            host=url.get("host", "127.0.0.1"), port=url.get("port", 6379), db=url.get("db", 0)
        )
        try:
            return await work(RedisLimiter(client, key, limit, lease_seconds=lease, poll_seconds=0.01))  # type: ignore[operator]
        finally:
            await client.aclose()

    return async_to_sync(main)()


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

        waited = run_with_limiter(redis_client, work, limit=1, lease=0.5)
        assert isinstance(waited, float) and 0.3 <= waited < 3
