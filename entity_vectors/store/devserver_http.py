"""FOR DEVELOPMENT: the HTTP side of the ClickHouse HTTP adapter (`devserver`).

Requests in, replies out: who may ask (`refuse_foreign`, `authenticate`), the keep-alive handler,
request bodies (Content-Length or chunked, with their Content-Encoding undone), multipart form
fields, ClickHouse's error replies, and the URLs clients use. What a request runs is the
adapter's (`ClickHouseHTTPAdapter.execute`, checked by `devserver_guard`).

Every web page the developer opens can send requests to a server on loopback. So, before
anything else, a request is refused (HTTP 403) when it carries an ``Origin`` header (browsers send
it with every cross-site POST and fetch), a ``Sec-Fetch-Site`` other than ``none`` (a browser's
request made by a page, e.g. an ``<img>``), or a ``Host`` that is not the address the server
listens on (a page whose DNS name was rebound to 127.0.0.1 sends its own name). Queries then need
the password made at start (clickhouse-connect sends it by basic auth; ``X-ClickHouse-User`` /
``X-ClickHouse-Key`` and the ``user`` / ``password`` URL parameters work too); health checks
(``/ping``) do not, as on ClickHouse.
"""

from __future__ import annotations

import base64
import gzip
import hmac
import importlib
import ipaddress
import logging
import re
import socket
import sys
import zlib
from email import policy
from email.message import Message
from email.parser import BytesParser
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, NamedTuple, Protocol
from urllib.parse import parse_qsl, quote, urlsplit

from entity_vectors.store.devserver_guard import Refused, access_denied

logger = logging.getLogger(__name__)

SERVER_NAME = "chdb-devserver"
USER = "default"
_ERROR_CODE_RE = re.compile(r"Code: (\d+)\.")
# A refused request's body is read (and dropped) up to this size so that the client reads the
# refusal instead of a reset connection; a larger one is left unread and the connection closed.
_DISCARD_LIMIT = 16 << 20
_USE_PRINTED_URL = "use the CLICKHOUSE_URL that serve_clickhouse printed (its password is new at every start)"


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


def refuse_foreign(headers: Message, bound: str, port: int) -> Refused | None:
    """Why a request a web page could have sent is refused, or None (see the module's docstring)."""
    if "Origin" in headers:
        return access_denied(
            "Cross-site request refused: this development server answers no request carrying an Origin "
            "header (web browsers send one); use a ClickHouse client"
        )
    site = headers.get("Sec-Fetch-Site")
    if site is not None and site.strip().lower() != "none":
        return access_denied(
            f"Request from a web page refused (Sec-Fetch-Site: {site.strip()[:40]}): this development "
            "server answers ClickHouse clients only"
        )
    host = headers.get("Host")
    if not host_allowed(host, bound, port):
        shown = "no Host header" if host is None else f"Host {host.strip()[:100]!r}"
        return access_denied(
            f"Request with {shown} refused: this development server answers requests addressed to "
            f"{describe_hosts(bound, port)} only (a DNS name could be rebound to this machine by a web page)"
        )
    return None


