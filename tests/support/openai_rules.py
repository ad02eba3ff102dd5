"""The fake OpenAI server's wire basics and rules: API errors, ids, fault rules, rate-limit buckets."""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

CORRUPTIONS = ("missing", "extra", "wrong_dimension", "shuffled", "bad_index", "nan")


ERROR_KINDS = {
    400: ("invalid_request_error", "invalid_request"),
    401: ("invalid_request_error", "invalid_api_key"),
    404: ("invalid_request_error", "unknown_url"),
    429: ("requests", "rate_limit_exceeded"),
}


EPSILON = 1e-3  # tokens/requests of float slack in the buckets


RATE_LIMIT_HELP = "Visit https://platform.openai.com/account/rate-limits to learn more."


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the server saw it; `status`/`finished_at` are None while it is in flight.

    A multipart upload's `body` holds its form fields, the file as `{"filename", "bytes"}`.
    """

    path: str
    body: dict[str, Any]
    headers: dict[str, str]  # lower-cased names
    status: int | None
    started_at: float
    finished_at: float | None


Payload = dict[str, Any] | bytes


class ApiError(Exception):
    """Raised inside a handler to answer with an OpenAI-style error (`fields` override the body's)."""

    def __init__(self, status: int, message: str, **fields: Any) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.fields = fields

    def body(self) -> dict[str, Any]:
        return error_body(self.status, self.message, **self.fields)


class Counted(Protocol):
    remaining: int | None


Rule = TypeVar("Rule", bound=Counted)


@dataclass
class Fault:
    status: int
    path: str | None
    remaining: int | None  # None = unlimited
    retry_after: float | None = None
    substring: str | None = None
    hang: float = 0.0
    message: str | None = None


@dataclass
class Reply:
    substring: str
    content: str | None
    finish_reason: str
    remaining: int | None
    # Usage figures to report instead of the counted ones (a server that misreports them).
    usage: dict[str, Any] | None = None


@dataclass
class Corruption:
    kind: str
    substring: str | None
    remaining: int | None


@dataclass
class LineFault:
    substring: str
    status: int
    remaining: int | None


@dataclass(frozen=True)
class Limit:
    rpm: int | None
    tpm: int | None


@dataclass
class Bucket:
    limit: Limit
    requests: float
    tokens: float
    updated: float  # time.monotonic()


@dataclass
class Plan:
    """What was decided for a request on arrival, so concurrent requests consume faults in order."""

    delay: float = 0.0
    rejection: ApiError | None = None  # auth/route/body problems and rate limits, before faults
    fault: Fault | None = None
    reply: Reply | None = None
    corruption: Corruption | None = None
    headers: dict[str, str] = field(default_factory=dict)


def api_path_of(path: str) -> str:
    """Path without query string and `/v1` prefix, so filters may be written either way."""
    path = path.split("?", 1)[0].rstrip("/") or "/"
    if path == "/v1" or path.startswith("/v1/"):
        path = path[3:] or "/"
    return path


def error_body(status: int, message: str, **fields: Any) -> dict[str, Any]:
    kind, code = ERROR_KINDS.get(status, ("server_error" if status >= 500 else "invalid_request_error", None))
    return {"error": {"message": message, "type": kind, "param": None, "code": code, **fields}}


def strings(value: Any) -> Iterator[str]:
    """Every string (keys included) inside a decoded JSON value."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield str(key)
            yield from strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from strings(item)


def matches(substring: str | None, serialised: str, body: dict[str, Any]) -> bool:
    """Substring of the serialised body, or of one of its strings (quotes, newlines or NULs unescaped)."""
    if substring is None or substring in serialised:
        return True
    return any(substring in s for s in strings(body))


def new_id(prefix: str, length: int = 24) -> str:
    return f"{prefix}{uuid.uuid4().hex[:length]}"


def format_duration(seconds: float) -> str:
    """OpenAI's (Go) duration format at millisecond precision, rounded up: `0s`, `20ms`, `1.5s`, `6m0s`."""
    ms = math.ceil(round(seconds * 1000, 3)) if seconds > 0 else 0
    if ms == 0:
        return "0s"
    if ms < 1000:
        return f"{ms}ms"
    minutes, ms = divmod(ms, 60_000)
    hours, minutes = divmod(minutes, 60)
    text = f"{ms // 1000}.{ms % 1000:03d}".rstrip("0").rstrip(".") + "s"
    if minutes or hours:
        text = f"{minutes}m{text}"
    return f"{hours}h{text}" if hours else text


def take(rules: list[Rule], matches: Callable[[Rule], bool]) -> Rule | None:
    """Consume one use of the first matching rule, dropping it when used up."""
    for i, rule in enumerate(rules):
        if matches(rule):
            if rule.remaining is not None:
                rule.remaining -= 1
                if rule.remaining <= 0:
                    del rules[i]
            return rule
    return None


def rate_headers(bucket: Bucket) -> dict[str, str]:
    headers = {}
    for name, limit, level in (
        ("requests", bucket.limit.rpm, bucket.requests),
        ("tokens", bucket.limit.tpm, bucket.tokens),
    ):
        if limit:
            headers[f"x-ratelimit-limit-{name}"] = str(limit)
            headers[f"x-ratelimit-remaining-{name}"] = str(max(0, math.floor(level + EPSILON)))
            headers[f"x-ratelimit-reset-{name}"] = format_duration((limit - level) * 60 / limit)
    return headers
