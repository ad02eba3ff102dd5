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
their lines are shuffled (`batch_output_shuffled`), so callers must match by `custom_id`."""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import json
import logging
import math
import re
import signal
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType, TracebackType
from typing import Any

from tests.support.openai_batch_api import Batch, BatchAPI, StoredFile
from tests.support.openai_content import (
    MODELS,
    default_summary,
    embeddings,
    message_text,
    model,
    request_cost,
    words_of,
)
from tests.support.openai_rules import (
    CORRUPTIONS,
    EPSILON,
    RATE_LIMIT_HELP,
    ApiError,
    Bucket,
    Corruption,
    Fault,
    Limit,
    LineFault,
    Payload,
    Plan,
    RecordedRequest,
    Reply,
    api_path_of,
    error_body,
    format_duration,
    matches,
    rate_headers,
    take,
)

log = logging.getLogger(__name__)


_DISCONNECTS = (BrokenPipeError, ConnectionResetError, ConnectionAbortedError, TimeoutError)


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


Summarizer = Callable[[list[dict[str, Any]]], str]


_Answer = tuple[int, Payload, dict[str, str]]


def _multipart(content_type: str, raw: bytes) -> tuple[dict[str, Any], tuple[str, bytes] | None]:
    """Form fields of a multipart/form-data body (a file as `{"filename", "bytes"}`) and the file."""
    match = re.search(r'boundary="?([^";]+)"?', content_type)
    if match is None:
        raise ApiError(400, "The multipart/form-data request has no boundary.")
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


class OpenAIServer(BatchAPI):
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
        self._fail_next: list[Fault] = []
        self._fail_when: list[Fault] = []
        self._hangs: list[Fault] = []
        self._replies: list[Reply] = []
        self._corruptions: list[Corruption] = []
        self._line_faults: list[LineFault] = []
        self._batch_fates: list[tuple[str, Any]] = []
        self._limits: dict[str | None, Limit] = {}
        self._buckets: dict[str, Bucket] = {}
        self._rate_limited = 0
        self._latency = 0.0
        self._chat_latency: float | None = None
        self._embedding_latency: float | None = None
        self._in_flight = 0
        self._peak = 0
        self._files: dict[str, StoredFile] = {}
        self._batches: dict[str, Batch] = {}

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
        return [r for r in self.requests if api_path_of(r.path) == "/chat/completions"]

    def embedding_requests(self) -> list[RecordedRequest]:
        """Requests to /v1/embeddings, whatever they were answered."""
        return [r for r in self.requests if api_path_of(r.path) == "/embeddings"]

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
            self._fail_next.append(Fault(status, path and api_path_of(path), count, retry_after))

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
                Fault(status, path and api_path_of(path), times, substring=substring, message=message)
            )

    def hang_next(self, count: int, seconds: float, path: str | None = None) -> None:
        """Stall the next `count` requests for `seconds` before answering them normally."""
        with self._lock:
            self._hangs.append(Fault(0, path and api_path_of(path), count, hang=seconds))

    def slow_when(self, substring: str, seconds: float, path: str | None = None) -> None:
        """Stall every request (to `path`, if given) whose body contains `substring` for `seconds`
        before answering it normally: a slow backlog beside quick edits."""
        with self._lock:
            self._hangs.append(Fault(0, path and api_path_of(path), None, substring=substring, hang=seconds))

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
            self._replies.append(Reply(substring, content, finish_reason, times, usage))

    def corrupt_embeddings(self, kind: str, count: int | None = 1, substring: str | None = None) -> None:
        """Corrupt the next `count` (None: all) embeddings answers (matching `substring`, if given).

        Kinds: "missing" (last item dropped), "extra" (one more item, index n), "wrong_dimension"
        (every vector dimensions + 3 long), "shuffled" (reverse order, right indexes), "bad_index"
        (every index 0), "nan" (the first vector's first float is NaN).
        """
        if kind not in CORRUPTIONS:
            raise ValueError(f"unknown corruption {kind!r}; expected one of {CORRUPTIONS}")
        with self._lock:
            self._corruptions.append(Corruption(kind, substring, count))

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
                self._limits[model] = Limit(rpm, tpm)

    # -- batches -----------------------------------------------------------------------------

    def fail_batch_lines(self, substring: str, status: int = 500, times: int | None = None) -> None:
        """Batch lines whose body contains `substring` fail with `status` (in the error file)."""
        with self._lock:
            self._line_faults.append(LineFault(substring, status, times))

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
        rejection: ApiError | None,
    ) -> tuple[RecordedRequest, Plan]:
        api_path = api_path_of(path)
        if rejection is None:
            rejection = self._reject(method, api_path, headers)
        serialised = json.dumps(body, ensure_ascii=False)
        with self._lock:
            self._in_flight += 1
            self._peak = max(self._peak, self._in_flight)
            record = RecordedRequest(path, body, headers, None, time.time(), None)
            self._log.append(record)
            plan = Plan(delay=self._delay(api_path), rejection=rejection)
            hang = take(
                self._hangs,
                lambda f: f.path in (None, api_path)
                and (f.substring is None or matches(f.substring, serialised, body)),
            )
            if hang is not None:
                plan.delay += hang.hang
            if rejection is None and method == "POST" and api_path in _LIMITED_PATHS:
                self._charge(api_path, body, plan)
            # Requests the real API would refuse anyway (bad key, unknown URL, over the rate limit)
            # do not use up injected faults.
            if plan.rejection is None:
                plan.fault = take(self._fail_next, lambda f: f.path in (None, api_path))
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

    def _apply_rules(self, plan: Plan, api_path: str, body: dict[str, Any], serialised: str) -> None:
        """Consume the first matching fail_when, else reply_when/corrupt_embeddings rule (lock held)."""
        plan.fault = take(
            self._fail_when,
            lambda f: f.path in (None, api_path) and matches(f.substring, serialised, body),
        )
        if plan.fault is not None:
            return
        if api_path == "/chat/completions":
            plan.reply = take(self._replies, lambda r: matches(r.substring, serialised, body))
        elif api_path == "/embeddings":
            plan.corruption = take(self._corruptions, lambda c: matches(c.substring, serialised, body))

    def _charge(self, api_path: str, body: dict[str, Any], plan: Plan) -> None:
        """Take the request from its model's buckets, or refuse it with a 429 (lock held)."""
        model = body.get("model")
        limit = (self._limits.get(model) or self._limits.get(None)) if isinstance(model, str) else None
        if limit is None or not isinstance(model, str):
            return
        now = time.monotonic()
        bucket = self._buckets.get(model)
        if bucket is None or bucket.limit is not limit:  # new or changed limit: start full
            bucket = Bucket(limit, float(limit.rpm or 0), float(limit.tpm or 0), now)
            self._buckets[model] = bucket
        elapsed, bucket.updated = now - bucket.updated, now
        if limit.rpm:
            bucket.requests = min(float(limit.rpm), bucket.requests + elapsed * limit.rpm / 60)
        if limit.tpm:
            bucket.tokens = min(float(limit.tpm), bucket.tokens + elapsed * limit.tpm / 60)
        cost = request_cost(api_path, body)
        short_requests = bool(limit.rpm) and bucket.requests + EPSILON < 1
        short_tokens = bool(limit.tpm) and bucket.tokens + EPSILON < cost
        if not (short_requests or short_tokens):
            bucket.requests -= 1 if limit.rpm else 0
            bucket.tokens -= cost if limit.tpm else 0
            plan.headers = rate_headers(bucket)
            return
        self._rate_limited += 1
        plan.headers = rate_headers(bucket)
        where = f"{model} in organization org-fake"
        if limit.tpm and cost > limit.tpm:  # can never fit: retrying is pointless
            plan.headers["x-should-retry"] = "false"
            plan.rejection = ApiError(
                429,
                f"Request too large for {where} on tokens per min (TPM): Limit {limit.tpm}, "
                f"Requested {cost}. The input or output tokens must be reduced in order to run "
                f"successfully. {RATE_LIMIT_HELP}",
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
            used = f"Limit {tpm}, Used {tpm - math.floor(bucket.tokens + EPSILON)}, Requested {cost}"
            kind = "tokens per min (TPM)"
        plan.rejection = ApiError(
            429,
            f"Rate limit reached for {where} on {kind}: {used}. Please try again in "
            f"{format_duration(wait_ms / 1000)}. {RATE_LIMIT_HELP}",
            type="requests" if short_requests else "tokens",
        )

    def _reject(self, method: str, api_path: str, headers: dict[str, str]) -> ApiError | None:
        auth = headers.get("authorization", "")
        if not auth.startswith("Bearer "):
            return ApiError(401, "You didn't provide an API key (Authorization: Bearer <key>).")
        if self.api_key is not None and auth != f"Bearer {self.api_key}":
            return ApiError(401, "Incorrect API key provided.")
        if not any(m == method and pattern.fullmatch(api_path) for m, pattern in _ROUTES):
            return ApiError(404, f"Invalid URL ({method} /v1{api_path})")
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
        plan: Plan,
        upload: tuple[str, bytes] | None = None,
    ) -> tuple[int, Payload]:
        """Status and payload for a planned request (or batch line)."""
        if plan.rejection is not None:
            return plan.rejection.status, plan.rejection.body()
        fault = plan.fault
        if fault is not None:
            return fault.status, error_body(
                fault.status, fault.message or f"Injected fault (HTTP {fault.status})."
            )
        try:
            return 200, self._respond(method, path, body, plan, upload)
        except ApiError as exc:
            return exc.status, exc.body()
        except Exception as exc:  # a bug in a summarize hook should surface as a 500, not a hung test
            log.exception("fake OpenAI server: handler failed")
            return 500, error_body(500, f"fake server error: {exc!r}")

    def _respond(
        self,
        method: str,
        path: str,
        body: dict[str, Any],
        plan: Plan | None = None,
        upload: tuple[str, bytes] | None = None,
    ) -> Payload:
        api_path = api_path_of(path)
        plan = plan or Plan()
        if method == "GET" and api_path == "/models":
            return {"object": "list", "data": [model(m) for m in MODELS]}
        if method == "GET" and api_path.startswith("/models/") and api_path[8:] in MODELS:
            return model(api_path[8:])
        if method == "POST" and api_path == "/chat/completions":
            return self._chat(body, plan.reply)
        if method == "POST" and api_path == "/embeddings":
            return embeddings(body, plan.corruption)
        if api_path == "/files" or api_path.startswith("/files/"):
            return self._files_api(method, path, body, upload)
        if api_path == "/batches" or api_path.startswith("/batches/"):
            return self._batches_api(method, api_path, body)
        raise ApiError(404, f"Invalid URL ({method} {path})")

    def _chat(self, body: dict[str, Any], reply: Reply | None = None) -> dict[str, Any]:
        messages = body.get("messages")
        if not isinstance(body.get("model"), str) or not isinstance(messages, list) or not messages:
            raise ApiError(400, "'model' and a non-empty 'messages' array are required")
        if not all(isinstance(m, dict) for m in messages):
            raise ApiError(400, "every item of 'messages' must be an object")
        if reply is not None:
            content, finish_reason = reply.content, reply.finish_reason
        else:
            content, finish_reason = (self.summarize or default_summary)(messages), "stop"
        prompt_tokens = sum(len(words_of(message_text(m))) for m in messages)
        completion_tokens = len(words_of(content or ""))
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
            except ApiError as exc:
                parsed, rejection = {}, exc
        else:
            try:
                parsed = json.loads(raw) if raw else {}
            except ValueError:
                parsed = None
            if not isinstance(parsed, dict):
                parsed, rejection = {}, ApiError(400, "The request body is not a valid JSON object.")
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

    def _send(self, status: int, payload: Payload, extra: dict[str, str]) -> None:
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
