"""Requests-per-minute and tokens-per-minute budgets per model, shared by every worker and run.

Providers limit requests and tokens per minute per model, not requests in flight. Each model
gets a token bucket for requests and one for tokens, refilled continuously at the limit per
minute. The limits come from ENTITY_VECTORS_RATE_LIMITS, else from the provider's own
`x-ratelimit-limit-*` headers once it has sent them; `x-ratelimit-remaining-*` lowers what the
bucket believes is left, so a large run slows itself down before the provider answers 429.
A 429 still backs off in the requester, and empties the bucket until the provider's reset.

`RedisRateBudget` keeps the buckets in Redis (one Lua script per step, time from the Redis
server so that hosts with skewed clocks agree); `LocalRateBudget` keeps them in this process.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

# Lua: refill both buckets, then take one request and `need` tokens, or return the wait in ms;
# -1 if the model has no limit known and no hold (nothing to budget). ARGV: rpm, tpm, need,
# interactive (1 or 0), the share kept for interactive work, the window it is kept for (seconds).
# Hash fields: rpm, tpm (learned limits), req, tok (levels), ts (last refill), hold (until),
# iseen (when interactive work last asked).
_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local s = redis.call('HMGET', KEYS[1], 'rpm', 'tpm', 'req', 'tok', 'ts', 'hold')
local rpm = tonumber(ARGV[1]); if rpm <= 0 then rpm = tonumber(s[1]) or 0 end
local tpm = tonumber(ARGV[2]); if tpm <= 0 then tpm = tonumber(s[2]) or 0 end
local need = tonumber(ARGV[3])
if tpm > 0 and need > tpm then need = tpm end
local ts = tonumber(s[5]) or now
local req = tonumber(s[3]) or rpm
local tok = tonumber(s[4]) or tpm
local elapsed = math.max(now - ts, 0)
if rpm > 0 then req = math.min(rpm, req + elapsed * rpm / 60) end
if tpm > 0 then tok = math.min(tpm, tok + elapsed * tpm / 60) end
local wait = 0
local hold = tonumber(s[6]) or 0
-- No limit known and no hold: nothing to take or wait for (-1 tells the caller so).
if rpm <= 0 and tpm <= 0 and hold <= now then return -1 end
-- Lanes: interactive work marks that it is there; batch work leaves it a share of the buckets
-- while it was there within the window, and takes everything otherwise.
local keep_req, keep_tok = 0, 0
if ARGV[4] == '1' then
  redis.call('HSET', KEYS[1], 'iseen', now)
elseif now - (tonumber(redis.call('HGET', KEYS[1], 'iseen')) or -1e9) < tonumber(ARGV[6]) then
  keep_req, keep_tok = rpm * tonumber(ARGV[5]), tpm * tonumber(ARGV[5])
end
if hold > now then wait = hold - now end
if rpm > 0 and req < 1 + keep_req then wait = math.max(wait, (1 + keep_req - req) * 60 / rpm) end
if tpm > 0 and tok < need + keep_tok then wait = math.max(wait, (need + keep_tok - tok) * 60 / tpm) end
if wait <= 0 then
  if rpm > 0 then req = req - 1 end
  if tpm > 0 then tok = tok - need end
end
redis.call('HSET', KEYS[1], 'req', req, 'tok', tok, 'ts', now)
redis.call('EXPIRE', KEYS[1], 3600)
return math.ceil(wait * 1000)
"""

# Lua: what the provider said. ARGV: limit_req, limit_tok, remaining_req, remaining_tok,
# reset_req_s, reset_tok_s, limited (1 after a 429); -1 means the header was absent.
_OBSERVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local a = {}
for i = 1, 7 do a[i] = tonumber(ARGV[i]) end
if a[1] > 0 then redis.call('HSET', KEYS[1], 'rpm', a[1]) end
if a[2] > 0 then redis.call('HSET', KEYS[1], 'tpm', a[2]) end
local s = redis.call('HMGET', KEYS[1], 'req', 'tok')
-- "Remaining" is what is left now: the refill clock restarts, or the next acquire would credit
-- refill for time the provider has already counted.
local lowered = false
if a[3] >= 0 and (tonumber(s[1]) == nil or tonumber(s[1]) > a[3]) then redis.call('HSET', KEYS[1], 'req', a[3]); lowered = true end
if a[4] >= 0 and (tonumber(s[2]) == nil or tonumber(s[2]) > a[4]) then redis.call('HSET', KEYS[1], 'tok', a[4]); lowered = true end
if lowered then redis.call('HSET', KEYS[1], 'ts', now) end
if a[7] == 1 then
  local reset = math.max(a[5], a[6], 0.05)
  redis.call('HSET', KEYS[1], 'hold', now + reset, 'req', 0, 'tok', 0, 'ts', now)
