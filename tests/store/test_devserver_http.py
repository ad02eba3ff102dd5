"""Tests for the test-only ClickHouse HTTP server, driven by the real clickhouse-connect client."""

from __future__ import annotations

import multiprocessing
import re
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import unquote, urlencode, urlsplit

import clickhouse_connect
import numpy as np
import pytest
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import DatabaseError

from entity_vectors.store.base import COLUMNS as STORE_COLUMNS
from entity_vectors.store.base import CREATE_TABLE, EmbeddingRow
from entity_vectors.store.rowbinary import PartsReader, row_binary, row_binary_parts
from tests.support.clickhouse_http import start_subprocess, stop_subprocess

COLUMNS = list(STORE_COLUMNS)
DIM = 1536


def create_table_sql(table: str = "pg_embeddings") -> str:
    """The project's embeddings table DDL, under a chosen name so tests stay independent."""
    return CREATE_TABLE.replace("{table}", table)


def make_client(url: str) -> Client:
    """A client configured the way the project would configure it (default compression)."""
    return clickhouse_connect.get_client(dsn=url)


@pytest.fixture(scope="module")
def server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One server subprocess shared by the module's tests."""
    proc, url = start_subprocess(str(tmp_path_factory.mktemp("chdb")))
    try:
        yield url
    finally:
        stop_subprocess(proc)
    assert proc.returncode == 0


@pytest.fixture
def client(server_url: str) -> Client:
    """A fresh client against the shared server."""
    return make_client(server_url)


def test_connects_with_explicit_arguments_and_answers_health_checks(server_url: str) -> None:
    parts = urlsplit(server_url)
    port, password = parts.port, unquote(parts.password or "")
    client = clickhouse_connect.get_client(
        host="127.0.0.1", port=port, username="default", password=password, database="default"
    )
    assert client.server_version is not None and client.server_version.count(".") >= 2
    assert client.command("SELECT 1") == 1
    assert client.command("SELECT currentDatabase()") == "default"
    assert client.ping()
    base = f"http://127.0.0.1:{port}"
    for path in ("/ping", "/"):
        with urllib.request.urlopen(base + path, timeout=5) as response:
            assert response.read() == b"Ok.\n"
    credentials = urlencode({"user": "default", "password": password})
    with urllib.request.urlopen(f"{base}/?query=SELECT%2040%2B2&{credentials}", timeout=5) as response:
        assert response.read() == b"42\n"


def test_create_table_is_idempotent(client: Client) -> None:
    client.command(create_table_sql())
    client.command(create_table_sql())
    types = {row[0]: row[1] for row in client.query("DESCRIBE TABLE pg_embeddings").result_rows}
    assert types["vector"] == "Array(Float32)"
    assert types["timestamp"] == "DateTime64(6, 'UTC')"
    assert types["version"] == "UInt64"
    engine = client.command("SELECT engine_full FROM system.tables WHERE name = 'pg_embeddings'")
    assert str(engine).startswith("ReplacingMergeTree(version, is_deleted)")
    assert client.command("EXISTS TABLE pg_embeddings") == 1


def test_insert_10000_vectors_and_read_them_back(client: Client) -> None:
    client.command(create_table_sql("bulk"))
    vectors = np.random.default_rng(7).standard_normal((10_000, DIM), dtype=np.float32)
    now = datetime.now(UTC)
    rows = [
        ["pg", 1, f"id-{i:05d}", vectors[i].tolist(), f"text {i}", '{"k": 1}', 3, now, 10_000 + i, 0]
        for i in range(10_000)
    ]
    summary = client.insert("bulk", rows, column_names=COLUMNS)
    assert summary.written_rows == 10_000
    assert client.command("SELECT count() FROM bulk") == 10_000
    picks = [0, 1, 4_321, 9_999]
    result = client.query(
        "SELECT id, vector, text, embedding_version, timestamp, version FROM bulk"
        " WHERE id IN {ids:Array(String)} ORDER BY id",
        parameters={"ids": [f"id-{i:05d}" for i in picks]},
    )
    assert [row[0] for row in result.result_rows] == [f"id-{i:05d}" for i in picks]
    for i, row in zip(picks, result.result_rows, strict=True):
        np.testing.assert_array_equal(np.asarray(row[1], dtype=np.float32), vectors[i])
        assert row[2] == f"text {i}" and row[3] == 3
        assert abs(row[4].replace(tzinfo=UTC) - now) < timedelta(microseconds=1)
        assert row[5] == 10_000 + i
    every = client.query("SELECT vector FROM bulk ORDER BY id").result_rows
    np.testing.assert_array_equal(np.asarray([row[0] for row in every], dtype=np.float32), vectors)


