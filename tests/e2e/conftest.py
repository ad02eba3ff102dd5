"""Real worker processes on Redis, the test PostgreSQL database, ClickHouse over HTTP, the fake OpenAI."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from django.db import connection

from app.celery import app as celery_app
from entity_vectors.models import SyncRun
from entity_vectors.store import EmbeddingStore
from tests.conftest import TEST_API_KEY
from tests.support.openai_server import OpenAIServer
from tests.support.processes import Service, start_celery, wait_until

WORKER_NODES = ("worker1", "worker2")


@pytest.fixture(scope="session")
def service_env(
    django_db_setup: Any,
    django_db_blocker: Any,
    openai_server: OpenAIServer,
    clickhouse_http_url: str,
    redis_client: redis.Redis,
) -> dict[str, str]:
    """The environment every Celery process of the tests runs with."""
    with django_db_blocker.unblock():
        settings_dict = connection.settings_dict
        database = f"postgres://{settings_dict['USER']}@{settings_dict['HOST']}:{settings_dict['PORT']}/{settings_dict['NAME']}"
    return {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "DATABASE_URL": database,
        "CLICKHOUSE_URL": clickhouse_http_url,
        "ENTITY_VECTORS_EXECUTION": "distributed",
        # As in production: a worker's flush sends a pass for an entity edited while it held it,
        # and beat's poll (where a test runs beat) sends those of writes no signal saw.
        "ENTITY_VECTORS_FAST_LANE": "true",
        # Worker processes keep their database connections between tasks, as in production.
        "DATABASE_CONN_MAX_AGE": "60",
        "OPENAI_API_KEY": TEST_API_KEY,
        "OPENAI_BASE_URL": openai_server.base_url,
        "ENTITY_VECTORS_SUMMARIZER": "openai",
        "ENTITY_VECTORS_EMBEDDER": "openai",
        "ENTITY_VECTORS_EMBEDDING_DIMENSIONS": "256",
        "ENTITY_VECTORS_PROVIDER_MAX_RETRIES": "1",
        "ENTITY_VECTORS_PROVIDER_TIMEOUT": "5",
        "ENTITY_VECTORS_PROVIDER_MAX_BACKOFF": "0.05",
        "ENTITY_VECTORS_TASK_RETRY_BACKOFF": "0.1",
        "ENTITY_VECTORS_TASK_MAX_RETRIES": "1",
        "ENTITY_VECTORS_LOG_LEVEL": "INFO",
        # Short hops, so that delay_between_batches exercises re-deferral instead of long ETAs.
        "ENTITY_VECTORS_MAX_COUNTDOWN": "1",
        # Staged rows go in after a second at most, so that a run of a few seconds flushes as it goes.
        "ENTITY_VECTORS_FLUSH_INTERVAL": "1",
    }


@pytest.fixture(scope="session")
def service_logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the processes' logs go (printed when a test fails)."""
    return tmp_path_factory.mktemp("celery-logs")


def start_worker_nodes(
    nodes: tuple[str, ...],
    queue: str,
    env: dict[str, str],
    logs: Path,
    pool: str = "prefork",
    concurrency: int = 1,
) -> list[Service]:
    """One worker per node on `queue` (one prefork process by default), each answering a ping
    before this returns."""
    started = [
        start_celery(
            node,
            [
                "worker",
                "-Q",
                queue,
                "-P",
                pool,
                "-c",
                str(concurrency),
                "-n",
                f"{node}@%h",
                "--without-mingle",
                "--without-gossip",
                "--loglevel",
                "INFO",
            ],
            env,
            logs,
        )
        for node in nodes
    ]

    def answering() -> bool:
        replies = celery_app.control.ping(timeout=0.5) or []
        names = {next(iter(reply)).split("@")[0] for reply in replies}
        return set(nodes) <= names

    try:
        wait_until(answering, timeout=60, what=f"workers {', '.join(nodes)} to answer a ping")
    except BaseException:
        for service in started:
            service.stop()
        raise
    return started


@pytest.fixture(scope="session")
def workers(service_env: dict[str, str], service_logs: Path) -> Iterator[list[Service]]:
    """Two worker nodes, one prefork pool process each: two processes run tasks."""
    celery_app.control.purge()
    nodes = start_worker_nodes(WORKER_NODES, "max-ai-task-queue", service_env, service_logs)
    try:
        yield nodes
    finally:
        for node in nodes:
            node.stop()


@pytest.fixture(scope="session")
def fast_worker(workers: list[Service], service_env: dict[str, str], service_logs: Path) -> Iterator[Service]:
    """A small worker of the fast queue alone, beside the two of the batch queue (which consume the
    fast queue too): the layout the README recommends."""
    (node,) = start_worker_nodes(("fastworker",), "max-ai-task-queue-fast", service_env, service_logs)
    try:
        yield node
    finally:
        node.stop()


@pytest.fixture
def pipeline(
    workers: list[Service],
    use_server_store: EmbeddingStore,
    llm: OpenAIServer,
    transactional_db: Any,
    request: pytest.FixtureRequest,
) -> Iterator[EmbeddingStore]:
    """Workers up, the server store emptied, the OpenAI server reset; logs shown on failure."""
    yield use_server_store
    # Leave nothing running into the next test (a truncated database under a live task).
    wait_until(
        lambda: not SyncRun.objects.filter(status=SyncRun.Status.RUNNING).exists(),
        timeout=60,
        what="runs to finish at teardown",
    )
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        for node in workers:
            print(f"----- {node.name} log -----\n{node.log()[-8000:]}")


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[Any]:
    """Keep each phase's report on the item, for the failure logs above."""
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


def wait_for_run(run_id: str, timeout: float = 90) -> SyncRun:
    """The run once it is no longer running."""
    wait_until(
        lambda: SyncRun.objects.filter(pk=run_id).exclude(status=SyncRun.Status.RUNNING).exists(),
        timeout=timeout,
        what=f"run {run_id} to finish",
    )
    return SyncRun.objects.get(pk=run_id)
