"""A run with nothing to do costs O(changes): a few indexed queries, no full scan, no ClickHouse read."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from entity_vectors import conf
from entity_vectors.models import SyncRun
from entity_vectors.store import EmbeddingStore, close_store, get_store
from entity_vectors.store.devserver import ClickHouseHTTPAdapter
from tests.conftest import run_workflow
from tests.factories import make_action, make_team

pytestmark = pytest.mark.django_db

HOST_TABLES = ("app_action", "app_team", "app_organization")


@pytest.fixture
def clickhouse(settings: Any, offline: None) -> Iterator[ClickHouseHTTPAdapter]:
    """This process's ClickHouse served over HTTP, so that the test can read its statements.

    chdb opens one data directory per process: the embedded store lets go of it, the adapter
    serves it for the test, and the store opens it again afterwards.
    """
    close_store()
    adapter = ClickHouseHTTPAdapter(conf.clickhouse_target().path).start()
    settings.CLICKHOUSE_URL = adapter.url
    try:
        get_store().truncate()
        adapter.statements.clear()
        yield adapter
    finally:
        close_store()
        adapter.stop()


def full_scans(sql: str) -> list[str]:
    """The host tables `sql` can only read whole (sequential scans even with them made costly)."""
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_seqscan = off")
        cursor.execute(f"EXPLAIN {sql}")
        plan = "\n".join(row[0] for row in cursor.fetchall())
    return [table for table in HOST_TABLES if f"Seq Scan on {table}" in plan]


def no_op_run() -> tuple[SyncRun, list[str]]:
    with CaptureQueriesContext(connection) as captured:
        run = run_workflow("action")
    return run, [query["sql"] for query in captured.captured_queries]


@pytest.mark.skipif(connection.vendor != "postgresql", reason="query plans are PostgreSQL's")
def test_a_no_op_run_sends_indexed_queries_only_and_no_clickhouse_read(clickhouse: ClickHouseHTTPAdapter) -> None:
    team = make_team()
    for index in range(30):
        make_action(team, name=f"Steady action {index}")
    assert run_workflow("action").inserted == 30
    store: EmbeddingStore = get_store()
    clickhouse.statements.clear()

    run, queries = no_op_run()

    assert (run.selected, run.provider_requests, run.inserted) == (0, 0, 0)
    host_reads = [sql for sql in queries if sql.lstrip().upper().startswith("SELECT") and "app_" in sql]
    assert host_reads  # the consent probe reads the teams
    for sql in host_reads:
        assert full_scans(sql) == [] or full_scans(sql) == ["app_team"], sql
    assert list(clickhouse.statements) == []  # not one ClickHouse statement
    assert store.count_rows("action") == 30

    # Ten times the entities: the same number of queries.
    for index in range(270):
        make_action(team, name=f"Later action {index}")
    assert run_workflow("action").inserted == 270
    _, again = no_op_run()
    assert len(again) == len(queries)


def _first_sync_statements(team: Any, entities: int, name: str) -> tuple[SyncRun, list[str]]:
    for index in range(entities):
        make_action(team, name=f"{name} {index}")
    with CaptureQueriesContext(connection) as captured:
        run = run_workflow("action", summarize_batch_size=64, embed_batch_size=64)
    return run, [query["sql"] for query in captured.captured_queries]


def test_a_batch_costs_the_same_statements_whatever_its_size(
    offline: None, embedded_store: EmbeddingStore
) -> None:
    """A run of one batch: 8 entities or 64, the same statements (reads by key, one write per table)."""
    team = make_team()
    _first_sync_statements(team, 1, "First")  # what only a domain's first run does
    small, small_queries = _first_sync_statements(team, 8, "Small")
    large, large_queries = _first_sync_statements(team, 64, "Large")
    assert (small.inserted, large.inserted) == (8, 64)
    assert len(large_queries) == len(small_queries), "\n".join(large_queries)
    # Without a Batch API job or a failure count there is nothing to read or clear of them.
    assert not [
        sql
        for sql in large_queries
        if "batchapirequest" in sql or ("DELETE" in sql and "entityfailure" in sql)
    ]