def test_server_side_parameters_of_each_type(client: Client) -> None:
    name = 'O\'Brien — 東京 \\ \t "quoted"'
    vector = [0.1, -2.5, 3.25e-8]
    row = client.query(
        "SELECT {s:String} AS s, toTypeName(s), {i:Int64} AS i, {v:Array(Float32)} AS v,"
        " {u8:UInt8}, {u32:UInt32}, {f64:Float64}, {ts:DateTime64(6, 'UTC')}, {n:Nullable(Int64)},"
        " {lc:LowCardinality(String)}",
        parameters={
            "s": name, "i": -(2**62), "v": vector, "u8": 255, "u32": 4_000_000_000, "f64": 0.1,
            "ts": datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=UTC), "n": None, "lc": "pg",
        },
    ).result_rows[0]  # fmt: skip
    assert row[:3] == (name, "String", -(2**62))
    np.testing.assert_array_equal(np.asarray(row[3], dtype=np.float32), np.asarray(vector, dtype=np.float32))
    assert row[4:7] == (255, 4_000_000_000, 0.1)
    assert row[7].replace(tzinfo=UTC) == datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)
    assert row[8] is None and row[9] == "pg"
    # Client-side %(name)s binding inlines literals instead of sending param_ values.
    assert client.query("SELECT %(s)s, %(i)s", parameters={"s": name, "i": 7}).result_rows == [(name, 7)]


def test_parameters_filter_table_rows(client: Client) -> None:
    client.command(create_table_sql("params"))
    now = datetime.now(UTC)
    client.insert(
        "params",
        [
            ["pg", 5, "O'Brien — 東京", [1.0] * 4, "a", "{}", 1, now, 1, 0],
            ["pg", 6, "other", [2.0] * 4, "b", "{}", 1, now, 1, 0],
        ],
        column_names=COLUMNS,
    )
    rows = client.query(
        "SELECT id, team_id, text FROM params"
        " WHERE team_id = {team:Int64} AND id = {id:String} AND domain = {d:String}",
        parameters={"team": 5, "id": "O'Brien — 東京", "d": "pg"},
    ).result_rows
    assert rows == [("O'Brien — 東京", 5, "a")]


def test_latest_version_with_argmax_and_final(client: Client) -> None:
    client.command(create_table_sql("versions"))
    early = datetime(2024, 1, 1, tzinfo=UTC)
    late = early + timedelta(hours=1)
    key = ["pg", 1, "doc"]
    # The row version decides, not the timestamp: the newer version carries the earlier time.
    client.insert("versions", [[*key, [1.0, 0.0], "old", "{}", 1, late, 1, 0]], column_names=COLUMNS)
    client.insert("versions", [[*key, [0.0, 1.0], "new", "{}", 1, early, 2, 0]], column_names=COLUMNS)
    client.insert("versions", [["pg", 1, "gone", [1.0, 1.0], "x", "{}", 1, late, 1, 0]], column_names=COLUMNS)
    client.insert("versions", [["pg", 1, "gone", [], "", "{}", 1, early, 2, 1]], column_names=COLUMNS)
    assert client.command("SELECT count() FROM versions") == 4
    latest = client.query(
        "SELECT id, argMax(text, version), argMax(vector, version), argMax(is_deleted, version), max(version)"
        " FROM versions WHERE team_id = {team:Int64} GROUP BY id ORDER BY id",
        parameters={"team": 1},
    ).result_rows
    assert latest == [("doc", "new", [0.0, 1.0], 0, 2), ("gone", "", [], 1, 2)]
    final = client.query(
        "SELECT id, text, version FROM versions FINAL ORDER BY id SETTINGS max_threads = 1"
    ).result_rows
    assert final == [("doc", "new", 2)]  # FINAL keeps the highest version and drops is_deleted rows


