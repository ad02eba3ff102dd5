"""FOR DEVELOPMENT: the embedded ClickHouse (chdb) served over ClickHouse's HTTP interface.

chdb opens a data directory from one process only. On a laptop without a ClickHouse server, one
process owns the engine and serves it over HTTP, and every other process (Celery workers of any
pool, beat, the web app, the CLI) reaches it through clickhouse-connect: the first process to open
`chdb://...` does this by itself (`store.shared`), or `python manage.py serve_clickhouse` does it
on a fixed port with the CLICKHOUSE_URL it prints, e.g.
`http://default:<password>@127.0.0.1:8123/default`. The tests use the same server so that several
processes can share one chdb data directory.

Never use this in production: no TLS, and queries run one at a time. Because every web page the
developer opens can send requests to loopback, it defends itself:

* it binds 127.0.0.1 unless told otherwise (the command refuses a non-loopback address without
  `--allow-remote`);
* it refuses (403) any request carrying an ``Origin`` header or a browser's ``Sec-Fetch-Site``, and
  any request whose ``Host`` is not the address it listens on (DNS rebinding), see `devserver_http`;
* queries need user ``default`` and a password made at every start (`secrets.token_urlsafe`, or
  ``password=``), which the printed URL carries;
* GET runs only statements that read, as ClickHouse does; no statement may reach files, URLs or
  other servers (``file()``, ``url()``, ``s3()``, ``remote()``, engines such as File or URL,
  ``INTO OUTFILE``, ...), see `devserver_guard`.

Implemented subset of https://clickhouse.com/docs/interfaces/http (what clickhouse-connect uses):

* ``GET /`` and ``GET /ping`` answer ``Ok.``; ``GET /?query=...`` and ``POST /`` run a query, taken
  from the ``query`` URL parameter followed by a newline and the body (ClickHouse's rule), or from
  ``multipart/form-data`` fields (which clickhouse-connect uses when bound parameters are large).
  One statement per request, as on ClickHouse.
* ``param_<name>`` values bind ``{name:Type}`` placeholders; ``database`` selects the database;
  ``default_format`` (TabSeparated by default) applies when the query has no ``FORMAT`` clause;
  any other parameter that is not transport-only is a setting, applied with ``SET`` for that
  request only; ``readonly=1`` makes a POST read-only like a GET.
* ``INSERT INTO ... FORMAT <fmt>`` followed by data (e.g. clickhouse-connect's ``Native`` blocks) is
  fed to chdb's streaming inserter (the body is buffered in memory first); chunked bodies and
  ``Content-Encoding`` lz4 / zstd / gzip / deflate / br are decoded.
* Errors reply HTTP 500 with ClickHouse's exception text and ``X-ClickHouse-Exception-Code``;
  refusals reply 401 or 403 the same way.

Not implemented: sessions (one chdb session is shared and requests are serialised with a lock, so a
``SET`` sent as a query stays in effect for all clients), external data tables, users other than
``default``, ``client_protocol_version`` (clickhouse-connect then falls back to protocol 0),
progress headers and response compression (replies are always uncompressed, which is valid HTTP).

The data directory is locked the way the embedded store locks it, and the server records its URL
beside the data (`directory.announce`), so a process that opens the directory as ``chdb://`` while
this server runs connects to it (`store.shared`). The embedded store of the first process to open
the directory serves it with this adapter too, sharing its own chdb session (``session=``). This module
runs the requests in chdb; `devserver_http` speaks HTTP; `devserver_guard` decides what may run.
"""

from __future__ import annotations

import collections
import json
import re
import secrets
import threading
import uuid
from types import TracebackType
from typing import IO, Any

from entity_vectors.exceptions import ConfigurationError, EmbeddedStoreLocked
from entity_vectors.store.devserver_guard import SqlGuard
from entity_vectors.store.devserver_http import (
    SERVER_NAME,
    Handler,
    Reply,
    Server,
    Server6,
    client_url,
    error_reply,
)
from entity_vectors.store.directory import DirectoryHeld, announce, take_directory, withdraw

