"""`manage.py serve_clickhouse` cannot be driven by a web page, nor made to reach files or other servers.

Every web page the developer opens can send requests to 127.0.0.1: a cross-site POST (with an
`Origin`), an `<img src>` GET, or a page whose DNS name was rebound to 127.0.0.1 (with its own
`Host`), which can then read the replies. Each test talks to the real `serve_clickhouse` process.
"""

from __future__ import annotations

import base64
import http.client
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlencode, urlsplit

import clickhouse_connect
import pytest
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import DatabaseError

from entity_vectors.store import EmbeddingRow, open_store
from tests.support.devserver import DevServer, start_devserver

T0 = datetime(2025, 1, 15, 12, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevServer]:
    """One `serve_clickhouse` for the module, with a new data directory."""
    running = start_devserver(tmp_path_factory.mktemp("guarded") / "clickhouse")
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def client(server: DevServer) -> Client:
    """clickhouse-connect on the URL the server printed: what the project's processes use."""
    return clickhouse_connect.get_client(dsn=server.url)


def password(server: DevServer) -> str:
    """The password in the printed URL."""
    return unquote(urlsplit(server.url).password or "")


def basic(user: str, secret: str) -> dict[str, str]:
    """Basic auth, as clickhouse-connect and curl -u send it."""
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{secret}".encode()).decode()}


