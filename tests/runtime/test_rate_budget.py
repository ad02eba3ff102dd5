"""Requests- and tokens-per-minute budgets: local token buckets and the Redis ones every worker shares."""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest
import redis
import redis.asyncio as aioredis
from asgiref.sync import async_to_sync

from entity_vectors.runtime.rate_budget import (
    Limits,
    LocalRateBudget,
    Observation,
    RedisRateBudget,
    parse_duration,
)
from tests.support.openai_rules import format_duration

T = TypeVar("T")
MODEL = "gpt-4.1-mini"


def run(coroutine: Callable[[], Awaitable[T]]) -> T:
    """Run an async test body in its own event loop."""
    return async_to_sync(coroutine)()


async def timed(awaitable: Awaitable[Any]) -> float:
    """Seconds `awaitable` took."""
    started = time.monotonic()
    await awaitable
    return time.monotonic() - started


def redis_url(redis_client: redis.Redis) -> str:
    """The test Redis database as a URL, for asyncio clients made inside a test's loop."""
    kwargs = redis_client.connection_pool.connection_kwargs
    return f"redis://{kwargs.get('host', '127.0.0.1')}:{kwargs.get('port', 6379)}/{kwargs.get('db', 0)}"


def new_prefix() -> str:
    """A Redis key prefix of this test alone."""
    return f"test-rate:{uuid.uuid4().hex}"


class TestParseDuration:
    """OpenAI's (Go) reset durations in seconds; anything else is None."""

    @pytest.mark.parametrize(
        ("text", "seconds"),
        [
            pytest.param("1s", 1.0, id="seconds"),
            pytest.param("20ms", 0.02, id="milliseconds"),
            pytest.param("6m0s", 360.0, id="minutes-and-zero-seconds"),
            pytest.param("1h2m3.5s", 3723.5, id="hours-minutes-fractional-seconds"),
            pytest.param("8.64s", 8.64, id="fractional-seconds"),
            pytest.param("1m26.4s", 86.4, id="minutes-fractional-seconds"),
            pytest.param("0s", 0.0, id="zero"),
            pytest.param(" 2s ", 2.0, id="surrounding-spaces"),
        ],
    )
    def test_durations(self, text: str, seconds: float) -> None:
        assert parse_duration(text) == pytest.approx(seconds)

    @pytest.mark.parametrize(
        "text",
        [
            pytest.param(None, id="absent"),
            pytest.param("", id="empty"),
            pytest.param("junk", id="junk"),
            pytest.param("5", id="no-unit"),
            pytest.param("1x", id="unknown-unit"),
            pytest.param("s", id="no-number"),
            pytest.param("-1s", id="negative"),
            pytest.param("1m 2s", id="space-inside"),
            pytest.param("1s junk", id="trailing-junk"),
            pytest.param("1.s", id="dangling-point"),
        ],
    )
    def test_malformed_durations_are_none(self, text: str | None) -> None:
        assert parse_duration(text) is None

    @pytest.mark.parametrize("seconds", [0.001, 0.02, 0.999, 1, 8.64, 59.999, 86.4, 360, 3723.5])
    def test_what_the_loopback_server_sends_reads_back(self, seconds: float) -> None:
        assert parse_duration(format_duration(seconds)) == pytest.approx(seconds, abs=0.001)


class TestObservation:
    """The `x-ratelimit-*` headers of one answer; absent or malformed ones are None."""

    def test_reads_every_header(self) -> None:
        seen = Observation.from_headers(
            {
                "x-ratelimit-limit-requests": "500",
                "x-ratelimit-limit-tokens": "200000",
                "x-ratelimit-remaining-requests": "499",
                "x-ratelimit-remaining-tokens": "199000.5",
                "x-ratelimit-reset-requests": "120ms",
                "x-ratelimit-reset-tokens": "6m0s",
            }
        )

        assert seen == Observation(500, 200000, 499, 199000.5, 0.12, 360.0)

    def test_absent_and_malformed_headers_are_none(self) -> None:
        seen = Observation.from_headers(
            {"x-ratelimit-limit-requests": "many", "x-ratelimit-reset-tokens": "soon"}
        )

        assert seen == Observation()