# URL parameters that steer the HTTP layer rather than being ClickHouse settings. ``readonly`` is
# here too: applying it with SET to the shared session would lock every later SET out.
_TRANSPORT_PARAMS = frozenset(
    {
        "query", "database", "default_format", "user", "password", "quota_key", "query_id",
        "session_id", "session_timeout", "session_check", "close_session", "buffer_size",
        "wait_end_of_query", "compress", "decompress", "client_protocol_version", "role", "stacktrace",
        "enable_http_compression", "http_zlib_compression_level", "send_progress_in_http_headers",
        "http_headers_progress_interval_ms", "cancel_http_readonly_queries_on_client_close", "readonly",
    }
)  # fmt: skip
_SETTING_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# ``INSERT INTO <target> FORMAT <fmt>`` then the data, which starts after spaces and one newline.
# The target may not contain quotes or ';' so that ``VALUES ('... FORMAT x')`` is left to the SQL path.
_INSERT_FORMAT_RE = re.compile(
    rb"^(?:\s|--[^\n]*\n|/\*.*?\*/)*(?P<stmt>INSERT\s+INTO\s[^;']*?)\s+FORMAT\s+(?P<fmt>\w+)[ \t]*(?:\r?\n)?",
    re.IGNORECASE | re.DOTALL,
)
_TRAILING_FORMAT_RE = re.compile(r"\bFORMAT\s+(\w+)\s*;?\s*$", re.IGNORECASE)
_USE_RE = re.compile(r"\s*USE\s", re.IGNORECASE)
_BINARY_FORMATS = frozenset({"native", "rowbinary", "arrow", "arrowstream", "parquet", "orc", "avro"})
_INSERT_CHUNK = 8 << 20
EMBEDDED_EXTRA_HINT = (
    "the embedded ClickHouse engine (chdb) is not installed; install the 'embedded' extra "
    "(pip install 'entity-vectors[embedded]') or point CLICKHOUSE_URL at a ClickHouse server"
)