def send(
    server: DevServer, method: str, target: str, body: str = "", headers: dict[str, str] | None = None
) -> tuple[int, str]:
    """One raw HTTP request (with exactly the headers given, Host included); status and body."""
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        connection.request(method, target, body=body.encode() or None, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.read().decode()
    finally:
        connection.close()


def post(
    server: DevServer, sql: str, headers: dict[str, str] | None = None, *, auth: bool = True
) -> tuple[int, str]:
    """POST a query, with the server's password unless `auth` is False."""
    given = {**(basic("default", password(server)) if auth else {}), **(headers or {})}
    return send(server, "POST", "/", sql, given)


def get(server: DevServer, sql: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    """GET a query with the password in the URL, as a link or an `<img src>` would carry it."""
    return send(
        server,
        "GET",
        "/?" + urlencode({"query": sql, "user": "default", "password": password(server)}),
        "",
        headers,
    )


def one_line(body: str) -> bool:
    """Whether a reply body is one line, as ClickHouse's errors are."""
    return body.endswith("\n") and body.count("\n") == 1


def exists(client: Client, table: str) -> bool:
    """Whether a table exists on the server."""
    return bool(client.command(f"EXISTS TABLE {table}"))


class TestWebPages:
    """What a web page can make the browser send is refused before anything runs, password or not."""

    @pytest.mark.parametrize(
        ("origin", "table"),
        [
            ("http://evil.example", "xsite_evil"),
            ("null", "xsite_null"),
            ("http://127.0.0.1:8000", "xsite_local"),
        ],
    )
    def test_a_cross_site_post_is_refused_and_runs_nothing(
        self, server: DevServer, client: Client, origin: str, table: str
    ) -> None:
        status, body = post(server, f"CREATE TABLE {table} (x Int8) ENGINE = Memory", {"Origin": origin})

        assert status == 403
        assert body.startswith("Code: 497. DB::Exception: Cross-site request refused") and one_line(body)
        assert not exists(client, table)

    def test_a_page_s_get_without_origin_is_refused(self, server: DevServer) -> None:
        # An <img src> or <script src> GET carries no Origin, but browsers mark it as another site's.
        status, body = get(server, "SELECT 1", {"Sec-Fetch-Site": "cross-site"})

        assert status == 403
        assert "Request from a web page refused (Sec-Fetch-Site: cross-site)" in body and one_line(body)

    @pytest.mark.parametrize(
        "host",
        [
            "evil.example:{port}",
            "evil.example",
            "rebound.localhost:{port}",
            "127.0.0.1:1",
            "127.0.0.2:{port}",
            "",
        ],
    )
    def test_a_foreign_host_is_refused_and_runs_nothing(
        self, server: DevServer, client: Client, host: str
    ) -> None:
        table = "rebound_" + "".join(c if c.isalnum() else "_" for c in host)
        headers = {"Host": host.format(port=server.port)}

        status, body = post(server, f"CREATE TABLE {table} (x Int8) ENGINE = Memory", headers)

        assert status == 403
        assert "refused: this development server answers requests addressed to" in body and one_line(body)
        assert f"127.0.0.1:{server.port} or localhost:{server.port}" in body
        assert not exists(client, table)

    @pytest.mark.parametrize("host", ["127.0.0.1:{port}", "localhost:{port}", "LocalHost:{port}"])
    def test_the_loopback_host_is_answered(self, server: DevServer, host: str) -> None:
        assert post(server, "SELECT 1", {"Host": host.format(port=server.port)}) == (200, "1\n")


class TestGetOnlyReads:
    """GET runs only statements that read, as on a ClickHouse server: a link or an image cannot write."""

    def test_a_get_with_ddl_is_refused_and_creates_nothing(self, server: DevServer, client: Client) -> None:
        status, body = get(server, "CREATE TABLE from_get (x Int8) ENGINE = MergeTree ORDER BY x")

        assert status == 403
        assert body.startswith("Code: 164. DB::Exception: Cannot execute query in readonly mode: CREATE")
        assert "method GET implies readonly" in body and body.endswith("(READONLY)\n") and one_line(body)
        assert not exists(client, "from_get")

    @pytest.mark.parametrize(
        ("query", "code"),
        [
            ("INSERT INTO get_target VALUES (8)", 164),
            ("INSERT INTO get_target SELECT 8", 164),
            ("ALTER TABLE get_target DELETE WHERE 1 SETTINGS mutations_sync = 2", 164),
            ("TRUNCATE TABLE get_target", 164),
            ("DROP TABLE get_target", 164),
            ("RENAME TABLE get_target TO get_renamed", 164),
            ("SET max_threads = 1", 164),
            ("SYSTEM FLUSH LOGS", 164),
            ("SELECT 1; DROP TABLE get_target", 62),  # ClickHouse's HTTP interface runs one statement
        ],
        ids=[
            "insert",
            "insert-select",
            "alter",
            "truncate",
            "drop",
            "rename",
            "set",
            "system",
            "two-statements",
        ],
    )
    def test_a_get_that_writes_is_refused_and_changes_nothing(
        self, server: DevServer, client: Client, query: str, code: int
    ) -> None:
        client.command("CREATE TABLE IF NOT EXISTS get_target (x Int8) ENGINE = MergeTree ORDER BY x")
        client.command("TRUNCATE TABLE get_target")
        client.command("INSERT INTO get_target VALUES (7)")

        status, body = get(server, query)

        assert status == (403 if code == 164 else 500)
        assert body.startswith(f"Code: {code}. DB::Exception: ") and one_line(body)
        assert client.query("SELECT x FROM get_target").result_rows == [(7,)]

    @pytest.mark.parametrize(
        ("query", "answer"),
        [
            ("SELECT 40 + 2", "42\n"),
            ("WITH 2 AS x SELECT x * 3", "6\n"),
            ("SELECT 1 UNION ALL SELECT 2 ORDER BY 1", "1\n2\n"),
            ("EXISTS TABLE system.one", "1\n"),
            ("SHOW DATABASES LIKE 'system'", "system\n"),
            ("DESCRIBE TABLE system.one", "dummy\tUInt8\t\t\t\t\t\n"),
            ("SELECT count() FROM numbers(10) SETTINGS max_threads = 1", "10\n"),
        ],
    )
    def test_a_get_that_reads_is_answered(self, server: DevServer, query: str, answer: str) -> None:
        assert get(server, query) == (200, answer)


class TestNothingReachesOutside:
    """Table functions, engines, settings and clauses that reach files, URLs or servers are refused by name."""

    @pytest.mark.parametrize(
        ("query", "refused"),
        [
            ("SELECT * FROM file('/etc/passwd', 'LineAsString')", "file()"),
            ("SELECT file('/etc/hostname')", "file()"),
            ("SELECT * FROM `fi\\x6ce`('/etc/passwd', 'LineAsString')", "file()"),
            ("SELECT /* a */ * FROM file -- b\n ('/etc/passwd', 'LineAsString')", "file()"),
            ("SELECT * FROM url('http://127.0.0.1:9/', 'LineAsString')", "url()"),
            ("SELECT * FROM s3('http://127.0.0.1:9/bucket/key', 'LineAsString')", "s3()"),
            ("SELECT * FROM remote('127.0.0.1:9', system.one)", "remote()"),
            ("SELECT * FROM executable('id', 'TSV', 'line String')", "executable()"),
            ("SELECT * FROM postgresql('127.0.0.1:9', 'db', 't', 'u', 'p')", "postgresql()"),
            ("INSERT INTO FUNCTION file('/tmp/ev-devserver-written.tsv', 'TSV', 'x Int8') VALUES (1)", "file()"),
            ("SELECT 1 SETTINGS format_schema = '/etc/passwd'", "setting format_schema"),
            ("INSERT INTO t FROM INFILE '/etc/passwd' FORMAT LineAsString", "FROM INFILE"),
        ],
        ids=[
            "file", "file-scalar", "file-escaped", "file-commented", "url", "s3", "remote", "executable",
            "postgresql", "insert-into-file", "format-schema", "infile",
        ],
    )  # fmt: skip
    def test_a_query_that_reaches_out_is_refused_with_one_line_naming_it(
        self, server: DevServer, query: str, refused: str
    ) -> None:
        status, body = post(server, query)

        assert status == 403
        assert body.startswith(f"Code: 497. DB::Exception: {refused} is refused: ") and one_line(body)
        assert "root:" not in body

    @pytest.mark.parametrize(
        ("statement", "refused", "made"),
        [
            (
                "CREATE TABLE passwd (line String) ENGINE = File(LineAsString, '/etc/passwd')",
                "File()",
                "passwd",
            ),
            (
                "CREATE TABLE web (line String) ENGINE = URL('http://127.0.0.1:9/', LineAsString)",
                "URL()",
                "web",
            ),
            ("CREATE TABLE far AS remote('127.0.0.1:9', system.one)", "remote()", "far"),
            (
                "CREATE TABLE on_disk (x Int8) ENGINE = MergeTree ORDER BY x "
                "SETTINGS disk = disk(type = local, path = '/tmp/ev-devserver-disk/')",
                "disk()",
                "on_disk",
            ),
            (
                "CREATE DICTIONARY lines (line String) PRIMARY KEY line "
                "SOURCE(HTTP(url 'http://127.0.0.1:9/' format 'TSV')) LAYOUT(HASHED()) LIFETIME(0)",
                "CREATE DICTIONARY",
                "lines",
            ),
        ],
        ids=["file-engine", "url-engine", "remote-table", "dynamic-disk", "dictionary"],
    )
    def test_a_table_that_reaches_out_is_refused_and_not_made(
        self, server: DevServer, client: Client, statement: str, refused: str, made: str
    ) -> None:
        status, body = post(server, statement)

        assert status == 403
        assert body.startswith(f"Code: 497. DB::Exception: {refused} is refused: ") and one_line(body)
        assert not exists(client, made)

    def test_a_filesystem_database_is_refused_and_not_made(self, server: DevServer, client: Client) -> None:
        status, body = post(server, "CREATE DATABASE etc ENGINE = Filesystem('/etc')")

        assert status == 403 and "Filesystem() is refused" in body and one_line(body)
        assert client.command("EXISTS DATABASE etc") == 0

    def test_into_outfile_is_refused_and_writes_nothing(self, server: DevServer, tmp_path: Path) -> None:
        target = tmp_path / "out.tsv"

        status, body = post(server, f"SELECT 42 INTO OUTFILE '{target}'")

        assert status == 403
        assert body.startswith("Code: 497. DB::Exception: INTO OUTFILE is refused: ") and one_line(body)
        assert not target.exists()

    def test_clickhouse_connect_reports_the_refusal(self, client: Client) -> None:
        with pytest.raises(
            DatabaseError, match=r"file\(\) is refused: it reaches files, URLs or other servers"
        ):
            client.query("SELECT * FROM file('/etc/passwd', 'LineAsString')")


class TestPassword:
    """Queries need the password made at start, which the printed URL carries."""

    def test_the_printed_url_carries_a_password(self, server: DevServer) -> None:
        parts = urlsplit(server.url)

        assert parts.username == "default" and len(password(server)) >= 20
        assert (parts.hostname, parts.port, parts.path) == ("127.0.0.1", server.port, "/default")

    def test_a_query_without_the_password_is_refused_and_runs_nothing(
        self, server: DevServer, client: Client
    ) -> None:
        status, body = post(server, "CREATE TABLE no_password (x Int8) ENGINE = Memory", auth=False)

        assert status == 401
        assert body.startswith("Code: 194. DB::Exception: Authentication failed: a password is required")
        assert "use the CLICKHOUSE_URL that serve_clickhouse printed" in body and one_line(body)
        assert not exists(client, "no_password")

    @pytest.mark.parametrize("how", ["basic auth", "headers", "URL parameters", "another user"])
    def test_a_wrong_password_is_refused_and_runs_nothing(
        self, server: DevServer, client: Client, how: str
    ) -> None:
        wrong = password(server)[:-1] + ("x" if not password(server).endswith("x") else "y")
        table = "wrong_" + how.replace(" ", "_")
        statement = f"CREATE TABLE {table} (x Int8) ENGINE = Memory"
        if how == "basic auth":
            status, body = send(server, "POST", "/", statement, basic("default", wrong))
        elif how == "headers":
            status, body = send(
                server, "POST", "/", statement, {"X-ClickHouse-User": "default", "X-ClickHouse-Key": wrong}
            )
        elif how == "URL parameters":
            status, body = send(
                server, "POST", "/?" + urlencode({"user": "default", "password": wrong}), statement
            )
        else:
            status, body = send(server, "POST", "/", statement, basic("admin", password(server)))

        assert status == 403
        assert body.startswith(
            "Code: 516. DB::Exception: Authentication failed: password is incorrect"
        ) and one_line(body)
        assert not exists(client, table)

    @pytest.mark.parametrize("how", ["basic auth", "headers", "URL parameters"])
    def test_the_password_is_taken_the_ways_clickhouse_takes_it(self, server: DevServer, how: str) -> None:
        secret = password(server)
        if how == "basic auth":
            answer = send(server, "POST", "/", "SELECT 1", basic("default", secret))
        elif how == "headers":
            answer = send(
                server, "POST", "/", "SELECT 1", {"X-ClickHouse-User": "default", "X-ClickHouse-Key": secret}
            )
        else:
            answer = send(
                server, "POST", "/?" + urlencode({"user": "default", "password": secret}), "SELECT 1"
            )

        assert answer == (200, "1\n")

    def test_clickhouse_connect_with_a_wrong_password_is_told_so(self, server: DevServer) -> None:
        url = server.url.replace(f":{password(server)}@", ":wrong@")

        with pytest.raises(DatabaseError, match="Authentication failed"):
            clickhouse_connect.get_client(dsn=url).command("SELECT 1")

    def test_health_checks_need_no_password(self, server: DevServer) -> None:
        assert send(server, "GET", "/ping", headers={"Host": f"127.0.0.1:{server.port}"}) == (200, "Ok.\n")


class TestProjectTraffic:
    """The project's own store works through the printed URL: inserts, schema DDL, index tables, reads."""

    def test_the_store_writes_and_reads_through_the_printed_url(
        self, server: DevServer, settings: Any
    ) -> None:
        # Searches go through the approximate-search tables too: materialized views, a
        # vector_similarity index, ALTER ... MATERIALIZE INDEX, inserts with SETTINGS.
        settings.ENTITY_VECTORS_APPROXIMATE_SEARCH_MIN_ROWS = 1
        assert password(server)
        rows = [
            EmbeddingRow("action", 1, "1", [1.0, 0.0], "one", json.dumps({"name": "one"}), 1, T0, 1),
            EmbeddingRow("action", 1, "2", [0.0, 1.0], "two", json.dumps({"name": "two"}), 1, T0, 2),
            EmbeddingRow("action", 2, "3", [1.0, 0.0], "three", json.dumps({"name": "three"}), 1, T0, 3),
        ]
        store = open_store(server.url, "guarded_embeddings")
        try:
            store.ensure_schema()
            assert store.insert(rows) == 3
            hits = store.search("action", 1, [0.9, 0.1], 5, 1)
            again = store.search("action", 1, [0.1, 0.9], 5, 1)
            latest = store.latest_rows("action")
            store.truncate()
            emptied = store.count_rows("action")
        finally:
            store.close()

        assert [hit.id for hit in hits] == ["1", "2"] and hits[0].properties["name"] == "one"
        assert [hit.id for hit in again] == ["2", "1"]
        assert sorted((row.team_id, row.id) for row in latest) == [(1, "1"), (1, "2"), (2, "3")]
        assert emptied == 0

    def test_clickhouse_connect_inserts_native_blocks(self, client: Client) -> None:
        client.command(
            "CREATE TABLE IF NOT EXISTS native_rows (id String, v Array(Float32)) ENGINE = MergeTree ORDER BY id"
        )
        client.command("TRUNCATE TABLE native_rows")

        summary = client.insert("native_rows", [["a", [1.0, 2.0]], ["b", []]], column_names=["id", "v"])

        assert summary.written_rows == 2
        assert client.query("SELECT id, v FROM native_rows ORDER BY id").result_rows == [
            ("a", [1.0, 2.0]),
            ("b", []),
        ]
