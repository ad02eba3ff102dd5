"""`manage.py serve_clickhouse`: one process owns the embedded ClickHouse and serves it to the others."""

from __future__ import annotations

import base64
import http.client
import json
import re
import socket
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from entity_vectors.store import EmbeddingRow, open_store
from entity_vectors.store.devserver_http import client_url, is_loopback
from tests.support.devserver import DevServer, manage, start_devserver
from tests.support.processes import free_port

T0 = datetime(2025, 1, 15, 12, 0, tzinfo=UTC)








def host_answer(server: DevServer, host: str) -> int:
    """The status of an authenticated `SELECT 1` sent to the server with this Host header."""
    parts = urlsplit(server.url)
    token = base64.b64encode(f"default:{unquote(parts.password or '')}".encode()).decode()
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        connection.request(
            "POST", "/", body=b"SELECT 1", headers={"Host": host, "Authorization": f"Basic {token}"}
        )
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()




@pytest.fixture
def devserver(tmp_path: Path) -> Iterator[DevServer]:
    """A dev server on a free port with a new data directory."""
    server = start_devserver(tmp_path / "clickhouse")
    try:
        yield server
    finally:
        server.stop()


def row(entity_id: str, vector: list[float], team_id: int = 1) -> EmbeddingRow:
    """One live row of the vectors table."""
    return EmbeddingRow(
        domain="action",
        team_id=team_id,
        id=entity_id,
        vector=vector,
        text=f"text of {entity_id}",
        properties=json.dumps({"name": f"name {entity_id}"}),
        embedding_version=1,
        timestamp=T0,
        version=1,
    )


class TestServeClickhouse:
    """Other processes reach the embedded engine through it, with the project's own store."""

    def test_a_clickhouse_connect_store_writes_and_reads_through_it(self, devserver: DevServer) -> None:
        store = open_store(devserver.url, "pg_embeddings")
        try:
            store.ensure_schema()
            assert (
                store.insert([row("1", [1.0, 0.0]), row("2", [0.0, 1.0]), row("3", [1.0, 0.0], team_id=2)])
                == 3
            )

            hits = store.search("action", 1, [0.9, 0.1], 5, 1)
            rows = store.latest_rows("action")
        finally:
            store.close()
        assert [hit.id for hit in hits] == ["1", "2"]
        assert hits[0].properties["name"] == "name 1" and hits[0].distance < hits[1].distance
        assert sorted((item.team_id, item.id) for item in rows) == [(1, "1"), (1, "2"), (2, "3")]
        second = open_store(devserver.url, "pg_embeddings")  # another client sees the same data
        try:
            assert second.count_rows("action") == 3
        finally:
            second.close()

    def test_the_banner_says_it_is_for_development_and_prints_the_url(self, devserver: DevServer) -> None:
        out, err = devserver.stop()

        assert devserver.process.returncode == 0, err
        assert "FOR DEVELOPMENT ONLY" in out
        assert "password" in out and "web pages" in out and "files or other servers" in out
        assert re.fullmatch(
            rf"  CLICKHOUSE_URL=http://default:[A-Za-z0-9_-]{{20,}}@127\.0\.0\.1:{devserver.port}/default",
            out.splitlines()[3],
        )
        assert str(devserver.data) in out
        assert "WARNING" not in out  # loopback only

    def test_each_start_has_a_new_password_and_password_fixes_one(self, tmp_path: Path) -> None:
        first = start_devserver(tmp_path / "ch")
        first.stop()
        second = start_devserver(tmp_path / "ch")
        second.stop()
        fixed = start_devserver(tmp_path / "ch", "--password", "s3cret/with:odd@chars")
        try:
            store = open_store(fixed.url, "pg_embeddings")
            try:
                store.ensure_schema()
                assert store.count_rows("action") == 0
            finally:
                store.close()
        finally:
            fixed.stop()

        assert first.url != second.url
        assert fixed.url == f"http://default:s3cret%2Fwith%3Aodd%40chars@127.0.0.1:{fixed.port}/default"

    def test_a_process_opening_the_directory_as_chdb_reaches_it_through_the_server(
        self, devserver: DevServer
    ) -> None:
        store = open_store(f"chdb://{devserver.data}", "pg_embeddings")
        try:
            store.ensure_schema()
            assert store.count_rows("action") == 0
            assert store.where == "the engine of another process, over loopback"
        finally:
            store.close()

    def test_a_second_server_on_the_same_directory_fails_in_one_line(self, devserver: DevServer) -> None:
        second = manage("serve_clickhouse", "--data", str(devserver.data), "--port", str(free_port()))
        _, err = second.communicate(timeout=60)

        assert second.returncode == 1
        assert err.startswith("CommandError: ") and len(err.strip().splitlines()) == 1, err
        assert f"in use by another process (pid {devserver.process.pid})" in err

    def test_a_port_in_use_fails_in_one_line(self, tmp_path: Path) -> None:
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            process = manage("serve_clickhouse", "--data", str(tmp_path / "ch"), "--port", str(port))
            _, err = process.communicate(timeout=60)

        assert process.returncode == 1
        assert err.startswith("CommandError: ") and len(err.strip().splitlines()) == 1, err
        assert f"cannot listen on 127.0.0.1:{port}: the address is already in use" in err