end
redis.call('EXPIRE', KEYS[1], 3600)
return 1
"""

_DURATION = re.compile(r"(?P<value>\d+(?:\.\d+)?)(?P<unit>ms|h|m|s)")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str | None) -> float | None:
    """OpenAI's reset durations: `1s`, `6m0s`, `20ms`, `1h2m3.5s`; None if absent or malformed."""
    if not text:
        return None
    total = 0.0
    position = 0
    for match in _DURATION.finditer(text.strip()):
        if match.start() != position:
            return None
        total += float(match["value"]) * _UNITS[match["unit"]]
        position = match.end()
    return total if position == len(text.strip()) and position else None


def _number(headers: Mapping[str, str], name: str) -> float | None:
    value = headers.get(name)
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


@dataclass(frozen=True)
class Observation:
    """The rate-limit headers of one answer."""

    limit_requests: float | None = None
    limit_tokens: float | None = None
    remaining_requests: float | None = None
    remaining_tokens: float | None = None
    reset_requests: float | None = None
    reset_tokens: float | None = None

    @classmethod
    def from_headers(cls, headers: Mapping[str, str]) -> Observation:
        """Read OpenAI's `x-ratelimit-*` headers (any that are present)."""
        return cls(
            limit_requests=_number(headers, "x-ratelimit-limit-requests"),
            limit_tokens=_number(headers, "x-ratelimit-limit-tokens"),
            remaining_requests=_number(headers, "x-ratelimit-remaining-requests"),
            remaining_tokens=_number(headers, "x-ratelimit-remaining-tokens"),
            reset_requests=parse_duration(headers.get("x-ratelimit-reset-requests")),
            reset_tokens=parse_duration(headers.get("x-ratelimit-reset-tokens")),
        )


@dataclass(frozen=True)
class Limits:
    """A model's configured budget; 0 means unknown (learned from headers) or none."""

    rpm: int = 0
    tpm: int = 0


class RateBudget(Protocol):
    """Waits until a request of `tokens` fits the model's budget; learns from answers."""

    async def acquire(self, model: str, tokens: int) -> None:
        """Return once one request of `tokens` tokens may be sent."""
        ...

    def observe(self, model: str, headers: Mapping[str, str], limited: bool = False) -> None:
        """Take in an answer's rate-limit headers (`limited` after a 429)."""
        ...


class NoBudget:
    """No budget: offline providers, and models with no limits known."""

    async def acquire(self, model: str, tokens: int) -> None:
        """Never waits."""

    def observe(self, model: str, headers: Mapping[str, str], limited: bool = False) -> None:
        """Ignores the headers."""


@dataclass
class _Bucket:
    rpm: float = 0.0
    tpm: float = 0.0
    requests: float | None = None
    tokens: float | None = None
    updated: float = field(default_factory=time.monotonic)
    hold_until: float = 0.0


# How long interactive work counts as waiting after it last asked (its share is kept meanwhile).
INTERACTIVE_WINDOW_SECONDS = 5.0


class LocalRateBudget:
    """Token buckets in this process (inline runs), same arithmetic as the Redis script.

    One run's alone: the lanes (`RedisRateBudget`'s `interactive` and `share`) are between the
    processes of a deployment, which share their buckets in Redis.
    """

    def __init__(self, limits: Mapping[str, Limits]) -> None:
        self._limits = dict(limits)
        self._buckets: dict[str, _Bucket] = {}
        # A thread lock, not an asyncio one: the buckets outlive each batch's event loop, and
        # nothing awaits while holding it.
        self._lock = threading.Lock()

    def _bucket(self, model: str) -> _Bucket:
        bucket = self._buckets.get(model)
        if bucket is None:
            configured = self._limits.get(model, Limits())
            bucket = self._buckets[model] = _Bucket(rpm=configured.rpm, tpm=configured.tpm)
        return bucket

    def _wait(self, bucket: _Bucket, need: float, now: float) -> float:
        elapsed = max(now - bucket.updated, 0.0)
        bucket.updated = now
        if bucket.rpm:
            level = bucket.rpm if bucket.requests is None else bucket.requests
            bucket.requests = min(bucket.rpm, level + elapsed * bucket.rpm / 60)
        if bucket.tpm:
            level = bucket.tpm if bucket.tokens is None else bucket.tokens
            bucket.tokens = min(bucket.tpm, level + elapsed * bucket.tpm / 60)
        wait = max(bucket.hold_until - now, 0.0)
        if bucket.rpm and bucket.requests is not None and bucket.requests < 1:
            wait = max(wait, (1 - bucket.requests) * 60 / bucket.rpm)
        if bucket.tpm and bucket.tokens is not None and bucket.tokens < need:
            wait = max(wait, (need - bucket.tokens) * 60 / bucket.tpm)
        return wait

    async def acquire(self, model: str, tokens: int) -> None:
        """Wait (computed, not polled) until the request fits, then take it from the buckets."""
        while True:
            with self._lock:
                bucket = self._bucket(model)
                need = min(float(tokens), bucket.tpm) if bucket.tpm else float(tokens)
                wait = self._wait(bucket, need, time.monotonic())
                if wait <= 0:
                    if bucket.rpm and bucket.requests is not None:
                        bucket.requests -= 1
                    if bucket.tpm and bucket.tokens is not None:
                        bucket.tokens -= need
                    return
            await asyncio.sleep(wait)

    def observe(self, model: str, headers: Mapping[str, str], limited: bool = False) -> None:
        """Lower the levels to what the provider says is left; learn its limits."""
        seen = Observation.from_headers(headers)
        with self._lock:
            self._observe(model, seen, limited)

    def _observe(self, model: str, seen: Observation, limited: bool) -> None:
        bucket = self._bucket(model)
        configured = self._limits.get(model, Limits())
        if not configured.rpm and seen.limit_requests:
            bucket.rpm = seen.limit_requests
        if not configured.tpm and seen.limit_tokens:
            bucket.tpm = seen.limit_tokens
        now = time.monotonic()
        # Refill up to now first, then lower to what the provider says is left now: the next
        # acquire must not credit refill for time the provider has already counted.
        self._wait(bucket, 0.0, now)
        if seen.remaining_requests is not None and (
            bucket.requests is None or bucket.requests > seen.remaining_requests
        ):
            bucket.requests = seen.remaining_requests
        if seen.remaining_tokens is not None and (
            bucket.tokens is None or bucket.tokens > seen.remaining_tokens
        ):
            bucket.tokens = seen.remaining_tokens
        if limited:
            reset = max(seen.reset_requests or 0.0, seen.reset_tokens or 0.0, 0.05)
            now = time.monotonic()
            bucket.hold_until, bucket.requests, bucket.tokens, bucket.updated = now + reset, 0.0, 0.0, now