class TestLocalRateBudget:
    """Token buckets in this process: a burst of a minute's allowance, then the refill rate."""

    def test_after_the_burst_requests_pass_at_the_refill_rate(self) -> None:
        budget = LocalRateBudget({MODEL: Limits(rpm=600)})  # a burst of 600, then 10 per second

        async def body() -> list[float]:
            started = time.monotonic()
            passed: list[float] = []

            async def one() -> None:
                await budget.acquire(MODEL, 1)
                passed.append(time.monotonic() - started)

            await asyncio.gather(*(one() for _ in range(610)))
            return sorted(passed)

        passed = run(body)

        assert passed[599] < 0.2  # the burst passes at once
        assert 0.9 <= passed[-1] < 1.4  # 10 more at 10 per second
        gaps = [later - earlier for earlier, later in itertools.pairwise(passed[599:])]
        assert all(gap > 0.05 for gap in gaps), gaps

    def test_tokens_per_minute_are_counted(self) -> None:
        budget = LocalRateBudget({MODEL: Limits(tpm=60_000)})  # refills 1000 tokens a second

        async def body() -> tuple[float, float, float]:
            first = await timed(budget.acquire(MODEL, 59_000))
            second = await timed(budget.acquire(MODEL, 1_500))  # 500 missing: half a second
            third = await timed(budget.acquire(MODEL, 100))  # 100 missing: a tenth of a second
            return first, second, third

        first, second, third = run(body)

        assert first < 0.05
        assert 0.45 <= second < 0.7
        assert 0.08 <= third < 0.3

    def test_a_request_larger_than_the_budget_waits_for_a_full_bucket_not_forever(self) -> None:
        budget = LocalRateBudget({MODEL: Limits(tpm=60_000)})

        async def body() -> tuple[float, float]:
            return await timed(budget.acquire(MODEL, 10**9)), await timed(budget.acquire(MODEL, 300))

        huge, next_one = run(body)

        assert huge < 0.05  # taken as the whole bucket
        assert 0.25 <= next_one < 0.5  # which is then empty

    def test_models_and_unlisted_models_have_budgets_of_their_own(self) -> None:
        budget = LocalRateBudget({MODEL: Limits(rpm=60)})

        async def body() -> tuple[float, float]:
            for _ in range(60):
                await budget.acquire(MODEL, 1)
            other = await timed(
                asyncio.gather(*(budget.acquire("text-embedding-3-small", 10**6) for _ in range(1000)))
            )
            return other, await timed(budget.acquire(MODEL, 1))

        other, same = run(body)

        assert other < 0.2  # no limit known for the other model
        assert 0.8 <= same < 1.3  # the exhausted model waits a refill: one request a second

    @pytest.mark.parametrize(
        ("limits", "headers"),
        [
            pytest.param(
                {MODEL: Limits(rpm=120)}, {"x-ratelimit-remaining-requests": "0"}, id="configured-limits"
            ),
            pytest.param(
                {},
                {"x-ratelimit-limit-requests": "120", "x-ratelimit-remaining-requests": "0"},
                id="limits-learned-from-headers",
            ),
            pytest.param(
                {},
                {"x-ratelimit-limit-tokens": "60000", "x-ratelimit-remaining-tokens": "0"},
                id="tokens-learned-from-headers",
            ),
        ],
    )
    def test_headers_lower_the_level(self, limits: dict[str, Limits], headers: dict[str, str]) -> None:
        budget = LocalRateBudget(limits)

        async def body() -> tuple[float, float]:
            before = await timed(budget.acquire(MODEL, 500))
            budget.observe(MODEL, headers)  # the provider says nothing is left
            return before, await timed(budget.acquire(MODEL, 500))

        before, after = run(body)

        assert before < 0.05
        assert 0.4 <= after < 0.8  # one request's (or 500 tokens') refill: half a second

    def test_a_429_holds_every_request_until_the_reset(self) -> None:
        budget = LocalRateBudget({MODEL: Limits(rpm=6000)})

        async def body() -> list[float]:
            await budget.acquire(MODEL, 1)
            budget.observe(
                MODEL,
                {"x-ratelimit-reset-requests": "800ms", "x-ratelimit-reset-tokens": "300ms"},
                limited=True,
            )
            started = time.monotonic()
            passed: list[float] = []

            async def one() -> None:
                await budget.acquire(MODEL, 1)
                passed.append(time.monotonic() - started)

            await asyncio.gather(*(one() for _ in range(5)))
            return passed

        passed = run(body)

        assert all(0.75 <= seconds < 1.1 for seconds in passed), passed  # the later of the two resets

    def test_a_429_without_headers_still_backs_off_briefly(self) -> None:
        budget = LocalRateBudget({})

        async def body() -> float:
            budget.observe(MODEL, {}, limited=True)
            return await timed(budget.acquire(MODEL, 1))

        assert 0.04 <= run(body) < 0.3

    def test_headers_without_rate_limits_change_nothing(self) -> None:
        budget = LocalRateBudget({})

        async def body() -> float:
            budget.observe(MODEL, {"content-type": "application/json"})
            return await timed(asyncio.gather(*(budget.acquire(MODEL, 10**6) for _ in range(1000))))

        assert run(body) < 0.2


