"""FOR DEVELOPMENT: the HTTP side of the ClickHouse HTTP adapter (`devserver`).

Requests in, replies out: the keep-alive handler, request bodies (Content-Length or chunked,
with their Content-Encoding undone), multipart form fields, ClickHouse's error replies, and the
URLs clients use. What a request runs is the adapter's (`ClickHouseHTTPAdapter.execute`).
"""

from __future__ import annotations

import gzip
import importlib
import ipaddress
import logging
import re
import socket
import sys
import zlib
from email import policy
from email.parser import BytesParser
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any, NamedTuple
from urllib.parse import parse_qsl, urlsplit

if TYPE_CHECKING:
    from entity_vectors.store.devserver import ClickHouseHTTPAdapter

logger = logging.getLogger(__name__)

SERVER_NAME = "chdb-devserver"
_ERROR_CODE_RE = re.compile(r"Code: (\d+)\.")


class Reply(NamedTuple):
    """One HTTP response: status, headers and body."""

    status: int
    headers: dict[str, str]
    body: bytes


def decode_body(body: bytes, encoding: str | None) -> bytes:
    """Undo the request's Content-Encoding (clickhouse-connect compresses inserts by default)."""
    encoding = (encoding or "identity").strip().lower()
    if encoding == "identity":
        return body
    if encoding in ("gzip", "x-gzip"):
        return gzip.decompress(body)
    if encoding == "deflate":
        return zlib.decompress(body)
    if encoding == "zstd":
        # Imported by name: zstd lives in the stdlib from Python 3.14, in backports.zstd before.
        zstd = importlib.import_module(
            "compression.zstd" if sys.version_info >= (3, 14) else "backports.zstd"
        )
        return bytes(zstd.decompress(body))  # handles the one-frame-per-block bodies
    if encoding == "lz4":
        lz4_frame = importlib.import_module("lz4.frame")
        # clickhouse-connect writes one LZ4 frame per block, so decode frames until none remain.
        out, rest = bytearray(), body
        while rest:
            decompressor = lz4_frame.LZ4FrameDecompressor()
            out += decompressor.decompress(rest)
            rest = decompressor.unused_data if decompressor.eof else b""
        return bytes(out)
    if encoding == "br":
        return bytes(importlib.import_module("brotli").decompress(body))
    raise ValueError(f"Unsupported Content-Encoding: {encoding}")


def parse_form(content_type: str, body: bytes) -> dict[str, str]:
    """Return the text fields of a multipart/form-data body."""
    message = BytesParser(policy=policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + body
    )
    fields: dict[str, str] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if part.get_filename() is not None:
            raise ValueError(f"External data ({name}) is not supported by this development server")
        payload = part.get_payload(decode=True)
        raw = payload if isinstance(payload, bytes) else b""
        fields[str(name)] = raw.decode(part.get_content_charset() or "utf-8")
    return fields


def error_reply(exc: BaseException, headers: dict[str, str]) -> Reply:
    """Turn an exception into ClickHouse's HTTP error reply."""
    message = str(exc)
    start = message.find("Code: ")
    if start >= 0:
        # chdb wrappers prefix their own text (e.g. "Streaming insert finish failed: ").
        message = message[start:]
    else:
        message = f"Code: 1001. DB::Exception: {type(exc).__name__}: {message}. (STD_EXCEPTION)"
    match = _ERROR_CODE_RE.match(message)
    headers = {**headers, "X-ClickHouse-Exception-Code": match.group(1) if match else "1001"}
    headers["Content-Type"] = "text/plain; charset=UTF-8"
    return Reply(500, headers, message.rstrip().encode() + b"\n")


class Server(ThreadingHTTPServer):
    """The HTTP server, knowing the adapter its handlers call."""

    adapter: ClickHouseHTTPAdapter


class Server6(Server):
    """The same on an IPv6 address."""

    address_family = socket.AF_INET6


class Handler(BaseHTTPRequestHandler):
    """Translate HTTP requests to ClickHouseHTTPAdapter.execute calls."""

    protocol_version = "HTTP/1.1"  # keep-alive: clickhouse-connect pools connections
    server_version = SERVER_NAME
    server: Server

    def do_GET(self) -> None:
        """Health checks, or a query in the ``query`` URL parameter."""
        url = urlsplit(self.path)
        params = dict(parse_qsl(url.query, keep_blank_values=True))
        if url.path == "/ping" or (url.path == "/" and "query" not in params):
            self._send(Reply(200, {"Content-Type": "text/html; charset=UTF-8"}, b"Ok.\n"))
        elif url.path == "/":
            self._send(self.server.adapter.execute(params, b""))
        else:
            self._send(Reply(404, {"Content-Type": "text/plain"}, b"There is no handle " + url.path.encode()))

    def do_POST(self) -> None:
        """A query in the URL and/or body, form fields, or an insert with its data."""
        url = urlsplit(self.path)
        try:
            body = self._read_body()  # always drain the body so the kept-alive connection stays in sync
        except (ConnectionError, ValueError):
            # A client that died mid-request must not get a truncated insert executed.
            self.close_connection = True
            return
        if url.path not in ("/", ""):
            self._send(Reply(404, {"Content-Type": "text/plain"}, b"There is no handle " + url.path.encode()))
            return
        params = dict(parse_qsl(url.query, keep_blank_values=True))
        adapter = self.server.adapter
        try:
            body = decode_body(body, self.headers.get("Content-Encoding"))
            content_type = self.headers.get("Content-Type", "")
            if content_type.lower().startswith("multipart/form-data"):
                params.update(parse_form(content_type, body))
                body = b""
        except Exception as exc:
            self._send(error_reply(exc, {}))
            return
        self._send(adapter.execute(params, body))

    def _read_body(self) -> bytes:
        """Read a Content-Length or chunked (streamed inserts) request body."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks: list[bytes] = []
            while True:
                line = self.rfile.readline()
                if not line:
                    raise ConnectionError("request body ended before its last chunk")
                size = int(line.split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline().strip():  # trailer headers up to the blank line
                        pass
                    return b"".join(chunks)
                chunks.append(self._read_exactly(size))
                self.rfile.readline()  # CRLF ending the chunk
        return self._read_exactly(int(self.headers.get("Content-Length") or 0))

    def _read_exactly(self, size: int) -> bytes:
        """Read size bytes of the body or raise ConnectionError if the client went away."""
        data = self.rfile.read(size) if size else b""
        if len(data) != size:
            raise ConnectionError("request body truncated")
        return data

    def _send(self, reply: Reply) -> None:
        """Write a complete response with Content-Length."""
        try:
            self.send_response(reply.status)
            for name, value in reply.headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(reply.body)))
            self.end_headers()
            self.wfile.write(reply.body)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client went away; nothing to tell it

    def log_message(self, format: str, *args: Any) -> None:
        """Log requests at debug level instead of writing every request to stderr."""
        logger.debug("%s - " + format, self.address_string(), *args)


def client_url(host: str, port: int) -> str:
    """The CLICKHOUSE_URL other processes on this machine use to reach a server on host:port."""
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    shown = f"[{host}]" if ":" in host else host
    return f"http://default:@{shown}:{port}/default"


def is_loopback(host: str) -> bool:
    """Whether `host` is only reachable from this machine (127.0.0.0/8, ::1, or a name for them)."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except OSError:
        return False
    return bool(addresses) and all(ipaddress.ip_address(str(address)).is_loopback for address in addresses)
