"""Run-wide limits on provider requests in flight.

`LocalLimiter` bounds one process (an eager run). `RedisLimiter` bounds every worker process
of a run together: a slot is a member of a Redis sorted set scored by its lease's expiry, so a
worker killed mid-request frees its slot when the lease runs out instead of holding it forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import uuid
from collections.abc import AsyncIterator

import redis.asyncio as aioredis

# Drop expired leases, then take a slot if one is free. Time comes from the Redis server so
# that workers on hosts with skewed clocks agree on when a lease has run out.
_ACQUIRE = """
local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) + tonumber(now_parts[2]) / 1000000
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[1]) then
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[3])
  redis.call('EXPIRE', KEYS[1], math.ceil(tonumber(ARGV[2])) + 60)
  return 1
end
return 0
"""


class LocalLimiter:
    """At most `limit` slots held at once within this process."""

    def __init__(self, limit: int) -> None:
        self._semaphore = asyncio.Semaphore(limit)

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold one slot for the block."""
        async with self._semaphore:
            yield


class RedisLimiter:
    """At most `limit` slots held at once across every process sharing `key`."""

    def __init__(
        self,
        client: aioredis.Redis,
        key: str,
        limit: int,
        lease_seconds: float,
        poll_seconds: float = 0.05,
    ) -> None:
        self._client = client
        self._key = key
        self._limit = limit
        self._lease_seconds = lease_seconds
        self._poll_seconds = poll_seconds
        self._acquire = client.register_script(_ACQUIRE)

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Wait for a free slot, hold it for the block, then give it back."""
        token = await self.acquire()
        try:
            yield
        finally:
            await self.release(token)

    async def acquire(self) -> str:
        """Wait for a free slot and return its token; the slot lapses after the lease."""
        token = uuid.uuid4().hex
        while not await self._acquire(keys=[self._key], args=[self._limit, self._lease_seconds, token]):
            # Jitter keeps waiting workers from polling in lockstep.
            await asyncio.sleep(self._poll_seconds * random.uniform(0.5, 1.5))
        return token

    async def release(self, token: str) -> None:
        """Give a slot back before its lease runs out."""
        await self._client.zrem(self._key, token)


def limiter_key(run_id: str) -> str:
    """The Redis key of a run's request slots."""
    return f"entity-vectors:limiter:{run_id}"
