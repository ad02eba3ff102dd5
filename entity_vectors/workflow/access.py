"""How a batch reaches the providers: its limiter (requests in flight) and rate budget.

Inline runs bound this process; distributed runs bound every worker together through Redis.
Chosen once per run by the executor, built once per batch inside the batch's event loop.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Protocol

from entity_vectors import conf
from entity_vectors.providers import Limiter
from entity_vectors.runtime import aio
from entity_vectors.runtime.limiter import LocalLimiter, RedisLimiter, limiter_key
from entity_vectors.runtime.rate_budget import LocalRateBudget, RateBudget, RedisRateBudget


@dataclass(frozen=True)
class Access:
    """A limiter and a rate budget, valid inside one event loop."""

    limiter: Limiter
    budget: RateBudget


class ProviderAccess(Protocol):
    """Opens a batch's access to the providers."""

    def open(self) -> AbstractAsyncContextManager[Access]:
        """Build the limiter and budget for the current event loop."""
        ...


class LocalAccess:
    """This process alone: an in-process semaphore, token buckets shared across its batches."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._budget = LocalRateBudget(conf.rate_limits())

    @asynccontextmanager
    async def open(self) -> AsyncIterator[Access]:
        """A fresh semaphore for this loop; the buckets carry over."""
        yield Access(limiter=LocalLimiter(self._limit), budget=self._budget)


class RedisAccess:
    """Every worker of a run together: slots and token buckets in Redis."""

    def __init__(self, url: str, run_id: str, limit: int) -> None:
        self._url = url
        self._run_id = run_id
        self._limit = limit

    @asynccontextmanager
    async def open(self) -> AsyncIterator[Access]:
        """The process loop's Redis client (`runtime.aio`), kept with its connections for the next batch;
        elsewhere one for the batch, closed with it."""
        import redis
        import redis.asyncio as aioredis

        def make() -> aioredis.Redis:
            # The library's version given, not looked up: redis-py reads it from the installed
            # package's metadata for every new connection (~1 ms each). redis-py 8 takes it in
            # a DriverInfo (lib_version alone is deprecated there); earlier releases have none.
            try:
                from redis.driver_info import DriverInfo
            except ImportError:
                return aioredis.Redis.from_url(self._url, lib_version=redis.__version__)
            return aioredis.Redis.from_url(self._url, driver_info=DriverInfo(lib_version=redis.__version__))

        async with aio.client(("redis", self._url), make) as client:
            budget = RedisRateBudget(client, conf.rate_limits())
            # A slot's lease outlasts one request attempt, which the provider timeout bounds, and
            # is renewed while the batch holds the slot; a worker killed mid-request frees its
            # slots when their leases lapse shortly after that.
            limiter = RedisLimiter(
                client, limiter_key(self._run_id), self._limit, lease_seconds=conf.provider_timeout() + 10
            )
            try:
                yield Access(limiter=limiter, budget=budget)
                await budget.drain()
            finally:
                await limiter.aclose()


def access_for(mode: str, run_id: str, limit: int) -> ProviderAccess:
    """Inline runs use this process's limits; distributed ones Redis (if the broker is Redis)."""
    url = conf.limiter_url() if mode == "distributed" else None
    if url is None:
        return LocalAccess(limit)
    return RedisAccess(url, run_id, limit)