def test_row_binary_inserts_as_the_server_store_sends_them(client: Client) -> None:
    client.command(create_table_sql("rowbinary"))
    vectors = np.random.default_rng(11).standard_normal((3, DIM), dtype=np.float32)
    moment = datetime(2025, 1, 15, 12, 0, 0, 123_457, tzinfo=UTC)
    rows = [
        EmbeddingRow(
            "pg", -7, "東京-'1'", vectors[0], "O'Brien \\ \t", '{"name": "a"}', 2, moment, 2**63 + 5
        ),
        EmbeddingRow("pg", 8, "b", vectors[1].tolist(), "", "{}", 1, moment, 1),
        EmbeddingRow("pg", 8, "c", [], "", "", 1, moment, 3, is_deleted=1),
    ]

    client.raw_insert("rowbinary", COLUMNS, insert_block=row_binary(rows), fmt="RowBinary")

    stored = client.query(
        "SELECT domain, team_id, id, vector, text, properties, embedding_version, timestamp, version, is_deleted"
        " FROM rowbinary ORDER BY team_id, id"
    ).result_rows
    assert [row[:3] for row in stored] == [("pg", -7, "東京-'1'"), ("pg", 8, "b"), ("pg", 8, "c")]
    np.testing.assert_array_equal(np.asarray(stored[0][3], dtype=np.float32), vectors[0])
    np.testing.assert_array_equal(np.asarray(stored[1][3], dtype=np.float32), vectors[1])
    assert stored[2][3] == []
    assert [row[4:7] for row in stored] == [("O'Brien \\ \t", '{"name": "a"}', 2), ("", "{}", 1), ("", "", 1)]
    assert {row[7].replace(tzinfo=UTC) for row in stored} == {moment}
    assert [row[8:] for row in stored] == [(2**63 + 5, 0), (1, 0), (3, 1)]


def test_a_streamed_body_sends_every_row_and_rewinds_whole(client: Client) -> None:
    client.command(create_table_sql("streamed"))
    vectors = np.random.default_rng(12).standard_normal((50, DIM), dtype=np.float32)
    moment = datetime(2025, 1, 15, 12, 0, 0, tzinfo=UTC)
    rows = [EmbeddingRow("pg", 1, f"e{i}", vectors[i], f"text {i}", "{}", 1, moment, i + 1) for i in range(50)]
    statement = f"INSERT INTO streamed ({', '.join(COLUMNS)}) FORMAT RowBinary\n".encode()
    expected = row_binary(rows, prefix=statement)

    body = PartsReader(row_binary_parts(rows, prefix=statement))
    first = body.read(1000)
    body.seek(0)  # what urllib3 does before it sends a body again on a retried connection
    assert body.size == len(expected)
    assert first + body.read()[1000:] == expected
    body.seek(0)

    client.raw_insert(None, insert_block=body, transport_settings={"Content-Length": str(body.size)})

    stored = client.query("SELECT id, vector FROM streamed ORDER BY version").result_rows
    assert [row[0] for row in stored] == [f"e{i}" for i in range(50)]
    np.testing.assert_array_equal(np.asarray([row[1] for row in stored], dtype=np.float32), vectors)


def test_cosine_distance_order_with_vector_parameter(client: Client) -> None:
    client.command(create_table_sql("search"))
    basis = np.eye(4, DIM, dtype=np.float32)
    now = datetime.now(UTC)
    rows = [["pg", 9, f"e{i}", basis[i].tolist(), f"t{i}", "{}", 1, now, 1, 0] for i in range(4)]
    client.insert("search", rows, column_names=COLUMNS)
    query = (
        basis[2] + 0.5 * basis[1] + 0.1 * basis[0]
    ).tolist()  # 1536 floats: too long for the URL, sent as form data
    result = client.query(
        "SELECT id, cosineDistance(vector, {q:Array(Float32)}) AS distance FROM search FINAL"
        " WHERE team_id = {team:Int64} ORDER BY distance LIMIT 3 SETTINGS max_threads = 2",
        parameters={"q": query, "team": 9},
    ).result_rows
    assert [row[0] for row in result] == ["e2", "e1", "e0"]
    assert result[0][1] == pytest.approx(1 - 1 / np.sqrt(1.26), abs=1e-6)


