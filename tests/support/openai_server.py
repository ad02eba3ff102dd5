"""Test-only fake of the OpenAI HTTP API: a real loopback server for the real `openai` SDK.

Speaks the subset the project uses (chat completions, embeddings, models) over a real socket, so
the SDK's HTTP, retry and timeout code runs for real, and so Celery worker subprocesses can call it
while the test process inspects its request log and injects latency and faults.

Never use this outside tests. Notes on what the SDK (openai 3.x, `_base_client.py`) honours:

* Retries (default `max_retries=2`) on connection errors/timeouts and on 408, 409, 429 and >= 500,
  unless the response carries `x-should-retry: true|false`, which overrides the status.
* The delay comes from `retry-after-ms` (milliseconds, preferred) else `retry-after` (seconds,
  floats accepted, or an HTTP date); it is used only when 0 < delay <= 120 s. A delay over 120 s
  makes the SDK give up instead of retrying; no/zero delay means exponential backoff
  (0.5 s * 2**n, capped at 8 s, minus up to 25 % jitter). `fail_next(retry_after=...)` sends both.
* Without an explicit `encoding_format` the SDK asks for "base64" and decodes the string as
  native-endian float32 (little-endian on every platform we run), so that is what we send.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import dataclasses
import hashlib
import itertools
import json
import logging
import math
import re
import signal
import socket
import struct
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType, TracebackType
from typing import Any

log = logging.getLogger(__name__)

DEFAULT_DIMENSIONS = 1536
MODELS = ("gpt-4.1-mini", "gpt-4o-mini", "text-embedding-3-small", "text-embedding-3-large")
_DISCONNECTS = (BrokenPipeError, ConnectionResetError, ConnectionAbortedError, TimeoutError)
_ERROR_KINDS = {
    400: ("invalid_request_error", "invalid_request"),
    401: ("invalid_request_error", "invalid_api_key"),
    404: ("invalid_request_error", "unknown_url"),
    429: ("requests", "rate_limit_exceeded"),
}
_ROUTES = {("GET", "/models"), ("POST", "/chat/completions"), ("POST", "/embeddings")}
_WORD = re.compile(r"\w+")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")

Summarizer = Callable[[list[dict[str, Any]]], str]
_Answer = tuple[int, dict[str, Any], dict[str, str]]


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the server saw it; `status`/`finished_at` are None while it is in flight."""

    path: str
    body: dict[str, Any]
    headers: dict[str, str]  # lower-cased names
    status: int | None
    started_at: float
    finished_at: float | None