# How long a model Redis knows no limit or hold for is taken as unlimited without asking again.
UNLIMITED_RECHECK_SECONDS = 0.5


class RedisRateBudget:
    """Token buckets in Redis, shared by every worker process and run.

    A model with no limit configured and none learned yet (a server that sends no rate-limit
    headers) costs one Redis call per `UNLIMITED_RECHECK_SECONDS`, not one per request: a hold
    another process set after a 429 is seen within that time, and headers or a 429 seen here
    end it at once.

    Two lanes share each model's buckets: `interactive` work (fast-lane passes, searches) marks
    that it is there whenever it asks; batch work (runs, backfills) leaves it `share` of each
    bucket for INTERACTIVE_WINDOW_SECONDS after that, and takes all of it otherwise.
    """

    def __init__(
        self,
        client: Any,
        limits: Mapping[str, Limits],
        prefix: str = "entity-vectors:rate",
        interactive: bool = False,
        share: float = 0.0,
    ) -> None:
        self._client = client
        self._limits = dict(limits)
        self._prefix = prefix
        self._lane = ["1" if interactive else "0", share, INTERACTIVE_WINDOW_SECONDS]
        self._acquire = client.register_script(_ACQUIRE)
        self._observe = client.register_script(_OBSERVE)
        self._pending: set[asyncio.Task[Any]] = set()
        # Model -> monotonic time until which it is known to have nothing to budget.
        self._unlimited_until: dict[str, float] = {}
        # However many requests wait, only a few Redis calls run at once (the client's pool is finite).
        self._calls: asyncio.Semaphore | None = None

    def _gate(self) -> asyncio.Semaphore:
        if self._calls is None:
            self._calls = asyncio.Semaphore(16)
        return self._calls

    def _key(self, model: str) -> str:
        return f"{self._prefix}:{model}"

    async def acquire(self, model: str, tokens: int) -> None:
        """Wait (computed from the buckets, not polled) until the request fits, then take it."""
        limits = self._limits.get(model, Limits())
        if time.monotonic() < self._unlimited_until.get(model, 0.0):
            return
        while True:
            async with self._gate():
                wait_ms = int(
                    await self._acquire(
                        keys=[self._key(model)], args=[limits.rpm, limits.tpm, tokens, *self._lane]
                    )
                )
            if wait_ms < 0:
                self._unlimited_until[model] = time.monotonic() + UNLIMITED_RECHECK_SECONDS
                return
            if wait_ms == 0:
                return
            await asyncio.sleep(wait_ms / 1000)

    def observe(self, model: str, headers: Mapping[str, str], limited: bool = False) -> None:
        """Send what the provider said to Redis (in the background of the current loop)."""
        seen = Observation.from_headers(headers)
        values = (
            seen.limit_requests,
            seen.limit_tokens,
            seen.remaining_requests,
            seen.remaining_tokens,
            seen.reset_requests,
            seen.reset_tokens,
        )
        if not limited and all(value is None for value in values):
            return
        self._unlimited_until.pop(model, None)  # there is something to budget now: ask Redis
        args = [-1 if value is None else value for value in values] + [1 if limited else 0]
        task = asyncio.get_running_loop().create_task(self._observe(keys=[self._key(model)], args=args))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def drain(self) -> None:
        """Wait for observations still being sent."""
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)
