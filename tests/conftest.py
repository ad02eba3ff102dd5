"""Shared fixtures: the OpenAI-compatible server, the stores, settings for the providers, runs."""

from __future__ import annotations

import io
import os
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from django.core.management import call_command

from entity_vectors.core.inputs import SyncEntityVectorsInputs
from entity_vectors.core.registry import default_registry
from entity_vectors.models import SyncRun
from entity_vectors.store import EmbeddingStore, close_store, get_store, open_store
from tests.support.clickhouse_http import start_subprocess, stop_subprocess
from tests.support.openai_server import OpenAIServer

TEST_API_KEY = "test-key"


@pytest.fixture(scope="session")
def openai_server() -> Iterator[OpenAIServer]:
    """One OpenAI-compatible server on loopback for the whole session."""
    with OpenAIServer(api_key=TEST_API_KEY) as server:
        yield server


@pytest.fixture
def llm(openai_server: OpenAIServer, settings: Any) -> OpenAIServer:
    """The `openai` summarizer and embedder, pointed at the loopback server, fast retries."""
    deadline = time.monotonic() + 10
    while openai_server.in_flight and time.monotonic() < deadline:
        time.sleep(0.05)  # a previous test's hung request must not count in this test's peak
    openai_server.reset()
    settings.OPENAI_API_KEY = TEST_API_KEY
    settings.OPENAI_BASE_URL = openai_server.base_url
    settings.ENTITY_VECTORS_SUMMARIZER = "openai"
    settings.ENTITY_VECTORS_EMBEDDER = "openai"
    settings.ENTITY_VECTORS_EMBEDDING_DIMENSIONS = 256
    settings.ENTITY_VECTORS_PROVIDER_MAX_RETRIES = 2
    settings.ENTITY_VECTORS_PROVIDER_MAX_BACKOFF = 0.05
    return openai_server


@pytest.fixture
def offline(settings: Any) -> None:
    """The offline providers (template summarizer, hashing embedder)."""
    settings.ENTITY_VECTORS_SUMMARIZER = "template"
    settings.ENTITY_VECTORS_EMBEDDER = "hashing"
    settings.ENTITY_VECTORS_EMBEDDING_DIMENSIONS = 256


@pytest.fixture(scope="session")
def clickhouse_http_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A ClickHouse HTTP endpoint: CLICKHOUSE_TEST_URL, else the chdb-backed adapter in a subprocess."""
    external = os.environ.get("CLICKHOUSE_TEST_URL")
    if external:
        yield external
        return
    process, url = start_subprocess(str(tmp_path_factory.mktemp("clickhouse-http")))
    try:
        yield url
    finally:
        stop_subprocess(process)


@pytest.fixture
def embedded_store() -> EmbeddingStore:
    """This process's embedded store (chdb), emptied."""
    store = get_store()
    store.truncate()
    return store


@pytest.fixture
def server_store(clickhouse_http_url: str) -> Iterator[EmbeddingStore]:
    """A clickhouse-connect store on the HTTP endpoint, emptied."""
    store = open_store(clickhouse_http_url, "pg_embeddings")
    store.ensure_schema()
    store.truncate()
    try:
        yield store
    finally:
        store.close()


@pytest.fixture(params=["embedded", "server"])
def any_store(request: pytest.FixtureRequest) -> EmbeddingStore:
    """Each store in turn: both must behave the same."""
    return request.getfixturevalue(f"{request.param}_store")


@pytest.fixture
def use_server_store(settings: Any, clickhouse_http_url: str) -> Iterator[EmbeddingStore]:
    """Point the project at the HTTP ClickHouse (as workers see it), emptied."""
    settings.CLICKHOUSE_URL = clickhouse_http_url
    settings.ENTITY_VECTORS_EXECUTION = "distributed"
    store = get_store()
    store.truncate()
    yield store


@pytest.fixture
def restore_registry() -> Iterator[None]:
    """Undo registrations made by the test."""
    with default_registry.restored():
        yield


@pytest.fixture(scope="session")
def redis_client() -> redis.Redis:
    """The test Redis database (broker, results, limiter), flushed once per session."""
    client = redis.Redis.from_url(os.environ["CELERY_BROKER_URL"])
    client.flushdb()
    return client


def run_workflow(domain: str, **fields: Any) -> SyncRun:
    """A whole run through the plain workflow functions, in this process, without Celery."""
    from entity_vectors import workflow

    fields.setdefault("delay_between_batches", 0)
    return workflow.run_inline(SyncEntityVectorsInputs(domain=domain, **fields))


def run_command(name: str, *args: Any, **options: Any) -> tuple[str, str]:
    """Run a command; return its stdout and stderr."""
    stdout, stderr = io.StringIO(), io.StringIO()
    call_command(name, *args, stdout=stdout, stderr=stderr, **options)
    return stdout.getvalue(), stderr.getvalue()


@pytest.fixture(autouse=True, scope="session")
def _close_stores_at_exit() -> Iterator[None]:
    yield
    close_store()