def _sql_literal(value: str) -> str:
    """Quote a setting value; ClickHouse converts quoted literals to the setting's type."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


class ClickHouseHTTPAdapter:
    """Serve ClickHouse's HTTP interface for one chdb data directory from a background thread."""

    def __init__(
        self,
        data_path: str,
        host: str = "127.0.0.1",
        port: int = 0,
        password: str | None = None,
        *,
        session: Any = None,
        lock: threading.Lock | None = None,
    ) -> None:
        """Remember where to store data, where to listen and the password (None: a new random one).

        `session` and `lock`: serve the chdb session this process has open already (the embedded
        store's), taking `lock` around each request as the store does around its statements;
        then the store keeps the engine and the directory, and stop() leaves them open. Nothing
        starts until start().
        """
        if password == "":
            raise ValueError("the password of the ClickHouse development server must not be empty")
        self.data_path = data_path
        self.host = host
        self.password = password if password is not None else secrets.token_urlsafe(24)
        self._requested_port = port
        self._lock = lock or threading.Lock()
        self._session: Any = session
        self._borrowed = session is not None
        self._directory_lock: IO[str] | None = None
        self._guard: SqlGuard | None = None
        self._server: Server | None = None
        self._thread: threading.Thread | None = None
        self._database = ""
        self._home_database = ""
        # Settings currently SET on the shared session; a request's settings must not outlive it.
        self._applied: dict[str, str] = {}
        # The latest statements run, with the rows each read (what a client asked of ClickHouse).
        self.statements: collections.deque[tuple[str, int]] = collections.deque(maxlen=10_000)
        self._timezone = "UTC"

    @property
    def port(self) -> int:
        """The TCP port actually listened on (useful with port=0)."""
        if self._server is None:
            raise RuntimeError("ClickHouseHTTPAdapter is not started")
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        """A ClickHouse URL for clients, with the password, e.g. the project's CLICKHOUSE_URL."""
        return client_url(self.host, self.port, self.password)

    def start(self) -> ClickHouseHTTPAdapter:
        """Open chdb and start serving in a daemon thread.

        Raises ConfigurationError without chdb, EmbeddedStoreLocked when another process has the
        directory, and OSError when the address cannot be listened on.
        """
        if not self._borrowed:
            self._open_engine()
        try:
            with self._lock:
                self._timezone = (
                    self._session.query("SELECT timezone()", "TabSeparated").bytes().decode().strip()
                )
                self._home_database = (
                    self._session.query("SELECT currentDatabase()", "TabSeparated").bytes().decode().strip()
                )
                self._guard = SqlGuard.load(self._run)
            server = self._listen()
        except BaseException:
            self._close_engine()  # release the data directory for another attempt
            raise
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name="clickhouse-http", daemon=True)
        self._thread.start()
        announce(self.data_path, self.url)
        return self

    def _open_engine(self) -> None:
        try:
            from chdb import session as chdb_session
        except ImportError:
            raise ConfigurationError(EMBEDDED_EXTRA_HINT) from None
        self._directory_lock = _lock_directory(self.data_path)
        open_session: Any = chdb_session.Session  # chdb ships no complete type hints
        try:
            self._session = open_session(self.data_path)
        except RuntimeError as exc:
            self._close_engine()
            raise EmbeddedStoreLocked(
                f"cannot open the embedded ClickHouse at {self.data_path}: {' '.join(str(exc).split())}"
            ) from exc

    def restore_session(self) -> None:
        """Give the shared session back its own database and settings (the caller holds the lock):
        what a request SET must not apply to the embedded store's own statements."""
        if self._applied or (self._database and self._database != self._home_database):
            self._prepare(self._home_database, {})

    def _listen(self) -> Server:
        server_class = Server6 if ":" in self.host else Server
        server = server_class((self.host, self._requested_port), Handler, bind_and_activate=False)
        server.daemon_threads = True  # idle keep-alive connections must not block stop()
        server.request_queue_size = 128  # many worker processes may connect at once
        server.allow_reuse_address = True
        server.adapter = self
        try:
            server.server_bind()
            server.server_activate()
        except OSError:
            server.server_close()
            raise
        return server

    def _close_engine(self) -> None:
        if self._borrowed:
            return  # the embedded store's: it closes them
        if self._session is not None:
            self._session.close()
            self._session = None
        if self._directory_lock is not None:
            self._directory_lock.close()
            self._directory_lock = None

    def stop(self) -> None:
        """Stop serving and close chdb (unless it is borrowed); safe to call twice."""
        if self._server is not None:
            withdraw(self.data_path)
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        with self._lock:  # wait for an in-flight query before closing the engine under it
            self._close_engine()

    def __enter__(self) -> ClickHouseHTTPAdapter:
        """Start on entering the with-block."""
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Stop on leaving the with-block."""
        self.stop()

    def _run(self, sql: str, params: dict[str, str]) -> str:
        """A statement's whole result as text (for the guard's parser questions)."""
        return str(self._session.query(sql, "TabSeparatedRaw", params=params or None).bytes().decode())

    def execute(self, params: dict[str, str], body: bytes, *, read_only: bool = False) -> Reply:
        """Run one HTTP request's query (URL parameters plus decoded body) in chdb, if the guard allows it.

        `read_only` (a GET, or ``readonly=1``): only statements that read run, as on ClickHouse.
        """
        headers = {
            "X-ClickHouse-Query-Id": params.get("query_id") or str(uuid.uuid4()),
            "X-ClickHouse-Timezone": self._timezone,
            "X-ClickHouse-Server-Display-Name": SERVER_NAME,
        }
        query = params.get("query", "")
        data = query.encode() + b"\n" + body if query and body else query.encode() or body
        settings = {
            k: v for k, v in params.items() if k not in _TRANSPORT_PARAMS and not k.startswith("param_")
        }
        bind = {k[len("param_") :]: v for k, v in params.items() if k.startswith("param_")}
        read_only = read_only or params.get("readonly", "0") not in ("", "0")
        try:
            if not data.strip():
                raise ValueError("Code: 62. DB::Exception: Empty query. (SYNTAX_ERROR)")
            with self._lock:
                if self._session is None or self._guard is None:
                    raise RuntimeError("Server is shutting down")
                self._guard.check_settings(settings)
                self._prepare(params.get("database") or "default", settings)
                insert = _INSERT_FORMAT_RE.match(data[:65536])
                if insert:
                    self._guard.check(
                        f"{insert.group('stmt').decode()} FORMAT {insert.group('fmt').decode()}",
                        {},
                        read_only=read_only,
                    )
                    return self._insert(insert, data, headers)
                sql = data.decode()
                self._guard.check(sql, bind, read_only=read_only)
                if _USE_RE.match(sql):
                    self._database = ""  # a USE in the query moves the shared session; re-USE next time
                return self._query(sql, bind, params.get("default_format") or "TabSeparated", headers)
        except Exception as exc:
            return error_reply(exc, headers)

    def _prepare(self, database: str, settings: dict[str, str]) -> None:
        """Make the shared session's database and settings exactly those of this request."""
        if database != self._database:
            self._session.query(f"USE `{database.replace('`', '``')}`", "TabSeparated")
            self._database = database
        for name in [n for n in self._applied if n not in settings]:
            self._session.query(f"SET {name} = DEFAULT", "TabSeparated")
            del self._applied[name]
        for name, value in settings.items():
            if self._applied.get(name) == value:
                continue
            if not _SETTING_NAME_RE.match(name):
                raise ValueError(f"Invalid setting name {name!r}")
            self._session.query(f"SET {name} = {_sql_literal(value)}", "TabSeparated")
            self._applied[name] = value

    def _insert(self, match: re.Match[bytes], data: bytes, headers: dict[str, str]) -> Reply:
        """Stream the data after ``INSERT ... FORMAT fmt`` into chdb's streaming inserter."""
        self.statements.append((match.group("stmt").decode(), 0))
        inserter = self._session.send_insert(match.group("stmt").decode(), match.group("fmt").decode())
        try:
            view = memoryview(data)[match.end() :]
            for offset in range(0, len(view), _INSERT_CHUNK):
                inserter.append(view[offset : offset + _INSERT_CHUNK])
            result = inserter.finish()
        except BaseException:
            inserter.cancel()
            raise
        rows, size = str(result.rows_written), str(result.bytes_written)
        headers["X-ClickHouse-Summary"] = json.dumps(
            {"read_rows": "0", "read_bytes": "0", "written_rows": rows, "written_bytes": size,
             "total_rows_to_read": "0", "result_rows": rows, "result_bytes": size,
             "elapsed_ns": str(int(result.elapsed * 1e9))}
        )  # fmt: skip
        return Reply(200, headers, b"")

    def _query(self, sql: str, bind: dict[str, str], default_format: str, headers: dict[str, str]) -> Reply:
        """Run a statement; X-ClickHouse-Format is sent only when it produces a result set."""
        explicit = _TRAILING_FORMAT_RE.search(sql)
        fmt = explicit.group(1) if explicit else default_format
        # A statement produces a result set iff it prints a names line, even with zero rows;
        # clickhouse-connect's command() relies on the header to tell "" from a DDL summary.
        with_names = not explicit and fmt.lower() in ("tabseparated", "tsv")
        result = self._session.query(sql, "TabSeparatedWithNames" if with_names else fmt, params=bind or None)
        self.statements.append((sql, int(result.rows_read())))
        body = result.bytes() or b""
        produces_rows = bool(explicit) or bool(body)
        if with_names:
            body = body[body.find(b"\n") + 1 :] if body else b""
        headers["X-ClickHouse-Summary"] = json.dumps(
            {"read_rows": str(result.rows_read()), "read_bytes": str(result.bytes_read()),
             "written_rows": str(result.rows_written()), "written_bytes": str(result.bytes_written()),
             "total_rows_to_read": "0", "result_rows": "0", "result_bytes": "0",
             "elapsed_ns": str(int(result.elapsed() * 1e9))}
        )  # fmt: skip
        if produces_rows:
            headers["X-ClickHouse-Format"] = fmt
            binary = fmt.lower() in _BINARY_FORMATS
            headers["Content-Type"] = "application/octet-stream" if binary else "text/plain; charset=UTF-8"
        return Reply(200, headers, body)


def _lock_directory(path: str) -> IO[str]:
    """Take the data directory the way the embedded store does: one process at a time."""
    try:
        return take_directory(path)
    except DirectoryHeld as exc:
        raise EmbeddedStoreLocked(
            f"the embedded ClickHouse at {path} is in use by another process (pid {exc.holder}): chdb allows "
            "one process per data directory; stop that process (a demo, a CLI command or a worker on "
            "chdb://) and start this server first, then point every process at it"
        ) from None
