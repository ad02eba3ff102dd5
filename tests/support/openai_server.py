"""Test-only fake of the OpenAI HTTP API: a real loopback server for the real `openai` SDK.

Speaks the subset the project uses (chat completions, embeddings, models, files and batches) over a
real socket, so the SDK's HTTP, retry and timeout code runs for real, and so Celery worker
subprocesses can call it while the test process inspects its request log and injects latency,
rate limits and faults.

Never use this outside tests. Notes on what the SDK (openai 3.x, `_base_client.py`) honours:

* Retries (default `max_retries=2`) on connection errors/timeouts and on 408, 409, 429 and >= 500,
  unless the response carries `x-should-retry: true|false`, which overrides the status.
* The delay comes from `retry-after-ms` (milliseconds, preferred) else `retry-after` (seconds,
  floats accepted, or an HTTP date); it is used only when 0 < delay <= 120 s. A delay over 120 s
  makes the SDK give up instead of retrying; no/zero delay means exponential backoff
  (0.5 s * 2**n, capped at 8 s, minus up to 25 % jitter). `fail_next(retry_after=...)` sends both.
* Without an explicit `encoding_format` the SDK asks for "base64" and decodes the string as
  native-endian float32 (little-endian on every platform we run), so that is what we send whenever
  "base64" is asked for (NaN survives the trip); "float" gets a JSON array (NaN as a bare `NaN`,
  which Python's json, and so the SDK, accepts).

Rate limits (`set_rate_limit`) are token buckets per model, refilled continuously: a bucket holds
at most `rpm` requests / `tpm` tokens and regains `limit / 60` per second, so a burst of a full
minute's allowance passes at once and then requests pass at the refill rate. A request's token cost
is estimated, not tokenised: chat = sum over messages of `len(text) // 4 + 1`, plus
`max_completion_tokens` (else `max_tokens`) when given; embeddings = sum over inputs of
`len(text) // 4 + 1` (a token-id array costs its length). The cost is charged on arrival (so
requests later failed by an injected fault or a 400 still count); refused requests are not charged.
Answers for a limited model carry `x-ratelimit-{limit,remaining,reset}-{requests,tokens}` for each
dimension that has a limit. Reset values use OpenAI's (Go) duration format, rounded up to the
millisecond: `0s`, `20ms`, `999ms`, `1s`, `8.64s`, `6m0s`, `1m26.4s`; "reset" is the time until the
bucket is full again. A 429 carries `retry-after-ms` (integer milliseconds until the request would
fit) and `retry-after` (the same, whole seconds rounded up); a request larger than `tpm` can never
fit and gets a 429 with `x-should-retry: false` instead. Only chat and embeddings requests are
limited (not models, files or batches, nor batch lines).

Batches run lazily, with no thread: a batch is created `validating`, and each retrieve (or list, or
cancel) brings it up to date: `in_progress` while `batch_processing_seconds` have not passed since
creation (lines are answered progressively, in input order, proportionally to the elapsed time),
then `completed` (or `expired`/`failed`, when injected). Lines are answered by the same code as the
live endpoints, honouring `fail_when`, `reply_when`, `corrupt_embeddings` and `fail_batch_lines`
rules (but not `fail_next`, `hang_next`, latency or rate limits, which concern HTTP requests).
Successful lines go to the output file and failed ones to the error file, each as
`{"id": "batch_req_...", "custom_id": ..., "response": {"status_code", "request_id", "body"},
"error": null}`; lines never run (expired, cancelled) go to the error file as
`{"response": null, "error": {"code": "batch_expired"|"batch_cancelled", "message": ...}}` and are
counted neither as completed nor as failed. Files are only written when non-empty; by default
their lines are shuffled (`batch_output_shuffled`), so callers must match by `custom_id`.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import copy
import dataclasses
import hashlib
import itertools
import json
import logging
import math
import random
import re
import signal
import socket
import struct
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType, TracebackType
from typing import Any, Protocol, TypeVar
from urllib.parse import parse_qs

log = logging.getLogger(__name__)

DEFAULT_DIMENSIONS = 1536
MODELS = ("gpt-4.1-mini", "gpt-4o-mini", "text-embedding-3-small", "text-embedding-3-large")
CORRUPTIONS = ("missing", "extra", "wrong_dimension", "shuffled", "bad_index", "nan")
BATCH_ENDPOINTS = {"/v1/chat/completions": "/chat/completions", "/v1/embeddings": "/embeddings"}
FILE_PURPOSES = ("assistants", "batch", "fine-tune", "vision", "user_data")
_DISCONNECTS = (BrokenPipeError, ConnectionResetError, ConnectionAbortedError, TimeoutError)
_ERROR_KINDS = {
    400: ("invalid_request_error", "invalid_request"),
    401: ("invalid_request_error", "invalid_api_key"),
    404: ("invalid_request_error", "unknown_url"),
    429: ("requests", "rate_limit_exceeded"),
}
_ROUTES = tuple(
    (method, re.compile(pattern))
    for method, pattern in (
        ("GET", "/models"),
        ("GET", "/models/(?:" + "|".join(map(re.escape, MODELS)) + ")"),
        ("POST", "/chat/completions"),
        ("POST", "/embeddings"),
        ("GET", "/files"),
        ("POST", "/files"),
        ("GET", "/files/[^/]+"),
        ("DELETE", "/files/[^/]+"),
        ("GET", "/files/[^/]+/content"),
        ("GET", "/batches"),
        ("POST", "/batches"),
        ("GET", "/batches/[^/]+"),
        ("POST", "/batches/[^/]+/cancel"),
    )
)
_LIMITED_PATHS = ("/chat/completions", "/embeddings")
_TERMINAL = ("completed", "failed", "expired", "cancelled")
_EPSILON = 1e-3  # tokens/requests of float slack in the buckets
_WORD = re.compile(r"\w+")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_RATE_LIMIT_HELP = "Visit https://platform.openai.com/account/rate-limits to learn more."
_UNRUN = {
    "batch_expired": "This request could not be executed before the completion window expired.",
    "batch_cancelled": "This request was not executed because the batch was cancelled.",
}

Summarizer = Callable[[list[dict[str, Any]]], str]
_Payload = dict[str, Any] | bytes
_Answer = tuple[int, _Payload, dict[str, str]]


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


class _ApiError(Exception):
    """Raised inside a handler to answer with an OpenAI-style error (`fields` override the body's)."""

    def __init__(self, status: int, message: str, **fields: Any) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.fields = fields

    def body(self) -> dict[str, Any]:
        return _error_body(self.status, self.message, **self.fields)


class _Counted(Protocol):
    remaining: int | None


_Rule = TypeVar("_Rule", bound=_Counted)


@dataclass
class _Fault:
    status: int
    path: str | None
    remaining: int | None  # None = unlimited
    retry_after: float | None = None
    substring: str | None = None
    hang: float = 0.0
    message: str | None = None


@dataclass
class _Reply:
    substring: str
    content: str | None
    finish_reason: str
    remaining: int | None
    # Usage figures to report instead of the counted ones (a server that misreports them).
    usage: dict[str, Any] | None = None


@dataclass
class _Corruption:
    kind: str
    substring: str | None
    remaining: int | None


@dataclass
class _LineFault:
    substring: str
    status: int
    remaining: int | None


@dataclass(frozen=True)
class _Limit:
    rpm: int | None
    tpm: int | None


@dataclass
class _Bucket:
    limit: _Limit
    requests: float
    tokens: float
    updated: float  # time.monotonic()


@dataclass
class _Plan:
    """What was decided for a request on arrival, so concurrent requests consume faults in order."""

    delay: float = 0.0
    rejection: _ApiError | None = None  # auth/route/body problems and rate limits, before faults
    fault: _Fault | None = None
    reply: _Reply | None = None
    corruption: _Corruption | None = None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class _StoredFile:
    id: str
    filename: str
    purpose: str
    data: bytes
    created_at: int

    def info(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "file",
            "bytes": len(self.data),
            "created_at": self.created_at,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
            "status_details": None,
            "expires_at": None,
        }


@dataclass
class _Batch:
    info: dict[str, Any]  # the public Batch object
    api_path: str
    lines: list[dict[str, Any]]  # validated: custom_id, method, url, body
    errors: list[dict[str, Any]]  # validation errors: the batch fails
    started: float  # time.monotonic() at creation
    duration: float
    fate: tuple[str, Any] | None  # ("expire", lines run first) or ("fail", (code, message))
    results: list[dict[str, Any]] = field(default_factory=list)  # output lines, in input order


def _api_path(path: str) -> str:
    """Path without query string and `/v1` prefix, so filters may be written either way."""
    path = path.split("?", 1)[0].rstrip("/") or "/"
    if path == "/v1" or path.startswith("/v1/"):
        path = path[3:] or "/"
    return path


def _error_body(status: int, message: str, **fields: Any) -> dict[str, Any]:
    kind, code = _ERROR_KINDS.get(
        status, ("server_error" if status >= 500 else "invalid_request_error", None)
    )
    return {"error": {"message": message, "type": kind, "param": None, "code": code, **fields}}


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def _message_text(message: dict[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts: keep only the text ones
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


def _strings(value: Any) -> Iterator[str]:
    """Every string (keys included) inside a decoded JSON value."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield str(key)
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def _matches(substring: str | None, serialised: str, body: dict[str, Any]) -> bool:
    """Substring of the serialised body, or of one of its strings (quotes, newlines or NULs unescaped)."""
    if substring is None or substring in serialised:
        return True
    return any(substring in s for s in _strings(body))


def _new_id(prefix: str, length: int = 24) -> str:
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


def estimate_tokens(text: str) -> int:
    """The rate limiter's token estimate for one text: `len(text) // 4 + 1`."""
    return len(text) // 4 + 1


def request_cost(api_path: str, body: dict[str, Any]) -> int:
    """Tokens a chat or embeddings request costs against `tpm` (see the module docstring)."""
    if _api_path(api_path) == "/chat/completions":
        messages = body.get("messages")
        cost = 0
        if isinstance(messages, list):
            cost = sum(estimate_tokens(_message_text(m)) for m in messages if isinstance(m, dict))
        cap = body.get("max_completion_tokens", body.get("max_tokens"))
        if isinstance(cap, int) and not isinstance(cap, bool):
            cost += max(0, cap)
        return cost
    raw = body.get("input")
    if isinstance(raw, str):
        return estimate_tokens(raw)
    if not isinstance(raw, list):
        return 0
    if raw and all(isinstance(t, int) for t in raw):
        return len(raw)
    cost = 0
    for item in raw:
        if isinstance(item, str):
            cost += estimate_tokens(item)
        elif isinstance(item, list):
            cost += len(item)
    return cost


def default_summary(messages: list[dict[str, Any]]) -> str:
    """First three sentences (at most 400 characters) of the last user message."""
    users = [m for m in messages if m.get("role") == "user"] or messages
    text = " ".join(_message_text(users[-1]).split()) if users else ""
    return " ".join(_SENTENCE_END.split(text)[:3])[:400]


def embed_text(text: str, dimensions: int = DEFAULT_DIMENSIONS) -> list[float]:
    """Deterministic unit vector hashing word unigrams and bigrams, so shared words mean closeness."""
    words = _words(text)
    features = words + [f"{a} {b}" for a, b in itertools.pairwise(words)]
    vector = _hash_features(features, dimensions)
    norm = math.sqrt(sum(v * v for v in vector))
    if norm == 0.0:
        # Word-less input (e.g. a " " placeholder) or, with tiny `dimensions`, features whose signs
        # cancelled out: a single feature cannot cancel, so hash the whole text instead.
        vector, norm = _hash_features([text], dimensions), 1.0
    return [v / norm for v in vector]


def _hash_features(features: list[str], dimensions: int) -> list[float]:
    vector = [0.0] * dimensions
    for feature in features:
        # blake2b, not hash(): str hashes are salted per process and Celery workers must agree.
        digest = hashlib.blake2b(feature.encode(), digest_size=8).digest()
        sign = 1.0 if digest[7] & 1 else -1.0
        vector[int.from_bytes(digest[:4], "little") % dimensions] += sign
    return vector


def _embedding_inputs(raw: Any) -> list[str]:
    if isinstance(raw, str):
        return [raw]
    if isinstance(raw, list) and raw and all(isinstance(t, int) for t in raw):
        return [" ".join(map(str, raw))]  # one token array
    if isinstance(raw, list) and raw:
        texts: list[str] = []
        for item in raw:
            if isinstance(item, str):
                texts.append(item)
            elif isinstance(item, list) and all(isinstance(t, int) for t in item):
                texts.append(" ".join(map(str, item)))
            else:
                raise _ApiError(400, "'input' items must be strings or arrays of token ids")
        return texts
    raise _ApiError(400, "'input' must be a non-empty string or array")


def _multipart(content_type: str, raw: bytes) -> tuple[dict[str, Any], tuple[str, bytes] | None]:
    """Form fields of a multipart/form-data body (a file as `{"filename", "bytes"}`) and the file."""
    match = re.search(r'boundary="?([^";]+)"?', content_type)
    if match is None:
        raise _ApiError(400, "The multipart/form-data request has no boundary.")
    fields: dict[str, Any] = {}
    upload: tuple[str, bytes] | None = None
    for part in raw.split(b"--" + match.group(1).encode())[1:]:
        if part.startswith(b"--"):
            break  # the closing delimiter
        head, sep, content = part.partition(b"\r\n\r\n")
        disposition = head.decode("utf-8", "replace")
        name = re.search(r';\s*name="([^"]*)"', disposition)
        if not sep or name is None:
            continue
        content = content.removesuffix(b"\r\n")
        filename = re.search(r';\s*filename="([^"]*)"', disposition)
        if filename is not None:
            upload = (filename.group(1) or "upload", content)
            fields[name.group(1)] = {"filename": upload[0], "bytes": len(content)}
        else:
            fields[name.group(1)] = content.decode("utf-8", "replace")
    return fields, upload


class OpenAIServer:
    """A loopback fake of the OpenAI API with a request log, latency, rate limits and fault injection.

    `batch_processing_seconds` (default 0.0: a batch is done at its first retrieve) is how long a
    batch created from now on stays `in_progress`; `batch_output_shuffled` (default True) shuffles
    the lines of batch output and error files.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        api_key: str | None = None,
        summarize: Summarizer | None = None,
    ) -> None:
        self.host = host
        self.api_key = api_key
        self.summarize = summarize
        self.batch_processing_seconds = 0.0
        self.batch_output_shuffled = True
        self._requested_port = port
        self._lock = threading.Lock()  # log, counters, faults, limits; never held while taking _store_lock
        self._store_lock = threading.Lock()  # files and batches
        self._stopping = threading.Event()
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._log: list[RecordedRequest] = []
        self._fail_next: list[_Fault] = []
        self._fail_when: list[_Fault] = []
        self._hangs: list[_Fault] = []
        self._replies: list[_Reply] = []
        self._corruptions: list[_Corruption] = []
        self._line_faults: list[_LineFault] = []
        self._batch_fates: list[tuple[str, Any]] = []
        self._limits: dict[str | None, _Limit] = {}
        self._buckets: dict[str, _Bucket] = {}
        self._rate_limited = 0
        self._latency = 0.0
        self._chat_latency: float | None = None
        self._embedding_latency: float | None = None
        self._in_flight = 0
        self._peak = 0
        self._files: dict[str, _StoredFile] = {}
        self._batches: dict[str, _Batch] = {}

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> OpenAIServer:
        """Bind and serve in a daemon thread; returns self."""
        if self._httpd is not None:
            raise RuntimeError("server already started")
        self._stopping.clear()
        self._httpd = _HTTPServer((self.host, self._requested_port), _Handler, self)
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, args=(0.05,), name="openai-fake", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, wake hanging handlers and drop open keep-alive connections."""
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        self._stopping.set()
        httpd.shutdown()
        httpd.server_close()
        httpd.close_connections()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> OpenAIServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        """The bound port (only once started)."""
        if self._httpd is None:
            raise RuntimeError("server not started")
        return int(self._httpd.server_address[1])

    @property
    def base_url(self) -> str:
        """What to pass as the SDK's `base_url`, e.g. `http://127.0.0.1:PORT/v1`."""
        return f"http://{self.host}:{self.port}/v1"

    # -- log and counters --------------------------------------------------------------------

    @property
    def requests(self) -> list[RecordedRequest]:
        """Snapshot of every request received, in arrival order."""
        with self._lock:
            return list(self._log)

    def chat_requests(self) -> list[RecordedRequest]:
        """Requests to /v1/chat/completions, whatever they were answered."""
        return [r for r in self.requests if _api_path(r.path) == "/chat/completions"]

    def embedding_requests(self) -> list[RecordedRequest]:
        """Requests to /v1/embeddings, whatever they were answered."""
        return [r for r in self.requests if _api_path(r.path) == "/embeddings"]

    @property
    def in_flight(self) -> int:
        """Requests being handled right now."""
        with self._lock:
            return self._in_flight

    @property
    def peak_in_flight(self) -> int:
        """Most requests handled at once (latency and hangs included) since start/reset."""
        with self._lock:
            return self._peak

    def reset_peak(self) -> None:
        """Restart peak tracking from the current in-flight count."""
        with self._lock:
            self._peak = self._in_flight

    @property
    def rate_limited(self) -> int:
        """429s sent because of `set_rate_limit` limits (not injected ones) since start/reset."""
        with self._lock:
            return self._rate_limited

    @property
    def files(self) -> dict[str, bytes]:
        """Contents of every stored file (uploads and batch output/error files) by id."""
        with self._store_lock:
            return {file_id: stored.data for file_id, stored in self._files.items()}

    @property
    def batches(self) -> list[dict[str, Any]]:
        """Copies of every batch object as last brought up to date (by a retrieve), in creation order."""
        with self._store_lock:
            return [copy.deepcopy(batch.info) for batch in self._batches.values()]

    @property
    def connections_opened(self) -> int:
        """TCP connections clients opened to this server since start/reset (keep-alive reuse shows
        as fewer connections than requests)."""
        if self._httpd is None:
            return 0
        with self._httpd.connections_lock:
            return self._httpd.connections_opened

    def reset(self) -> None:
        """Clear the log, faults, hangs, replies, corruptions, rate limits, latencies, files, batches
        and the count of connections opened."""
        if self._httpd is not None:
            with self._httpd.connections_lock:
                self._httpd.connections_opened = 0
        with self._store_lock, self._lock:
            self._log.clear()
            self._fail_next.clear()
            self._fail_when.clear()
            self._hangs.clear()
            self._replies.clear()
            self._corruptions.clear()
            self._line_faults.clear()
            self._batch_fates.clear()
            self._limits.clear()
            self._buckets.clear()
            self._rate_limited = 0
            self._peak = self._in_flight
            self._latency = 0.0
            self._chat_latency = None
            self._embedding_latency = None
            self._files.clear()
            self._batches.clear()
            self.batch_processing_seconds = 0.0
            self.batch_output_shuffled = True

    # -- latency and faults ------------------------------------------------------------------

    @property
    def latency(self) -> float:
        """Seconds slept before answering every request (unless a per-endpoint latency is set)."""
        with self._lock:
            return self._latency

    @latency.setter
    def latency(self, seconds: float) -> None:
        with self._lock:
            self._latency = max(0.0, float(seconds))

    @property
    def chat_latency(self) -> float | None:
        """Seconds slept before answering chat completions; None: use `latency`."""
        with self._lock:
            return self._chat_latency

    @chat_latency.setter
    def chat_latency(self, seconds: float | None) -> None:
        with self._lock:
            self._chat_latency = None if seconds is None else max(0.0, float(seconds))

    @property
    def embedding_latency(self) -> float | None:
        """Seconds slept before answering embeddings; None: use `latency`."""
        with self._lock:
            return self._embedding_latency

    @embedding_latency.setter
    def embedding_latency(self, seconds: float | None) -> None:
        with self._lock:
            self._embedding_latency = None if seconds is None else max(0.0, float(seconds))

    def fail_next(
        self, count: int, status: int = 500, retry_after: float | None = None, path: str | None = None
    ) -> None:
        """Answer the next `count` requests (to `path`, if given) with `status` and an error body."""
        with self._lock:
            self._fail_next.append(_Fault(status, path and _api_path(path), count, retry_after))

    def fail_when(
        self,
        substring: str,
        status: int = 500,
        times: int | None = None,
        path: str | None = None,
        message: str | None = None,
    ) -> None:
        """Fail requests (and batch lines) whose JSON body contains `substring` (`times=None`: always).

        The substring is looked for in the serialised body and in each of its strings, so an
        embeddings input text matches even with quotes, newlines or NULs in it.
        """
        with self._lock:
            self._fail_when.append(
                _Fault(status, path and _api_path(path), times, substring=substring, message=message)
            )

    def hang_next(self, count: int, seconds: float, path: str | None = None) -> None:
        """Stall the next `count` requests for `seconds` before answering them normally."""
        with self._lock:
            self._hangs.append(_Fault(0, path and _api_path(path), count, hang=seconds))

    def reply_when(
        self,
        substring: str,
        content: str | None,
        times: int | None = None,
        finish_reason: str = "stop",
        usage: dict[str, Any] | None = None,
    ) -> None:
        """Answer chat completions (and batch lines) matching `substring` with `content` verbatim
        (and `usage` figures, if given, instead of the counted ones)."""
        with self._lock:
            self._replies.append(_Reply(substring, content, finish_reason, times, usage))

    def corrupt_embeddings(self, kind: str, count: int | None = 1, substring: str | None = None) -> None:
        """Corrupt the next `count` (None: all) embeddings answers (matching `substring`, if given).

        Kinds: "missing" (last item dropped), "extra" (one more item, index n), "wrong_dimension"
        (every vector dimensions + 3 long), "shuffled" (reverse order, right indexes), "bad_index"
        (every index 0), "nan" (the first vector's first float is NaN).
        """
        if kind not in CORRUPTIONS:
            raise ValueError(f"unknown corruption {kind!r}; expected one of {CORRUPTIONS}")
        with self._lock:
            self._corruptions.append(_Corruption(kind, substring, count))

    def set_rate_limit(
        self, model: str | None = None, rpm: int | None = None, tpm: int | None = None
    ) -> None:
        """Limit `model` (None: every model without a limit of its own, each counted separately).

        Both limits None removes the limit. Setting a limit starts the model's buckets full.
        """
        for name, value in (("rpm", rpm), ("tpm", tpm)):
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a positive integer or None, not {value!r}")
        with self._lock:
            if rpm is None and tpm is None:
                self._limits.pop(model, None)
            else:
                self._limits[model] = _Limit(rpm, tpm)

    # -- batches -----------------------------------------------------------------------------

    def fail_batch_lines(self, substring: str, status: int = 500, times: int | None = None) -> None:
        """Batch lines whose body contains `substring` fail with `status` (in the error file)."""
        with self._lock:
            self._line_faults.append(_LineFault(substring, status, times))

    def expire_next_batch(self, completed: int | None = None) -> None:
        """The next created batch ends `expired` after running its first `completed` lines (default half)."""
        with self._lock:
            self._batch_fates.append(("expire", completed))

    def fail_next_batch(
        self,
        code: str = "token_limit_exceeded",
        message: str = "Enqueued token limit reached (injected failure).",
    ) -> None:
        """The next created batch ends `failed`, running no line, with this error in `errors`."""
        with self._lock:
            self._batch_fates.append(("fail", (code, message)))

    # -- request handling (called from handler threads) --------------------------------------

    def _begin(
        self,
        method: str,
        path: str,
        body: dict[str, Any],
        headers: dict[str, str],
        rejection: _ApiError | None,
    ) -> tuple[RecordedRequest, _Plan]:
        api_path = _api_path(path)
        if rejection is None:
            rejection = self._reject(method, api_path, headers)
        serialised = json.dumps(body, ensure_ascii=False)
        with self._lock:
            self._in_flight += 1
            self._peak = max(self._peak, self._in_flight)
            record = RecordedRequest(path, body, headers, None, time.time(), None)
            self._log.append(record)
            plan = _Plan(delay=self._delay(api_path), rejection=rejection)
            hang = _take(self._hangs, lambda f: f.path in (None, api_path))
            if hang is not None:
                plan.delay += hang.hang
            if rejection is None and method == "POST" and api_path in _LIMITED_PATHS:
                self._charge(api_path, body, plan)
            # Requests the real API would refuse anyway (bad key, unknown URL, over the rate limit)
            # do not use up injected faults.
            if plan.rejection is None:
                plan.fault = _take(self._fail_next, lambda f: f.path in (None, api_path))
                if plan.fault is None:
                    self._apply_rules(plan, api_path, body, serialised)
            return record, plan

    def _delay(self, api_path: str) -> float:
        # Caller holds self._lock.
        if api_path == "/chat/completions" and self._chat_latency is not None:
            return self._chat_latency
        if api_path == "/embeddings" and self._embedding_latency is not None:
            return self._embedding_latency
        return self._latency

    def _apply_rules(self, plan: _Plan, api_path: str, body: dict[str, Any], serialised: str) -> None:
        """Consume the first matching fail_when, else reply_when/corrupt_embeddings rule (lock held)."""
        plan.fault = _take(
            self._fail_when,
            lambda f: f.path in (None, api_path) and _matches(f.substring, serialised, body),
        )
        if plan.fault is not None:
            return
        if api_path == "/chat/completions":
            plan.reply = _take(self._replies, lambda r: _matches(r.substring, serialised, body))
        elif api_path == "/embeddings":
            plan.corruption = _take(self._corruptions, lambda c: _matches(c.substring, serialised, body))

    def _charge(self, api_path: str, body: dict[str, Any], plan: _Plan) -> None:
        """Take the request from its model's buckets, or refuse it with a 429 (lock held)."""
        model = body.get("model")
        limit = (self._limits.get(model) or self._limits.get(None)) if isinstance(model, str) else None
        if limit is None or not isinstance(model, str):
            return
        now = time.monotonic()
        bucket = self._buckets.get(model)
        if bucket is None or bucket.limit is not limit:  # new or changed limit: start full
            bucket = _Bucket(limit, float(limit.rpm or 0), float(limit.tpm or 0), now)
            self._buckets[model] = bucket
        elapsed, bucket.updated = now - bucket.updated, now
        if limit.rpm:
            bucket.requests = min(float(limit.rpm), bucket.requests + elapsed * limit.rpm / 60)
        if limit.tpm:
            bucket.tokens = min(float(limit.tpm), bucket.tokens + elapsed * limit.tpm / 60)
        cost = request_cost(api_path, body)
        short_requests = bool(limit.rpm) and bucket.requests + _EPSILON < 1
        short_tokens = bool(limit.tpm) and bucket.tokens + _EPSILON < cost
        if not (short_requests or short_tokens):
            bucket.requests -= 1 if limit.rpm else 0
            bucket.tokens -= cost if limit.tpm else 0
            plan.headers = _rate_headers(bucket)
            return
        self._rate_limited += 1
        plan.headers = _rate_headers(bucket)
        where = f"{model} in organization org-fake"
        if limit.tpm and cost > limit.tpm:  # can never fit: retrying is pointless
            plan.headers["x-should-retry"] = "false"
            plan.rejection = _ApiError(
                429,
                f"Request too large for {where} on tokens per min (TPM): Limit {limit.tpm}, "
                f"Requested {cost}. The input or output tokens must be reduced in order to run "
                f"successfully. {_RATE_LIMIT_HELP}",
                type="tokens",
            )
            return
        waits = []
        if limit.rpm and short_requests:
            waits.append((1 - bucket.requests) * 60 / limit.rpm)
        if limit.tpm and short_tokens:
            waits.append((cost - bucket.tokens) * 60 / limit.tpm)
        wait_ms = max(1, math.ceil(round(max(waits) * 1000, 3)))
        plan.headers["retry-after-ms"] = str(wait_ms)
        plan.headers["retry-after"] = str(math.ceil(wait_ms / 1000))
        if short_requests:
            used, kind = f"Limit {limit.rpm}, Used {limit.rpm}, Requested 1", "requests per min (RPM)"
        else:
            tpm = limit.tpm or 0
            used = f"Limit {tpm}, Used {tpm - math.floor(bucket.tokens + _EPSILON)}, Requested {cost}"
            kind = "tokens per min (TPM)"
        plan.rejection = _ApiError(
            429,
            f"Rate limit reached for {where} on {kind}: {used}. Please try again in "
            f"{format_duration(wait_ms / 1000)}. {_RATE_LIMIT_HELP}",
            type="requests" if short_requests else "tokens",
        )

    def _reject(self, method: str, api_path: str, headers: dict[str, str]) -> _ApiError | None:
        auth = headers.get("authorization", "")
        if not auth.startswith("Bearer "):
            return _ApiError(401, "You didn't provide an API key (Authorization: Bearer <key>).")
        if self.api_key is not None and auth != f"Bearer {self.api_key}":
            return _ApiError(401, "Incorrect API key provided.")
        if not any(m == method and pattern.fullmatch(api_path) for m, pattern in _ROUTES):
            return _ApiError(404, f"Invalid URL ({method} /v1{api_path})")
        return None

    def _finish(self, record: RecordedRequest, status: int) -> None:
        with self._lock:
            self._in_flight -= 1
            # Match by identity: a reset() may have cleared the log while this request was in flight.
            for i in range(len(self._log) - 1, -1, -1):
                if self._log[i] is record:
                    self._log[i] = dataclasses.replace(record, status=status, finished_at=time.time())
                    break

    def _execute(
        self,
        method: str,
        path: str,
        body: dict[str, Any],
        plan: _Plan,
        upload: tuple[str, bytes] | None = None,
    ) -> tuple[int, _Payload]:
        """Status and payload for a planned request (or batch line)."""
        if plan.rejection is not None:
            return plan.rejection.status, plan.rejection.body()
        fault = plan.fault
        if fault is not None:
            return fault.status, _error_body(
                fault.status, fault.message or f"Injected fault (HTTP {fault.status})."
            )
        try:
            return 200, self._respond(method, path, body, plan, upload)
        except _ApiError as exc:
            return exc.status, exc.body()
        except Exception as exc:  # a bug in a summarize hook should surface as a 500, not a hung test
            log.exception("fake OpenAI server: handler failed")
            return 500, _error_body(500, f"fake server error: {exc!r}")

    def _respond(
        self,
        method: str,
        path: str,
        body: dict[str, Any],
        plan: _Plan | None = None,
        upload: tuple[str, bytes] | None = None,
    ) -> _Payload:
        api_path = _api_path(path)
        plan = plan or _Plan()
        if method == "GET" and api_path == "/models":
            return {"object": "list", "data": [_model(m) for m in MODELS]}
        if method == "GET" and api_path.startswith("/models/") and api_path[8:] in MODELS:
            return _model(api_path[8:])
        if method == "POST" and api_path == "/chat/completions":
            return self._chat(body, plan.reply)
        if method == "POST" and api_path == "/embeddings":
            return _embeddings(body, plan.corruption)
        if api_path == "/files" or api_path.startswith("/files/"):
            return self._files_api(method, path, body, upload)
        if api_path == "/batches" or api_path.startswith("/batches/"):
            return self._batches_api(method, api_path, body)
        raise _ApiError(404, f"Invalid URL ({method} {path})")

    def _chat(self, body: dict[str, Any], reply: _Reply | None = None) -> dict[str, Any]:
        messages = body.get("messages")
        if not isinstance(body.get("model"), str) or not isinstance(messages, list) or not messages:
            raise _ApiError(400, "'model' and a non-empty 'messages' array are required")
        if not all(isinstance(m, dict) for m in messages):
            raise _ApiError(400, "every item of 'messages' must be an object")
        if reply is not None:
            content, finish_reason = reply.content, reply.finish_reason
        else:
            content, finish_reason = (self.summarize or default_summary)(messages), "stop"
        prompt_tokens = sum(len(_words(_message_text(m))) for m in messages)
        completion_tokens = len(_words(content or ""))
        usage: dict[str, Any] = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }
        if reply is not None and reply.usage is not None:
            usage.update(reply.usage)
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body["model"],
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content, "refusal": None},
                    "logprobs": None,
                    "finish_reason": finish_reason,
                }
            ],
            "usage": usage,
        }

    # -- files and batches (called with no lock held) ----------------------------------------

    def _files_api(
        self, method: str, path: str, body: dict[str, Any], upload: tuple[str, bytes] | None
    ) -> _Payload:
        parts = _api_path(path).split("/")[2:]
        with self._store_lock:
            if not parts and method == "POST":
                purpose = body.get("purpose")
                if upload is None:
                    raise _ApiError(400, "Missing required parameter: 'file'.", param="file")
                if purpose not in FILE_PURPOSES:
                    raise _ApiError(400, f"Invalid value for 'purpose': {purpose!r}.", param="purpose")
                return self._store_file(upload[0], str(purpose), upload[1]).info()
            if not parts:
                purpose = parse_qs(path.partition("?")[2]).get("purpose", [None])[0]
                files = [f.info() for f in reversed(self._files.values()) if purpose in (None, f.purpose)]
                return _page(files)
            stored = self._files.get(parts[0])
            if stored is None:
                raise _ApiError(404, f"No such File object: {parts[0]}", param="id", code=None)
            if method == "DELETE":
                del self._files[stored.id]
                return {"id": stored.id, "object": "file", "deleted": True}
            return stored.data if parts[1:] == ["content"] else stored.info()

    def _store_file(self, filename: str, purpose: str, data: bytes) -> _StoredFile:
        # Caller holds self._store_lock.
        stored = _StoredFile(_new_id("file-"), filename, purpose, data, int(time.time()))
        self._files[stored.id] = stored
        return stored

    def _batches_api(self, method: str, api_path: str, body: dict[str, Any]) -> dict[str, Any]:
        parts = api_path.split("/")[2:]
        with self._store_lock:
            if not parts and method == "POST":
                return copy.deepcopy(self._create_batch(body).info)
            if not parts:
                for batch in self._batches.values():
                    self._advance(batch)
                return _page([copy.deepcopy(b.info) for b in reversed(self._batches.values())])
            found = self._batches.get(parts[0])
            if found is None:
                raise _ApiError(404, f"No such Batch object: {parts[0]}", param="id", code=None)
            self._advance(found)
            if parts[1:] == ["cancel"]:
                status = found.info["status"]
                if status in _TERMINAL:
                    raise _ApiError(409, f"Cannot cancel a batch with status '{status}'.", code=None)
                found.info.update(status="cancelling", cancelling_at=int(time.time()))
            return copy.deepcopy(found.info)

    def _create_batch(self, body: dict[str, Any]) -> _Batch:
        # Caller holds self._store_lock.
        endpoint = body.get("endpoint")
        if not isinstance(endpoint, str) or endpoint not in BATCH_ENDPOINTS:
            supported = ", ".join(BATCH_ENDPOINTS)
            raise _ApiError(
                400, f"Invalid 'endpoint': {endpoint!r} (supported: {supported}).", param="endpoint"
            )
        if body.get("completion_window") != "24h":
            raise _ApiError(
                400, "Invalid 'completion_window': only '24h' is supported.", param="completion_window"
            )
        file_id = body.get("input_file_id")
        stored = self._files.get(file_id) if isinstance(file_id, str) else None
        if stored is None:
            raise _ApiError(400, f"Invalid 'input_file_id': no file {file_id!r}.", param="input_file_id")
        if stored.purpose != "batch":
            raise _ApiError(
                400, f"File {file_id} has purpose {stored.purpose!r}, not 'batch'.", param="input_file_id"
            )
        lines, errors = _parse_batch_file(stored.data, endpoint)
        with self._lock:
            fate = self._batch_fates.pop(0) if self._batch_fates else None
        models = [line["body"].get("model") for line in lines]
        now = int(time.time())
        info: dict[str, Any] = {
            "id": _new_id("batch_", 32),
            "object": "batch",
            "endpoint": endpoint,
            "model": models[0] if models and isinstance(models[0], str) else None,
            "errors": None,
            "input_file_id": file_id,
            "completion_window": "24h",
            "status": "validating",
            "output_file_id": None,
            "error_file_id": None,
            "created_at": now,
            "in_progress_at": None,
            "expires_at": now + 24 * 3600,
            "finalizing_at": None,
            "completed_at": None,
            "failed_at": None,
            "expired_at": None,
            "cancelling_at": None,
            "cancelled_at": None,
            "request_counts": {"total": 0 if errors else len(lines), "completed": 0, "failed": 0},
            "metadata": body.get("metadata"),
            "usage": None,
        }
        batch = _Batch(
            info,
            BATCH_ENDPOINTS[endpoint],
            lines,
            errors,
            time.monotonic(),
            max(0.0, float(self.batch_processing_seconds)),
            fate,
        )
        self._batches[info["id"]] = batch
        return batch

    def _advance(self, batch: _Batch) -> None:
        """Bring a batch up to date: run the lines due by now, finish it when its time is up."""
        # Caller holds self._store_lock.
        info = batch.info
        if info["status"] in _TERMINAL:
            return
        now = int(time.time())
        errors = batch.errors
        if not errors and batch.fate is not None and batch.fate[0] == "fail":
            errors = [_batch_error(*batch.fate[1])]
        if errors:
            info.update(status="failed", failed_at=now, errors={"object": "list", "data": errors})
            info["request_counts"] = {"total": 0, "completed": 0, "failed": 0}
            return
        if info["status"] == "validating":
            info.update(status="in_progress", in_progress_at=now)
        if info["status"] == "cancelling":
            self._finalize(batch, "cancelled", "batch_cancelled")
            return
        total = len(batch.lines)
        elapsed = time.monotonic() - batch.started
        done = elapsed >= batch.duration
        due = total if done else int(total * elapsed / batch.duration)
        expiring = batch.fate is not None and batch.fate[0] == "expire"
        if expiring and batch.fate is not None:
            runs = batch.fate[1]
            due = min(due, total // 2 if runs is None else max(0, int(runs)))
        while len(batch.results) < due:
            batch.results.append(self._run_line(batch, batch.lines[len(batch.results)]))
        _count(batch)
        if done:
            self._finalize(batch, "expired" if expiring else "completed", "batch_expired")

    def _run_line(self, batch: _Batch, line: dict[str, Any]) -> dict[str, Any]:
        """One output-file line: the line's request answered as the live endpoint would."""
        body: dict[str, Any] = line["body"]
        serialised = json.dumps(body, ensure_ascii=False)
        plan = _Plan()
        with self._lock:
            line_fault = _take(self._line_faults, lambda f: _matches(f.substring, serialised, body))
            if line_fault is None:
                self._apply_rules(plan, batch.api_path, body, serialised)
        if line_fault is not None:
            status = line_fault.status
            payload: _Payload = _error_body(status, f"Injected batch line failure (HTTP {status}).")
        else:
            status, payload = self._execute("POST", batch.api_path, body, plan)
        return {
            "id": _new_id("batch_req_", 32),
            "custom_id": line["custom_id"],
            "response": {"status_code": status, "request_id": _new_id("req_", 32), "body": payload},
            "error": None,
        }

    def _finalize(self, batch: _Batch, status: str, unrun_code: str) -> None:
        """Write the output and error files (when non-empty) and end the batch with `status`."""
        # Caller holds self._store_lock.
        info = batch.info
        ok = [r for r in batch.results if r["response"]["status_code"] == 200]
        failed = [r for r in batch.results if r["response"]["status_code"] != 200]
        failed += [
            {
                "id": _new_id("batch_req_", 32),
                "custom_id": line["custom_id"],
                "response": None,
                "error": {"code": unrun_code, "message": _UNRUN[unrun_code]},
            }
            for line in batch.lines[len(batch.results) :]
        ]
        now = int(time.time())
        info["finalizing_at"] = now
        for key, results, suffix in (("output_file_id", ok, "output"), ("error_file_id", failed, "error")):
            if results:
                if self.batch_output_shuffled:
                    results = _shuffled(results, f"{info['id']}-{suffix}")
                data = "".join(json.dumps(r) + "\n" for r in results).encode()
                info[key] = self._store_file(f"{info['id']}_{suffix}.jsonl", "batch_output", data).id
        _count(batch)
        info["status"] = status
        info[f"{status}_at"] = now


def _take(rules: list[_Rule], matches: Callable[[_Rule], bool]) -> _Rule | None:
    """Consume one use of the first matching rule, dropping it when used up."""
    for i, rule in enumerate(rules):
        if matches(rule):
            if rule.remaining is not None:
                rule.remaining -= 1
                if rule.remaining <= 0:
                    del rules[i]
            return rule
    return None


def _rate_headers(bucket: _Bucket) -> dict[str, str]:
    headers = {}
    for name, limit, level in (
        ("requests", bucket.limit.rpm, bucket.requests),
        ("tokens", bucket.limit.tpm, bucket.tokens),
    ):
        if limit:
            headers[f"x-ratelimit-limit-{name}"] = str(limit)
            headers[f"x-ratelimit-remaining-{name}"] = str(max(0, math.floor(level + _EPSILON)))
            headers[f"x-ratelimit-reset-{name}"] = format_duration((limit - level) * 60 / limit)
    return headers


def _model(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": 1_700_000_000, "owned_by": "openai-fake"}


def _page(data: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": False,
    }


def _batch_error(
    code: str, message: str, line: int | None = None, param: str | None = None
) -> dict[str, Any]:
    return {"code": code, "message": message, "param": param, "line": line}


def _parse_batch_file(data: bytes, endpoint: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The valid request lines of a batch input file, and the errors that make the batch fail."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return [], [_batch_error("invalid_file_format", "The input file is not UTF-8 text.")]
    lines: list[dict[str, Any]] = []
    errors: list[dict[str, Any]] = []
    seen: set[str] = set()
    for number, raw in enumerate(text.splitlines(), 1):
        if not raw.strip():
            continue
        try:
            line = json.loads(raw)
        except ValueError:
            line = None
        if not isinstance(line, dict):
            errors.append(_batch_error("invalid_json_line", f"Line {number} is not a JSON object.", number))
            continue
        missing = [key for key in ("custom_id", "method", "url", "body") if key not in line]
        problem = None
        if missing:
            problem = (
                "missing_required_parameter",
                f"Missing required parameter: '{missing[0]}'.",
                missing[0],
            )
        elif not isinstance(line["custom_id"], str) or not line["custom_id"]:
            problem = ("invalid_custom_id", "'custom_id' must be a non-empty string.", "custom_id")
        elif line["custom_id"] in seen:
            problem = ("duplicate_custom_id", f"Duplicate custom_id {line['custom_id']!r}.", "custom_id")
        elif line["method"] != "POST":
            problem = ("invalid_method", f"Invalid method {line['method']!r}: only 'POST'.", "method")
        elif line["url"] != endpoint:
            problem = (
                "mismatched_endpoint",
                f"The url {line['url']!r} is not the batch's {endpoint}.",
                "url",
            )
        elif not isinstance(line["body"], dict):
            problem = ("invalid_body", "'body' must be a JSON object.", "body")
        if problem is not None:
            errors.append(_batch_error(problem[0], problem[1], number, problem[2]))
            continue
        seen.add(line["custom_id"])
        lines.append(line)
    models = sorted({str(line["body"].get("model")) for line in lines})
    if len(models) > 1:
        errors.append(
            _batch_error("mismatched_model", f"A batch must use one model, not {models}.", None, "body.model")
        )
    if not lines and not errors:
        errors.append(_batch_error("empty_file", "The input file has no requests."))
    return lines, errors


def _count(batch: _Batch) -> None:
    """Update a batch's request counts and token usage from the lines run so far."""
    usage = {"input": 0, "output": 0}
    completed = 0
    for result in batch.results:
        response = result["response"]
        if response["status_code"] == 200:
            completed += 1
            tokens = response["body"].get("usage") or {}
            usage["input"] += int(tokens.get("prompt_tokens", 0))
            usage["output"] += int(tokens.get("completion_tokens", 0))
    batch.info["request_counts"] = {
        "total": len(batch.lines),
        "completed": completed,
        "failed": len(batch.results) - completed,
    }
    batch.info["usage"] = {
        "input_tokens": usage["input"],
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": usage["output"],
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": usage["input"] + usage["output"],
    }


def _shuffled(items: list[dict[str, Any]], seed: str) -> list[dict[str, Any]]:
    """A reproducible shuffle that never keeps the order of two or more items."""
    result = list(items)
    random.Random(seed).shuffle(result)
    if len(result) > 1 and all(a is b for a, b in zip(result, items, strict=True)):
        result = result[1:] + result[:1]
    return result


def _embeddings(body: dict[str, Any], corruption: _Corruption | None = None) -> dict[str, Any]:
    if not isinstance(body.get("model"), str):
        raise _ApiError(400, "you must provide a 'model' parameter")
    texts = _embedding_inputs(body.get("input"))
    if any(t == "" for t in texts):
        raise _ApiError(400, "'input' cannot contain an empty string")
    dimensions = body.get("dimensions", DEFAULT_DIMENSIONS)
    if not isinstance(dimensions, int) or isinstance(dimensions, bool) or dimensions < 1:
        raise _ApiError(400, "'dimensions' must be a positive integer")
    encoding = body.get("encoding_format", "float")
    if encoding not in ("float", "base64"):
        raise _ApiError(400, "'encoding_format' must be 'float' or 'base64'")
    kind = corruption.kind if corruption is not None else None
    size = dimensions + 3 if kind == "wrong_dimension" else dimensions
    items = [(i, embed_text(text, size)) for i, text in enumerate(texts)]
    if kind == "missing":
        del items[-1]
    elif kind == "extra":
        items.append((len(items), embed_text(f"extra item {len(items)}", dimensions)))
    elif kind == "shuffled":
        items.reverse()
    elif kind == "bad_index":
        items = [(0, vector) for _, vector in items]
    elif kind == "nan":
        items[0][1][0] = math.nan
    data = []
    for index, vector in items:
        packed: Any = vector
        if encoding == "base64":
            packed = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")
        data.append({"object": "embedding", "index": index, "embedding": packed})
    tokens = sum(len(_words(t)) for t in texts)
    return {
        "object": "list",
        "data": data,
        "model": body["model"],
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # Celery workers and batch tests open many connections at once

    def __init__(self, address: tuple[str, int], handler: type[_Handler], owner: OpenAIServer) -> None:
        self.owner = owner
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        self.connections_opened = 0  # since start or the owner's reset
        super().__init__(address, handler)

    def close_connections(self) -> None:
        # Keep-alive handler threads block reading the next request; shutting the sockets ends them.
        with self.connections_lock:
            for conn in self.connections:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Client disconnects are routine (timeouts, killed workers): stay quiet about them.
        if not isinstance(sys.exc_info()[1], _DISCONNECTS):
            log.exception("fake OpenAI server: error handling request from %s", client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like the real API; every answer has Content-Length
    # Headers and body go out in two writes: with Nagle on, a kept-alive client's delayed ACK
    # would stall every answer by ~40 ms.
    disable_nagle_algorithm = True
    server: _HTTPServer

    def setup(self) -> None:
        super().setup()
        with self.server.connections_lock:
            self.server.connections.add(self.connection)
            self.server.connections_opened += 1

    def finish(self) -> None:
        with self.server.connections_lock:
            self.server.connections.discard(self.connection)
        with contextlib.suppress(*_DISCONNECTS):
            super().finish()

    def log_message(self, format: str, *args: Any) -> None:
        pass  # keep test output clean

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_DELETE(self) -> None:
        self._handle("DELETE")

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() != "chunked":
            length = self.headers.get("Content-Length", "0")
            return self.rfile.read(int(length)) if length.isdigit() else b""
        chunks = []
        while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
            chunks.append(self.rfile.read(size))
            self.rfile.readline()
        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
            pass  # trailers
        return b"".join(chunks)

    def _handle(self, method: str) -> None:
        owner = self.server.owner
        raw = self._read_body()
        headers = {k.lower(): v for k, v in self.headers.items()}
        rejection = None
        upload = None
        parsed: Any
        if headers.get("content-type", "").startswith("multipart/form-data"):
            try:
                parsed, upload = _multipart(headers["content-type"], raw)
            except _ApiError as exc:
                parsed, rejection = {}, exc
        else:
            try:
                parsed = json.loads(raw) if raw else {}
            except ValueError:
                parsed = None
            if not isinstance(parsed, dict):
                parsed, rejection = {}, _ApiError(400, "The request body is not a valid JSON object.")
        record, plan = owner._begin(method, self.path, parsed, headers, rejection)
        finished = False
        try:
            if plan.delay > 0:
                owner._stopping.wait(plan.delay)  # stop() cuts hangs short
            status, payload = owner._execute(method, self.path, parsed, plan, upload)
            extra = dict(plan.headers)
            if plan.rejection is None and plan.fault is not None and plan.fault.retry_after is not None:
                extra["retry-after"] = f"{plan.fault.retry_after:g}"
                extra["retry-after-ms"] = f"{plan.fault.retry_after * 1000:g}"
            # Log before writing: once a client holds the answer, the log must already show it.
            owner._finish(record, status)
            finished = True
            self._send(status, payload, extra)
            if owner._stopping.is_set():
                self.close_connection = True  # do not linger on a kept-alive connection after stop()
        except _DISCONNECTS:
            self.close_connection = True  # the client gave up (e.g. timed out); nothing to answer
        finally:
            if not finished:
                owner._finish(record, 500)

    def _send(self, status: int, payload: _Payload, extra: dict[str, str]) -> None:
        if isinstance(payload, bytes):
            data, content_type = payload, "application/octet-stream"
        else:
            data, content_type = json.dumps(payload).encode(), "application/json"
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("x-request-id", f"req_{uuid.uuid4().hex[:16]}")
        for name, value in extra.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)
        self.wfile.flush()


def main(argv: list[str] | None = None) -> int:
    """Serve in the foreground until interrupted (manual use)."""
    parser = argparse.ArgumentParser(description="Fake OpenAI API for tests.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--api-key", default=None, help="require this key (default: accept any)")
    parser.add_argument("--latency", type=float, default=0.0)
    parser.add_argument("--chat-latency", type=float, default=None, help="default: --latency")
    parser.add_argument("--embedding-latency", type=float, default=None, help="default: --latency")
    parser.add_argument("--rpm", type=int, default=None, help="requests per minute, per model")
    parser.add_argument("--tpm", type=int, default=None, help="estimated tokens per minute, per model")
    parser.add_argument("--batch-seconds", type=float, default=0.0, help="batch processing time")
    args = parser.parse_args(argv)

    def on_term(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    server = OpenAIServer(host=args.host, port=args.port, api_key=args.api_key).start()
    server.latency = args.latency
    server.chat_latency = args.chat_latency
    server.embedding_latency = args.embedding_latency
    server.batch_processing_seconds = args.batch_seconds
    if args.rpm is not None or args.tpm is not None:
        server.set_rate_limit(None, rpm=args.rpm, tpm=args.tpm)
    print(f"READY {server.base_url}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
