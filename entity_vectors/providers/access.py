"""How a batch (or a search) reaches the providers: its limiter (requests in flight), its rate
budget, its connection breaker (one per access, so one per run inline and one per batch task in a
distributed run: `reachability`) and, for interactive work, its retries.

Inline runs bound this process; distributed runs bound every worker together through Redis.
Chosen once per run by the executor, built once per batch inside the batch's event loop.

Two lanes share each model's rate budget in Redis: interactive work (fast-lane passes, searches)
and batch work (runs, backfills). While interactive work waits, batch work leaves it
ENTITY_VECTORS_INTERACTIVE_SHARE of each bucket; otherwise batch work takes all of it. Interactive
work retries a failing request once and briefly: a failing entity does not hold up a pass (the
runs retry it in full).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Protocol

from entity_vectors import conf
from entity_vectors.providers.base import Limiter
from entity_vectors.providers.openai import RetryPolicy
from entity_vectors.providers.reachability import ConnectionBreaker
from entity_vectors.runtime import aio
from entity_vectors.runtime.limiter import LocalLimiter, RedisLimiter, limiter_key
from entity_vectors.runtime.rate_budget import LocalRateBudget, RateBudget, RedisRateBudget

# Interactive work's retries of one request: once, after at most a second.
INTERACTIVE_RETRIES = RetryPolicy(max_retries=1, base_delay=0.25, max_delay=1.0)


@dataclass(frozen=True)
class Access:
    """A limiter, a rate budget, the retries of one request (None: the settings') and the breaker
    that stops sending to a host that cannot be reached, valid inside one event loop."""

    limiter: Limiter
    budget: RateBudget
    retries: RetryPolicy | None = None
    breaker: ConnectionBreaker | None = None


class ProviderAccess(Protocol):
    """Opens a batch's access to the providers."""

    def open(self) -> AbstractAsyncContextManager[Access]:
        """Build the limiter and budget for the current event loop."""
        ...


class LocalAccess:
    """This process alone: an in-process semaphore, token buckets shared across its batches."""

    def __init__(self, limit: int, interactive: bool = False) -> None:
        self._limit = limit
        self._interactive = interactive
        self._budget = LocalRateBudget(conf.rate_limits())
        self._breaker = ConnectionBreaker()

    @asynccontextmanager
    async def open(self) -> AsyncIterator[Access]:
        """A fresh semaphore for this loop; the buckets and the breaker carry over."""
        retries = INTERACTIVE_RETRIES if self._interactive else None
        yield Access(
            limiter=LocalLimiter(self._limit), budget=self._budget, retries=retries, breaker=self._breaker
        )


class RedisAccess:
    """Every worker of a run together: slots and token buckets in Redis."""

    def __init__(self, url: str, run_id: str, limit: int, interactive: bool = False) -> None:
        self._url = url
        self._run_id = run_id
        self._limit = limit
        self._interactive = interactive
        self._breaker = ConnectionBreaker()

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
            budget = RedisRateBudget(
                client, conf.rate_limits(), interactive=self._interactive, share=conf.interactive_share()
            )
            # A slot's lease outlasts one request attempt, which the provider timeout bounds, and
            # is renewed while the batch holds the slot; a worker killed mid-request frees its
            # slots when their leases lapse shortly after that.
            limiter = RedisLimiter(
                client, limiter_key(self._run_id), self._limit, lease_seconds=conf.provider_timeout() + 10
            )
            try:
                retries = INTERACTIVE_RETRIES if self._interactive else None
                yield Access(limiter=limiter, budget=budget, retries=retries, breaker=self._breaker)
                await budget.drain()
            finally:
                await limiter.aclose()


def access_for(mode: str, run_id: str, limit: int, interactive: bool = False) -> ProviderAccess:
    """Inline runs use this process's limits; distributed ones Redis (if the broker is Redis).
    `interactive`: the interactive lane (a fast-lane pass, a search)."""
    url = conf.limiter_url() if mode == "distributed" else None
    if url is None:
        return LocalAccess(limit, interactive)
    return RedisAccess(url, run_id, limit, interactive)
