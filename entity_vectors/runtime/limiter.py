"""Run-wide limits on provider requests in flight.

`LocalLimiter` bounds one process (an inline run). `RedisLimiter` bounds every worker process
of a run together: a slot is a member of a Redis sorted set scored by its lease's expiry, so a
worker killed mid-request frees its slot when the lease runs out instead of holding it forever.

Waiting costs nothing while waiting: in each process one pump coroutine takes slots for the
local waiters, and when none is free it blocks on a wake-up list (BLPOP) that every release
pushes to, so a freed slot is handed over at once instead of at the next poll. The block has a
timeout, so a slot whose holder died is reclaimed when its lease lapses even if nobody releases.

A slot given back while another request of the same process waits goes straight to that
request, without a trip to Redis: the slot stays counted in the sorted set the whole time, so
the run-wide bound holds, and its lease is renewed in the background (hand-overs coalesced into
one call), so that it still lapses one lease after the last request that took it. Slots pass
from request to request at the speed of the event loop instead of after two Redis round trips
and a wake-up; the other processes get slots whenever this one has no request waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections import deque
from collections.abc import AsyncIterator

import redis.asyncio as aioredis

# Drop expired leases, then take up to ARGV[4] free slots. Time comes from the Redis server so
# that workers on hosts with skewed clocks agree on when a lease has run out.
_ACQUIRE = """
local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) + tonumber(now_parts[2]) / 1000000
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local free = tonumber(ARGV[1]) - redis.call('ZCARD', KEYS[1])
local wanted = math.min(free, tonumber(ARGV[4]))
local taken = {}
for i = 1, wanted do
  local token = ARGV[3] .. ':' .. i
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), token)
  taken[#taken + 1] = token
end
if #taken > 0 then redis.call('EXPIRE', KEYS[1], math.ceil(tonumber(ARGV[2])) + 60) end
return taken
"""

# Give a slot back and wake one waiting process; the wake-up list never grows past the limit.
_RELEASE = """
if redis.call('ZREM', KEYS[1], ARGV[1]) == 1 then
  redis.call('RPUSH', KEYS[2], 1)
  redis.call('LTRIM', KEYS[2], 0, tonumber(ARGV[2]) - 1)
  redis.call('EXPIRE', KEYS[2], 3600)
end
return 1
"""

# Renew the leases of slots handed over (ARGV[2..]) to now + ARGV[1]; return the ones that are
# gone (their lease lapsed and another process reclaimed them: they must not be reused).
_RENEW = """
local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) + tonumber(now_parts[2]) / 1000000
local gone = {}
for i = 2, #ARGV do
  if redis.call('ZSCORE', KEYS[1], ARGV[i]) then
    redis.call('ZADD', KEYS[1], 'XX', now + tonumber(ARGV[1]), ARGV[i])
  else
    gone[#gone + 1] = ARGV[i]
  end
end
redis.call('EXPIRE', KEYS[1], math.ceil(tonumber(ARGV[1])) + 60)
return gone
"""


# How long hand-overs are collected before their leases are renewed in one call; a slot's lease
# then runs from at most this long before its request started.
RENEW_DELAY_SECONDS = 1.0


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
        reclaim_seconds: float = 1.0,
    ) -> None:
        self._client = client
        self._key = key
        self._wake_key = f"{key}:wake"
        self._limit = limit
        self._lease_seconds = lease_seconds
        self._reclaim_seconds = reclaim_seconds
        self._acquire = client.register_script(_ACQUIRE)
        self._release = client.register_script(_RELEASE)
        self._renew = client.register_script(_RENEW)
        self._waiters: deque[asyncio.Future[str]] = deque()
        self._pump_task: asyncio.Task[None] | None = None
        # Slots granted to this process's requests and not given back to Redis yet.
        self._held: set[str] = set()
        # Slots handed over whose lease is still to be renewed, and the task renewing them.
        self._to_renew: set[str] = set()
        self._renew_task: asyncio.Task[None] | None = None

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
        waiter: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        if self._pump_task is None or self._pump_task.done():
            self._pump_task = asyncio.get_running_loop().create_task(self._pump())
        try:
            return await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                await self.release(waiter.result())  # granted just as we were cancelled
            raise

    async def release(self, token: str) -> None:
        """Give a slot back: to a request of this process that waits for one, else to Redis."""
        if token in self._held and self._hand_over(token):
            return
        self._held.discard(token)
        await self._release(keys=[self._key, self._wake_key], args=[token, self._limit])

    async def aclose(self) -> None:
        """Stop the pump and the renewals (the slots themselves are given back by `release`)."""
        for task in (self._pump_task, self._renew_task):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    def _hand_over(self, token: str) -> bool:
        """Pass a held slot to the first live local waiter; False if nobody waits."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(token)
                self._to_renew.add(token)
                if self._renew_task is None or self._renew_task.done():
                    self._renew_task = asyncio.get_running_loop().create_task(self._renew_leases())
                return True
        return False

    async def _renew_leases(self) -> None:
        """Give each slot handed over a lease from about now, as if it had just been taken.

        Renewals wait a moment (a small part of the lease) so that one call renews every slot
        handed over meanwhile, instead of one call per request.
        """
        while self._to_renew:
            await asyncio.sleep(min(RENEW_DELAY_SECONDS, self._lease_seconds / 10))
            tokens = list(self._to_renew)
            self._to_renew.clear()
            try:
                gone = await self._renew(keys=[self._key], args=[self._lease_seconds, *tokens])
            except Exception:
                # Not renewed: these slots go back to Redis when their requests end, not to another.
                self._held.difference_update(tokens)
                return
            for raw in gone:
                # Its lease lapsed and it may be someone else's now: never hand it over again.
                self._held.discard(raw.decode() if isinstance(raw, bytes) else str(raw))

    async def _pump(self) -> None:
        """Take slots for local waiters; a Redis failure reaches every waiter instead of hanging it."""
        try:
            await self._serve()
        except Exception as exc:
            while self._waiters:
                waiter = self._waiters.popleft()
                if not waiter.done():
                    waiter.set_exception(exc)

    async def _serve(self) -> None:
        """Take slots for local waiters while there are any; block on wake-ups when none is free."""
        woken = False
        while True:
            live = [waiter for waiter in self._waiters if not waiter.done()]
            self._waiters = deque(live)
            if not live:
                if not woken:
                    return  # nothing awaited since the check: a new waiter starts a new pump
                # Our waiters were served by hand-overs meanwhile: the wake-up is another
                # process's, pass it on instead of leaving its slot idle until a reclaim.
                woken = False
                await self._client.rpush(self._wake_key, 1)
                continue  # waiters that came during the call are this pump's to serve
            prefix = uuid.uuid4().hex
            tokens = await self._acquire(
                keys=[self._key], args=[self._limit, self._lease_seconds, prefix, len(live)]
            )
            woken = False
            for raw in tokens:
                token = raw.decode() if isinstance(raw, bytes) else str(raw)
                while self._waiters and self._waiters[0].done():
                    self._waiters.popleft()
                if not self._waiters:
                    # Its waiter was served by a hand-over or cancelled meanwhile: back to Redis.
                    await self._release(keys=[self._key, self._wake_key], args=[token, self._limit])
                    continue
                self._held.add(token)
                self._waiters.popleft().set_result(token)
            if not tokens and self._waiters:
                # Nothing free: sleep until a release anywhere wakes us, or the reclaim interval.
                woken = await self._client.blpop([self._wake_key], timeout=self._reclaim_seconds) is not None


def limiter_key(run_id: str) -> str:
    """The Redis key of a run's request slots."""
    return f"entity-vectors:limiter:{run_id}"