def host_allowed(host: str | None, bound: str, port: int) -> bool:
    """Whether a Host header names this server: its loopback address or localhost with its port.

    On a non-loopback address (``--allow-remote``) the machine's names are unknown, so any IP
    address (and localhost) is accepted, and no DNS name: a name is what a rebinding page controls.
    """
    if not host:
        return False
    host = host.strip().lower()
    if host.startswith("["):
        name, bracket, rest = host[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            return False
        given_port = rest[1:]
    else:
        name, _, given_port = host.partition(":")
    if given_port != str(port) and not (given_port == "" and port == 80):
        return False
    if name == "localhost":
        return True
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return False
    listening = ipaddress.ip_address(bound)
    return address == listening if listening.is_loopback else True


def describe_hosts(bound: str, port: int) -> str:
    """The Host values `host_allowed` accepts, for an error message."""
    if not ipaddress.ip_address(bound).is_loopback:
        return f"an IP address or localhost, with port {port}"
    shown = f"[{bound}]" if ":" in bound else bound
    return f"{shown}:{port} or localhost:{port}"


def authenticate(headers: Message, params: dict[str, str], password: str) -> Refused | None:
    """None if every credential the request offers is the server's user and password, else why not.

    Offered the ways ClickHouse accepts them: basic auth (what clickhouse-connect sends), the
    X-ClickHouse-User / X-ClickHouse-Key headers, the user / password URL parameters. Passwords are
    compared in constant time.
    """
    offered: list[tuple[str, str]] = []
    if "X-ClickHouse-User" in headers or "X-ClickHouse-Key" in headers:
        offered.append((headers.get("X-ClickHouse-User", USER), headers.get("X-ClickHouse-Key", "")))
    authorization = headers.get("Authorization")
    if authorization is not None:
        scheme, _, token = authorization.strip().partition(" ")
        user, key = "", ""
        if scheme.lower() == "basic":
            try:
                user, _, key = base64.b64decode(token.strip(), validate=True).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                user, key = "", ""
        offered.append((user, key))
    if "user" in params or "password" in params:
        offered.append((params.get("user") or USER, params.get("password", "")))
    if not offered:
        return Refused(
            401,
            194,
            "REQUIRED_PASSWORD",
            f"Authentication failed: a password is required; {_USE_PRINTED_URL}",
        )
    expected = password.encode()
    for user, key in offered:
        matches = hmac.compare_digest(key.encode(), expected)
        if not matches or user != USER:
            return Refused(
                403,
                516,
                "AUTHENTICATION_FAILED",
                f"Authentication failed: password is incorrect, or there is no user with such name; {_USE_PRINTED_URL}",
            )
    return None


def error_reply(exc: BaseException, headers: dict[str, str]) -> Reply:
    """Turn an exception into ClickHouse's HTTP error reply (500, or a refusal's own status)."""
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
    status = exc.status if isinstance(exc, Refused) else 500
    return Reply(status, headers, message.rstrip().encode() + b"\n")


class QueryRunner(Protocol):
    """What the handlers call: the adapter that runs a request in chdb (`devserver`)."""

    password: str

    def execute(self, params: dict[str, str], body: bytes, *, read_only: bool = False) -> Reply:
        """Run one request's query; a reply in every case, errors included."""
        ...


class Server(ThreadingHTTPServer):
    """The HTTP server, knowing the adapter its handlers call."""

    adapter: QueryRunner


class Server6(Server):
    """The same on an IPv6 address."""

    address_family = socket.AF_INET6


class Handler(BaseHTTPRequestHandler):
    """Translate HTTP requests to ClickHouseHTTPAdapter.execute calls."""

    protocol_version = "HTTP/1.1"  # keep-alive: clickhouse-connect pools connections
    # A reply is written as its headers, then its body: with Nagle's algorithm a small body waits
    # for the client to acknowledge the headers, which it delays (~40 ms per query on Linux).
    disable_nagle_algorithm = True
    server_version = SERVER_NAME
    server: Server

    def do_GET(self) -> None:
        """Health checks, or a query in the ``query`` URL parameter (read-only, as on ClickHouse)."""
        if self._refused_foreign():
            return
        url = urlsplit(self.path)
        params = dict(parse_qsl(url.query, keep_blank_values=True))
        if url.path == "/ping" or (url.path == "/" and "query" not in params):
            self._send(Reply(200, {"Content-Type": "text/html; charset=UTF-8"}, b"Ok.\n"))
        elif url.path == "/":
            if not self._refused_unauthenticated(params):
                self._send(self.server.adapter.execute(params, b"", read_only=True))
        else:
            self._send(Reply(404, {"Content-Type": "text/plain"}, b"There is no handle " + url.path.encode()))

    def do_POST(self) -> None:
        """A query in the URL and/or body, form fields, or an insert with its data."""
        if self._refused_foreign():
            return
        url = urlsplit(self.path)
        if url.path in ("/", "") and self._refused_unauthenticated(
            dict(parse_qsl(url.query, keep_blank_values=True))
        ):
            return
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

    def _refused_foreign(self) -> bool:
        """Refuse (and say True) a request a web page could have sent."""
        address = self.server.server_address
        refused = refuse_foreign(self.headers, str(address[0]), int(address[1]))
        if refused is not None:
            self._refuse(refused)
        return refused is not None

    def _refused_unauthenticated(self, params: dict[str, str]) -> bool:
        """Refuse (and say True) a query without the server's password."""
        refused = authenticate(self.headers, params, self.server.adapter.password)
        if refused is not None:
            self._refuse(refused)
        return refused is not None

    def _refuse(self, refused: Refused) -> None:
        """Answer a refusal without running anything, then close the connection."""
        logger.warning(
            "refused %s %s from %s: %s",
            self.command,
            urlsplit(self.path).path,
            self.address_string(),
            refused,
        )
        self.close_connection = True
        length = self.headers.get("Content-Length") or "0"
        if length.isdigit() and int(length) <= _DISCARD_LIMIT and "Transfer-Encoding" not in self.headers:
            try:
                self._read_exactly(int(length))
            except (ConnectionError, OSError):
                return
        self._send(error_reply(refused, {}))

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


def client_url(host: str, port: int, password: str) -> str:
    """The CLICKHOUSE_URL other processes on this machine use to reach a server on host:port."""
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    shown = f"[{host}]" if ":" in host else host
    return f"http://{USER}:{quote(password, safe='')}@{shown}:{port}/default"


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