class _ApiError(Exception):
    """Raised inside a handler to answer with an OpenAI-style error."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class _Fault:
    status: int
    path: str | None
    remaining: int | None  # None = unlimited
    retry_after: float | None = None
    substring: str | None = None
    hang: float = 0.0


@dataclass
class _Plan:
    """What was decided for a request on arrival, so concurrent requests consume faults in order."""

    delay: float = 0.0
    rejection: _ApiError | None = None  # auth/route/body problems, decided before faults
    fault: _Fault | None = None


def _api_path(path: str) -> str:
    """Path without query string and `/v1` prefix, so filters may be written either way."""
    path = path.split("?", 1)[0].rstrip("/") or "/"
    if path == "/v1" or path.startswith("/v1/"):
        path = path[3:] or "/"
    return path


def _error_body(status: int, message: str) -> dict[str, Any]:
    kind, code = _ERROR_KINDS.get(
        status, ("server_error" if status >= 500 else "invalid_request_error", None)
    )
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def _message_text(message: dict[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts: keep only the text ones
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


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


class OpenAIServer:
    """A loopback fake of the OpenAI API with a request log, latency and fault injection."""

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
        self._requested_port = port
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._log: list[RecordedRequest] = []
        self._fail_next: list[_Fault] = []
        self._fail_when: list[_Fault] = []
        self._hangs: list[_Fault] = []
        self._latency = 0.0
        self._in_flight = 0
        self._peak = 0

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

    def reset(self) -> None:
        """Clear the log, all pending faults and hangs, the peak counter and the latency."""
        with self._lock:
            self._log.clear()
            self._fail_next.clear()
            self._fail_when.clear()
            self._hangs.clear()
            self._peak = self._in_flight
            self._latency = 0.0

    # -- latency and faults ------------------------------------------------------------------

    @property
    def latency(self) -> float:
        """Seconds slept before answering every request."""
        with self._lock:
            return self._latency

    @latency.setter
    def latency(self, seconds: float) -> None:
        with self._lock:
            self._latency = max(0.0, float(seconds))

    def fail_next(
        self, count: int, status: int = 500, retry_after: float | None = None, path: str | None = None
    ) -> None:
        """Answer the next `count` requests (to `path`, if given) with `status` and an error body."""
        with self._lock:
            self._fail_next.append(_Fault(status, path and _api_path(path), count, retry_after))

    def fail_when(
        self, substring: str, status: int = 500, times: int | None = None, path: str | None = None
    ) -> None:
        """Fail requests whose serialised JSON body contains `substring` (`times=None`: always)."""
        with self._lock:
            self._fail_when.append(_Fault(status, path and _api_path(path), times, substring=substring))

    def hang_next(self, count: int, seconds: float, path: str | None = None) -> None:
        """Stall the next `count` requests for `seconds` before answering them normally."""
        with self._lock:
            self._hangs.append(_Fault(0, path and _api_path(path), count, hang=seconds))

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
            plan = _Plan(delay=self._latency, rejection=rejection)
            hang = _take(self._hangs, lambda f: f.path in (None, api_path))
            if hang is not None:
                plan.delay += hang.hang
            # Requests the real API would refuse anyway do not use up injected faults.
            if rejection is None:
                plan.fault = _take(self._fail_next, lambda f: f.path in (None, api_path)) or _take(
                    self._fail_when,
                    lambda f: f.path in (None, api_path) and (f.substring or "") in serialised,
                )
            return record, plan

    def _reject(self, method: str, api_path: str, headers: dict[str, str]) -> _ApiError | None:
        auth = headers.get("authorization", "")
        if not auth.startswith("Bearer "):
            return _ApiError(401, "You didn't provide an API key (Authorization: Bearer <key>).")
        if self.api_key is not None and auth != f"Bearer {self.api_key}":
            return _ApiError(401, "Incorrect API key provided.")
        if (method, api_path) not in _ROUTES and not (
            method == "GET" and api_path.startswith("/models/") and api_path[8:] in MODELS
        ):
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

    def _respond(self, method: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
        api_path = _api_path(path)
        if method == "GET" and api_path == "/models":
            return {"object": "list", "data": [_model(m) for m in MODELS]}
        if method == "GET" and api_path.startswith("/models/") and api_path[8:] in MODELS:
            return _model(api_path[8:])
        if method == "POST" and api_path == "/chat/completions":
            return self._chat(body)
        if method == "POST" and api_path == "/embeddings":
            return _embeddings(body)
        raise _ApiError(404, f"Invalid URL ({method} {path})")

    def _chat(self, body: dict[str, Any]) -> dict[str, Any]:
        messages = body.get("messages")
        if not isinstance(body.get("model"), str) or not isinstance(messages, list) or not messages:
            raise _ApiError(400, "'model' and a non-empty 'messages' array are required")
        if not all(isinstance(m, dict) for m in messages):
            raise _ApiError(400, "every item of 'messages' must be an object")
        summarize = self.summarize or default_summary
        content = summarize(messages)
        prompt_tokens = sum(len(_words(_message_text(m))) for m in messages)
        completion_tokens = len(_words(content))
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
                    "finish_reason": "stop",
                }
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }


def _take(faults: list[_Fault], matches: Callable[[_Fault], bool]) -> _Fault | None:
    """Consume one use of the first matching fault, dropping it when used up."""
    for i, fault in enumerate(faults):
        if matches(fault):
            if fault.remaining is not None:
                fault.remaining -= 1
                if fault.remaining <= 0:
                    del faults[i]
            return fault
    return None


def _model(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": 1_700_000_000, "owned_by": "openai-fake"}


def _embeddings(body: dict[str, Any]) -> dict[str, Any]:
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
    data = []
    for i, text in enumerate(texts):
        vector = embed_text(text, dimensions)
        packed: Any = vector
        if encoding == "base64":
            packed = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")
        data.append({"object": "embedding", "index": i, "embedding": packed})
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
    server: _HTTPServer

    def setup(self) -> None:
        super().setup()
        with self.server.connections_lock:
            self.server.connections.add(self.connection)

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

    def _handle(self, method: str) -> None:
        owner = self.server.owner
        length = self.headers.get("Content-Length", "0")
        raw = self.rfile.read(int(length)) if length.isdigit() else b""
        headers = {k.lower(): v for k, v in self.headers.items()}
        rejection = None
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
            status, payload, extra = self._answer(owner, method, parsed, plan)
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

    def _answer(self, owner: OpenAIServer, method: str, body: dict[str, Any], plan: _Plan) -> _Answer:
        if plan.rejection is not None:
            return plan.rejection.status, _error_body(plan.rejection.status, plan.rejection.message), {}
        fault = plan.fault
        if fault is not None:
            extra: dict[str, str] = {}
            if fault.retry_after is not None:
                extra = {
                    "retry-after": f"{fault.retry_after:g}",
                    "retry-after-ms": f"{fault.retry_after * 1000:g}",
                }
            return fault.status, _error_body(fault.status, f"Injected fault (HTTP {fault.status})."), extra
        try:
            return 200, owner._respond(method, self.path, body), {}
        except _ApiError as exc:
            return exc.status, _error_body(exc.status, exc.message), {}
        except Exception as exc:  # a bug in a summarize hook should surface as a 500, not a hung test
            log.exception("fake OpenAI server: handler failed")
            return 500, _error_body(500, f"fake server error: {exc!r}"), {}

    def _send(self, status: int, payload: dict[str, Any], extra: dict[str, str]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
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
    args = parser.parse_args(argv)

    def on_term(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    server = OpenAIServer(host=args.host, port=args.port, api_key=args.api_key).start()
    server.latency = args.latency
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