class TestRedisRateBudget:
    """The same buckets in Redis, shared by every client on the same prefix (every worker of a run)."""

    def test_batch_work_leaves_interactive_work_its_share(self, redis_client: redis.Redis) -> None:
        prefix = new_prefix()
        limits = {MODEL: Limits(rpm=60)}  # then one a second

        async def body() -> tuple[float, float, float]:
            clients = [aioredis.Redis.from_url(redis_url(redis_client)) for _ in range(2)]
            batch = RedisRateBudget(clients[0], limits, prefix=prefix, share=0.2)
            interactive = RedisRateBudget(clients[1], limits, prefix=prefix, interactive=True, share=0.2)
            try:
                for _ in range(47):
                    await batch.acquire(MODEL, 1)  # 13 left: more than the 12 kept
                asked = await timed(interactive.acquire(MODEL, 1))  # 12 left, and it is waiting
                kept = await timed(batch.acquire(MODEL, 1))  # must leave 12: waits for a refill
                taken = await timed(interactive.acquire(MODEL, 1))  # the share is there at once
            finally:
                for client in clients:
                    await client.aclose()
            return asked, kept, taken

        asked, kept, taken = run(body)

        assert asked < 0.1 and taken < 0.1
        assert kept >= 0.8  # one request's refill, at one a second

    def test_without_interactive_work_batch_work_takes_the_whole_bucket(self, redis_client: redis.Redis) -> None:
        prefix = new_prefix()

        async def body() -> float:
            client = aioredis.Redis.from_url(redis_url(redis_client))
            batch = RedisRateBudget(client, {MODEL: Limits(rpm=60)}, prefix=prefix, share=0.2)
            try:
                return await timed(asyncio.gather(*(batch.acquire(MODEL, 1) for _ in range(60))))
            finally:
                await client.aclose()

        assert run(body) < 0.5

    def test_two_clients_on_one_prefix_share_the_budget(self, redis_client: redis.Redis) -> None:
        prefix, elsewhere = new_prefix(), new_prefix()
        limits = {MODEL: Limits(tpm=12_000)}  # refills 200 tokens a second

        async def body() -> tuple[float, float, float]:
            clients = [aioredis.Redis.from_url(redis_url(redis_client)) for _ in range(3)]
            first, second = (RedisRateBudget(client, limits, prefix=prefix) for client in clients[:2])
            other = RedisRateBudget(clients[2], limits, prefix=elsewhere)
            try:
                took = await timed(first.acquire(MODEL, 12_000))  # the whole minute's tokens
                waited = await timed(second.acquire(MODEL, 100))  # half a second's refill
                unrelated = await timed(other.acquire(MODEL, 12_000))
            finally:
                for client in clients:
                    await client.aclose()
            return took, waited, unrelated

        took, waited, unrelated = run(body)

        assert took < 0.1
        assert 0.45 <= waited < 0.8
        assert unrelated < 0.1  # another prefix, another budget

    def test_after_the_burst_requests_pass_at_the_refill_rate(self, redis_client: redis.Redis) -> None:
        prefix = new_prefix()

        async def body() -> tuple[float, float]:
            client = aioredis.Redis.from_url(redis_url(redis_client))
            budget = RedisRateBudget(client, {MODEL: Limits(rpm=300)}, prefix=prefix)  # then 5 a second
            try:
                burst = 0.0
                for _ in range(300):
                    burst += await timed(budget.acquire(MODEL, 1))
                return burst, await timed(asyncio.gather(*(budget.acquire(MODEL, 1) for _ in range(4))))
            finally:
                await client.aclose()

        burst, extra = run(body)

        assert burst < 1.0
        # Four more at five a second, less what was regained while the burst itself took time.
        assert max(0.0, (4 - 5 * burst) / 5) - 0.1 <= extra < 1.2

    @pytest.mark.parametrize(
        ("limits", "headers"),
        [
            pytest.param(
                {MODEL: Limits(rpm=120)}, {"x-ratelimit-remaining-requests": "0"}, id="configured-limits"
            ),
            pytest.param(
                {},
                {"x-ratelimit-limit-requests": "120", "x-ratelimit-remaining-requests": "0"},
                id="limits-learned-from-headers",
            ),
        ],
    )
    def test_headers_seen_by_one_client_lower_the_level_for_another(
        self, redis_client: redis.Redis, limits: dict[str, Limits], headers: dict[str, str]
    ) -> None:
        prefix = new_prefix()

        async def body() -> tuple[float, float]:
            clients = [aioredis.Redis.from_url(redis_url(redis_client)) for _ in range(2)]
            seer, other = (RedisRateBudget(client, limits, prefix=prefix) for client in clients)
            try:
                before = await timed(seer.acquire(MODEL, 1))
                seer.observe(MODEL, headers)
                await seer.drain()
                return before, await timed(other.acquire(MODEL, 1))
            finally:
                for client in clients:
                    await client.aclose()

        before, after = run(body)

        assert before < 0.1
        assert 0.4 <= after < 0.8  # one request's refill at 120 a minute

    def test_a_429_holds_every_client_until_the_reset(self, redis_client: redis.Redis) -> None:
        prefix = new_prefix()

        async def body() -> float:
            clients = [aioredis.Redis.from_url(redis_url(redis_client)) for _ in range(2)]
            limited, other = (RedisRateBudget(client, {}, prefix=prefix) for client in clients)
            try:
                limited.observe(MODEL, {"x-ratelimit-reset-requests": "800ms"}, limited=True)
                await limited.drain()
                return await timed(other.acquire(MODEL, 1))
            finally:
                for client in clients:
                    await client.aclose()

        assert 0.75 <= run(body) < 1.1

    def test_many_concurrent_requests_on_one_client_all_get_through(self, redis_client: redis.Redis) -> None:
        prefix = new_prefix()

        async def body() -> list[Any]:
            client = aioredis.Redis.from_url(redis_url(redis_client))  # as RedisAccess makes it
            budget = RedisRateBudget(client, {MODEL: Limits(rpm=100_000)}, prefix=prefix)
            try:
                return await asyncio.gather(
                    *(budget.acquire(MODEL, 10) for _ in range(150)), return_exceptions=True
                )
            finally:
                await client.aclose()

        assert [result for result in run(body) if result is not None] == []


@pytest.mark.parametrize("kind", [pytest.param("local", id="local"), pytest.param("redis", id="redis")])
def test_remaining_means_remaining_now(redis_client: redis.Redis, kind: str) -> None:
    """`remaining-requests: 0` at the moment of the answer: the next request waits a whole refill."""
    prefix = new_prefix()

    async def body() -> float:
        client = aioredis.Redis.from_url(redis_url(redis_client))
        limits = {MODEL: Limits(rpm=120)}  # one request every half second
        budget = (
            LocalRateBudget(limits) if kind == "local" else RedisRateBudget(client, limits, prefix=prefix)
        )
        try:
            await budget.acquire(MODEL, 1)
            await asyncio.sleep(0.3)  # the request is in flight
            budget.observe(MODEL, {"x-ratelimit-remaining-requests": "0"})  # its answer: nothing left now
            if isinstance(budget, RedisRateBudget):
                await budget.drain()
            return await timed(budget.acquire(MODEL, 1))
        finally:
            await client.aclose()

    assert run(body) >= 0.45