class TestRemoteAccess:
    """Loopback unless the user insists: the password crosses the network in clear text."""

    @pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.10"])
    def test_a_non_loopback_host_is_refused_without_allow_remote(self, host: str, tmp_path: Path) -> None:
        with pytest.raises(CommandError, match="--allow-remote") as caught:
            call_command("serve_clickhouse", "--data", str(tmp_path / "ch"), "--host", host, "--port", "0")

        assert f"--host {host} is not a loopback address" in str(caught.value)
        assert "clear text" in str(caught.value)
        assert not (tmp_path / "ch").exists()  # refused before touching anything

    def test_an_empty_password_is_refused(self, tmp_path: Path) -> None:
        with pytest.raises(CommandError, match="--password must not be empty"):
            call_command("serve_clickhouse", "--data", str(tmp_path / "ch"), "--password", "", "--port", "0")

        assert not (tmp_path / "ch").exists()

    def test_allow_remote_serves_and_warns(self, tmp_path: Path) -> None:
        server = start_devserver(tmp_path / "ch", "--host", "0.0.0.0", "--allow-remote")
        try:
            # Other machines address it by IP: a DNS name is what a rebinding page would send.
            by_address = host_answer(server, f"192.0.2.10:{server.port}")
            by_name = host_answer(server, f"my-laptop.example:{server.port}")
        finally:
            out, err = server.stop()

        assert by_address == 200 and by_name == 403

        assert server.process.returncode == 0, err
        assert "WARNING: listening on 0.0.0.0" in out
        assert f"CLICKHOUSE_URL={server.url}" in out
        assert server.url.endswith(f"@127.0.0.1:{server.port}/default")

    @pytest.mark.parametrize(
        ("host", "loopback"),
        [("127.0.0.1", True), ("127.0.0.2", True), ("::1", True), ("localhost", True), ("0.0.0.0", False)],
    )
    def test_loopback_addresses(self, host: str, loopback: bool) -> None:
        assert is_loopback(host) is loopback

    def test_the_url_for_a_wildcard_address_is_loopback(self) -> None:
        assert client_url("0.0.0.0", 8123, "pw") == "http://default:pw@127.0.0.1:8123/default"
        assert client_url("::1", 8123, "p/w") == "http://default:p%2Fw@[::1]:8123/default"


class TestWithoutChdb:
    """Without the embedded extra the error names it."""

    def test_the_error_names_the_embedded_extra(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setitem(sys.modules, "chdb", None)  # `import chdb` now raises ImportError

        with pytest.raises(CommandError, match=r"chdb\) is not installed") as caught:
            call_command("serve_clickhouse", "--data", str(tmp_path / "ch"), "--port", "0")

        assert "'embedded' extra" in str(caught.value) and "entity-vectors[embedded]" in str(caught.value)
        assert not (tmp_path / "ch").exists()