def test_errors_raise_database_error_with_clickhouse_message(client: Client) -> None:
    with pytest.raises(DatabaseError, match="Syntax error") as syntax:
        client.query("SELEC 1")
    assert syntax.value.code == 62
    with pytest.raises(DatabaseError, match="UNKNOWN_TABLE"):
        client.command("SELECT * FROM no_such_table")
    with pytest.raises(DatabaseError, match="does not exist"):
        client.insert("no_such_table", [[1]], column_names=["a"])
    assert client.command("SELECT 2") == 2  # the server is still healthy


def test_per_request_settings_do_not_leak(client: Client) -> None:
    setting = "SELECT value FROM system.settings WHERE name = 'max_threads'"
    assert client.command(setting, settings={"max_threads": 3}) == 3
    assert client.command(setting) != 3


def test_threads_with_own_clients_see_only_their_own_parameters(server_url: str) -> None:
    def run(worker: int) -> list[tuple[object, ...]]:
        thread_client = make_client(server_url)
        query = "SELECT {n:Int64}, {s:String} SETTINGS max_threads = {t:UInt64}"
        rows = []
        for i in range(10):
            params = {"n": worker * 100 + i, "s": f"w{worker}", "t": 1 + i % 3}
            rows.append(tuple(thread_client.query(query, parameters=params).result_rows[0]))
        return rows

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(run, range(8)))
    assert results == [[(w * 100 + i, f"w{w}") for i in range(10)] for w in range(8)]


def _insert_worker(url: str, worker: int, batches: int, per_batch: int) -> int:
    """Insert rows from a separate process (spawned), interleaving reads, and return the rows sent."""
    client = make_client(url)
    now = datetime.now(UTC)
    for batch in range(batches):
        rows = [
            ["pg", worker, f"w{worker}-{batch}-{i}", [float(i)] * 8, "t", "{}", 1, now, 1, 0]
            for i in range(per_batch)
        ]
        client.insert("concurrent", rows, column_names=COLUMNS)
        client.query("SELECT count() FROM concurrent WHERE team_id = {w:Int64}", parameters={"w": worker})
    return batches * per_batch


def test_concurrent_inserts_from_several_processes(client: Client, server_url: str) -> None:
    client.command(create_table_sql("concurrent"))
    workers, batches, per_batch = 3, 15, 40
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        sent = pool.starmap(_insert_worker, [(server_url, w, batches, per_batch) for w in range(workers)])
    assert sent == [batches * per_batch] * workers
    counts = client.query(
        "SELECT team_id, count(), uniqExact(id) FROM concurrent GROUP BY team_id ORDER BY team_id"
    )
    assert counts.result_rows == [(w, batches * per_batch, batches * per_batch) for w in range(workers)]


def test_data_persists_across_clean_restarts(tmp_path: Path) -> None:
    proc, url = start_subprocess(str(tmp_path))
    try:
        client = make_client(url)
        client.command(create_table_sql())
        client.insert(
            "pg_embeddings",
            [["pg", 1, "a", [1.0], "t", "{}", 1, datetime.now(UTC), 1, 0]],
            column_names=COLUMNS,
        )
    finally:
        stop_subprocess(proc)  # SIGTERM
    assert proc.returncode == 0
    proc, url = start_subprocess(str(tmp_path))
    try:
        assert make_client(url).command("SELECT count() FROM pg_embeddings") == 1
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=15) == 0
    finally:
        stop_subprocess(proc)


def test_start_subprocess_reports_failure(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(RuntimeError, match="did not start"):
        start_subprocess(str(blocker / "data"), timeout=20)


def test_cli_prints_exactly_one_ready_line_and_exits_on_sigterm(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.support.clickhouse_http", "--path", str(tmp_path), "--port", "0"],
        cwd=root,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert re.fullmatch(r"READY http://default:[A-Za-z0-9_-]{20,}@127\.0\.0\.1:\d+/default\n", line)
        assert make_client(line.split()[1]).command("SELECT 1") == 1
        proc.terminate()
        rest, _ = proc.communicate(timeout=15)
    finally:
        stop_subprocess(proc)
    assert rest == "" and proc.returncode == 0
