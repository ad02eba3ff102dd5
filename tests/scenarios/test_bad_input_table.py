"""Bad inputs, one table: each gets a clear error naming the field and the value, before any side effect.

Task keyword arguments, internal tasks called by hand, HTTP parameters, command options and
settings. Every case asserts the message and that nothing was written: no run recorded, no
ledger entry, no version, no row in ClickHouse, no request to the provider.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import Client

from app.celery import app as celery_app
from entity_vectors import tasks as _registered_tasks  # noqa: F401 - registers the task names
from entity_vectors.models import DomainVersion, EntityChange, LedgerEntry, SyncRun
from entity_vectors.store import EmbeddingStore
from tests.conftest import run_command
from tests.factories import make_action, make_team
from tests.support.openai_server import OpenAIServer

pytestmark = pytest.mark.django_db

TOMORROW = (datetime.now(UTC) + timedelta(days=1)).isoformat()


@dataclass(frozen=True)
class Case:
    """Where the bad input goes, what it is, and what the error must say."""

    kind: str  # "task", "internal", "http", "command", "setting"
    target: str
    arguments: dict[str, Any] = field(default_factory=dict)
    message: str = ""


def case(kind: str, target: str, message: str, case_id: str, **arguments: Any) -> Any:
    return pytest.param(Case(kind, target, arguments, message), id=case_id)


CASES = [
    # Task keyword arguments: sync_entities.apply(kwargs=...)
    case(
        "task",
        "ai-sync-entity-vectors",
        "unknown domain 'dashboards'; registered domains: action",
        "task-unknown-domain",
        domain="dashboards",
    ),
    case(
        "task", "ai-sync-entity-vectors", "missing 1 required positional argument: 'domain'", "task-no-domain"
    ),
    case(
        "task",
        "ai-sync-entity-vectors",
        "domain='': must be a non-empty domain name",
        "task-empty-domain",
        domain="",
    ),
    case(
        "task",
        "ai-sync-entity-vectors",
        "domain=123: must be a non-empty domain name",
        "task-domain-not-text",
        domain=123,
    ),
    case(
        "task",
        "ai-sync-entity-vectors",
        "summarize_batch_size=0: must be at least 1",
        "task-batch-zero",
        domain="action",
        summarize_batch_size=0,
    ),
    case(
        "task",
        "ai-sync-entity-vectors",
        "summarize_batch_size=-5: must be at least 1",
        "task-batch-negative",
        domain="action",
        summarize_batch_size=-5,
    ),
    case(
        "task",
        "ai-sync-entity-vectors",
        "summarize_batch_size='ten': must be a whole number",
        "task-batch-text",
        domain="action",
        summarize_batch_size="ten",
    ),
    case(
        "task",
        "ai-sync-entity-vectors",
        "summarize_batch_size=True: must be a whole number",
        "task-batch-bool",
        domain="action",
        summarize_batch_size=True,
    ),
    case(
        "task",
        "ai-sync-entity-vectors",
        "summarize_batch_size=1000000000: must be at most 100000",
        "task-batch-huge",
        domain="action",
        summarize_batch_size=10**9,
    ),
    case(
        "task",
        "ai-sync-entity-vectors",
        "embed_batch_size=3000: must be at most 2048",
        "task-embed-batch-over-api",
        domain="action",
        embed_batch_size=3000,
    ),
    case(
        "task",
        "ai-sync-entity-vectors",
        "max_parallel_requests=0: must be at least 1",
        "task-parallel-zero",
        domain="action",
        max_parallel_requests=0,
    ),
    case(
        "task",
        "ai-sync-entity-vectors",
        "insert_batch_size=0: must be at least 1",
        "task-insert-zero",
        domain="action",
        insert_batch_size=0,
    ),
    case(
        "task",
        "ai-sync-entity-vectors",
        "delay_between_batches=-1: must be between 0 and 86400",
        "task-delay-negative",
        domain="action",
        delay_between_batches=-1,
    ),
    case(
        "task",
        "ai-sync-entity-vectors",
        "delay_between_batches=nan: must be a finite number",
        "task-delay-nan",
        domain="action",
        delay_between_batches=float("nan"),
    ),
    case(
        "task",
        "ai-sync-entity-vectors",
        "delay_between_batches=inf: must be a finite number",
        "task-delay-inf",
        domain="action",
        delay_between_batches=float("inf"),
    ),
    case(
        "task",
        "ai-sync-entity-vectors",
        "delay_between_batches='soon': must be a finite number",
        "task-delay-text",
        domain="action",
        delay_between_batches="soon",
    ),
    case(
        "task",
        "ai-sync-entity-vectors",
        "embedding_version=0: must be at least 1",
        "task-version-zero",
        domain="action",
        embedding_version=0,
    ),
    case(
        "task",
        "ai-sync-entity-vectors",
        "embedding_version=1099511627776: must be at most 4294967295",
        "task-version-huge",
        domain="action",
        embedding_version=2**40,
    ),
    case(
        "task",
        "ai-sync-entity-vectors",
        "start_dt='yesterday': not an ISO 8601 date-time",
        "task-start-words",
        domain="action",
        start_dt="yesterday",
    ),
    case(
        "task",
        "ai-sync-entity-vectors",
        "start_dt='0001-01-01T00:00:00+01:00': is outside the range",
        "task-start-year-one",
        domain="action",
        start_dt="0001-01-01T00:00:00+01:00",
    ),
    case(
        "task",
        "ai-sync-entity-vectors",
        "start_dt='9999-12-31T23:59:59-01:00': is outside the range",
        "task-start-year-9999",
        domain="action",
        start_dt="9999-12-31T23:59:59-01:00",
    ),
    case(
        "task",
        "ai-sync-entity-vectors",
        "start_dt='2020-01-01\\x00': not an ISO 8601",
        "task-start-nul",
        domain="action",
        start_dt="2020-01-01\x00",
    ),
    case(
        "task",
        "ai-sync-entity-vectors",
        "is in the future",
        "task-start-tomorrow",
        domain="action",
        start_dt=TOMORROW,
    ),
    case(
        "task",
        "ai-sync-entity-vectors",
        "start_dt=12345: must be an ISO 8601 string or None",
        "task-start-number",
        domain="action",
        start_dt=12345,
    ),
    case(
        "task",
        "ai-sync-entity-vectors",
        "start_dt='1900-01-01T00:00:00Z': must be after 1970-01-01",
        "task-start-1900",
        domain="action",
        start_dt="1900-01-01T00:00:00Z",
    ),
    case(
        "task",
        "ai-sync-entity-vectors",
        "_failures=3: unknown field; expected one of",
        "task-unknown-kwarg",
        domain="action",
        _failures=3,
    ),
    case(
        "task",
        "ai-sync-entity-vectors",
        "batch_size=10: unknown field",
        "task-legacy-kwarg-on-generic",
        domain="action",
        batch_size=10,
    ),
    case(
        "task",
        "ai-sync-vectors",
        "summarize_batch_size=0: must be at least 1",
        "legacy-task-bad-batch",
        batch_size=0,
    ),
    # Internal tasks called by hand.
    case(
        "internal",
        "ai-sync-entity-vectors-batch",
        "run_id='not-a-run': is not a run id",
        "batch-bad-run-id",
        run_id="not-a-run",
        batch_index=0,
        domain="action",
    ),
    case(
        "internal",
        "ai-sync-entity-vectors-batch",
        ": no such run",
        "batch-unknown-run",
        run_id=str(uuid.UUID(int=7)),
        batch_index=0,
        domain="action",
    ),
    case(
        "internal",
        "ai-sync-entity-vectors-finish",
        "run_id='': is not a run id",
        "finish-empty-run-id",
        run_id="",
        domain="action",
    ),
    case(
        "internal",
        "ai-sync-entity-vectors-batch",
        "unexpected keyword argument '_failures'",
        "batch-unknown-kwarg",
        run_id=str(uuid.UUID(int=7)),
        batch_index=0,
        domain="action",
        _failures=1,
    ),
    case(
        "internal",
        "ai-sync-entity-vectors-fast-lane",
        "unknown domain 'dashboards'",
        "fast-lane-unknown-domain",
        domain="dashboards",
    ),
    # HTTP parameters (a valid token).
    case(
        "http",
        "/api/entity-vectors/search",
        "limit='ten': must be a whole number",
        "http-limit-text",
        domain="action",
        q="x",
        limit="ten",
    ),
    case(
        "http",
        "/api/entity-vectors/search",
        "limit=0: must be between 1 and 100",
        "http-limit-zero",
        domain="action",
        q="x",
        limit="0",
    ),
    case(
        "http",
        "/api/entity-vectors/search",
        "mode='fuzzy': must be one of vector, text, hybrid",
        "http-mode",
        domain="action",
        q="x",
        mode="fuzzy",
    ),
    case(
        "http",
        "/api/entity-vectors/search",
        "query: must not contain NUL characters",
        "http-nul-query",
        domain="action",
        q="a\x00b",
    ),
    case(
        "http",
        "/api/entity-vectors/search",
        "unknown domain 'dashboards'",
        "http-unknown-domain",
        domain="dashboards",
        q="x",
    ),
    case(
        "http",
        "/api/entity-vectors/search",
        "embedding_version=0: must be between 1",
        "http-version-zero",
        domain="action",
        q="x",
        embedding_version="0",
    ),
    # Command options.
    case(
        "command",
        "sync_entity_vectors",
        "unknown domain 'dashboards'; registered domains",
        "cmd-sync-unknown-domain",
        args=["--domain", "dashboards"],
    ),
    case("command", "sync_entity_vectors", "give --domain NAME or --all", "cmd-sync-no-domain", args=[]),
    case(
        "command",
        "sync_entity_vectors",
        "summarize_batch_size=0: must be at least 1",
        "cmd-sync-batch-zero",
        args=["--all", "--summarize-batch-size", "0"],
    ),
    case(
        "command",
        "sync_entity_vectors",
        "start_dt='soon': not an ISO 8601",
        "cmd-sync-start-words",
        args=["--domain", "action", "--start-dt", "soon"],
    ),
    case(
        "command",
        "sync_entity_vectors",
        "--timeout=-1.0: must be a number of seconds above 0",
        "cmd-sync-timeout",
        args=["--domain", "action", "--timeout", "-1"],
    ),
    case(
        "command",
        "entity_vectors_status",
        "--runs=-1: must be 0 or more",
        "cmd-status-runs",
        args=["--runs", "-1"],
    ),
    case(
        "command",
        "entity_vectors_status",
        "unknown domain 'nope'",
        "cmd-status-domain",
        args=["--domain", "nope"],
    ),
    case(
        "command",
        "search_entities",
        "limit=0: must be a whole number from 1 to 1000",
        "cmd-search-limit",
        args=["--domain", "action", "--team", "1", "--limit", "0", "x"],
    ),
    # Settings: reported by the system checks.
    case(
        "setting",
        "ENTITY_VECTORS_SUMMARIZER",
        "ENTITY_VECTORS_SUMMARIZER='gpt' is not a known summarizer",
        "setting-summarizer",
        value="gpt",
    ),
    case(
        "setting",
        "ENTITY_VECTORS_EMBEDDER",
        "ENTITY_VECTORS_EMBEDDER='word2vec' is not a known embedder",
        "setting-embedder",
        value="word2vec",
    ),
    case(
        "setting",
        "ENTITY_VECTORS_EMBEDDING_DIMENSIONS",
        "ENTITY_VECTORS_EMBEDDING_DIMENSIONS='abc' is not an integer",
        "setting-dimensions",
        value="abc",
    ),
    case(
        "setting",
        "CLICKHOUSE_URL",
        "CLICKHOUSE_URL='ftp://host' is not understood",
        "setting-clickhouse-url",
        value="ftp://host",
    ),
    case(
        "setting",
        "ENTITY_VECTORS_RUN_LEASE_SECONDS",
        "ENTITY_VECTORS_RUN_LEASE_SECONDS=60 is shorter than the longest task",
        "setting-lease",
        value=60,
    ),
    case(
        "setting",
        "ENTITY_VECTORS_MAX_COUNTDOWN",
        "ENTITY_VECTORS_MAX_COUNTDOWN=7000 plus the longest task",
        "setting-countdown",
        value=7000,
    ),
    case(
        "setting",
        "ENTITY_VECTORS_RATE_LIMITS",
        "ENTITY_VECTORS_RATE_LIMITS['gpt-4.1-mini']['rpm']=-1",
        "setting-rate-limits",
        value='{"gpt-4.1-mini": {"rpm": -1}}',
    ),
    case(
        "setting",
        "ENTITY_VECTORS_EXECUTION",
        "ENTITY_VECTORS_EXECUTION='sometimes' is not understood",
        "setting-execution",
        value="sometimes",
    ),
    case(
        "setting",
        "ENTITY_VECTORS_SEARCH_MODE",
        "ENTITY_VECTORS_SEARCH_MODE='fuzzy' is not understood",
        "setting-search-mode",
        value="fuzzy",
    ),
    case(
        "setting",
        "ENTITY_VECTORS_SCHEDULES",
        "ENTITY_VECTORS_SCHEDULES['action']=0 must be at least 1",
        "setting-schedules",
        value={"action": 0},
    ),
    case(
        "setting",
        "ENTITY_VECTORS_CLICKHOUSE_TABLE",
        "must be a plain identifier",
        "setting-table",
        value="x; DROP TABLE y",
    ),
]


def written() -> tuple[int, ...]:
    """Everything a side effect would have left behind."""
    return (
        SyncRun.objects.count(),
        LedgerEntry.objects.count(),
        DomainVersion.objects.count(),
        EntityChange.objects.exclude(domain="action").count(),
    )


class TestBadInputTable:
    """A clear error naming the field and the value, and nothing written."""

    @pytest.mark.parametrize("bad", CASES)
    def test_refused_with_a_clear_message_and_no_side_effect(
        self,
        bad: Case,
        llm: OpenAIServer,
        embedded_store: EmbeddingStore,
        settings: Any,
        client: Client,
        restore_registry: None,
    ) -> None:
        team = make_team()
        make_action(team, name="Present before the bad input")
        before = written()
        rows = embedded_store.count_rows("action")

        message = self._attempt(bad, settings, client, team)

        assert bad.message in message, message
        assert written() == before
        assert embedded_store.count_rows("action") == rows
        assert llm.requests == []

    @staticmethod
    def _attempt(bad: Case, settings: Any, client: Client, team: Any) -> str:
        if bad.kind in ("task", "internal"):
            result = celery_app.tasks[bad.target].apply(kwargs=bad.arguments)
            assert result.failed(), result.result
            return str(result.result)
        if bad.kind == "http":
            response = client.get(
                bad.target, bad.arguments, headers={"Authorization": f"Bearer {team.api_token}"}
            )
            assert response.status_code == 400
            return str(response.json()["error"])
        if bad.kind == "command":
            with pytest.raises(CommandError) as raised:
                run_command(bad.target, *bad.arguments["args"])
            return str(raised.value)
        setattr(settings, bad.target, bad.arguments["value"])
        from django.core.management.base import SystemCheckError

        with pytest.raises(SystemCheckError) as checked:
            call_command("check", tags=["entity_vectors"])
        return str(checked.value)
