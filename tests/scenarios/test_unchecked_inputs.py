"""Inputs no check used to look at: a clear error naming the field, instead of the database's.

NUL bytes (PostgreSQL refuses them in text), integers beyond a bigint, non-finite or huge numbers,
in task keyword arguments, command options and the Python search API; what an error repeats of a
100 KB parameter; and URL passwords in the libraries' own log lines.
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from django.core.management.base import CommandError
from django.test import Client
from django.utils import timezone

from app.celery import app as celery_app
from entity_vectors import tasks as _registered_tasks  # noqa: F401 - registers the task names
from entity_vectors.exceptions import InvalidInputsError, SearchError
from entity_vectors.models import DomainVersion, EntityFailure, SyncRun
from entity_vectors.search.query import search_entities
from tests.conftest import TEST_API_KEY, run_command
from tests.factories import make_action, make_team
from tests.support.openai_server import OpenAIServer

SECRET = "sekrit-Pw-4711"
HUGE = 10**30


class TestTaskArguments:
    """A task's keyword arguments are checked before anything reads the database."""

    @pytest.mark.django_db
    @pytest.mark.parametrize(
        ("kwargs", "says"),
        [
            pytest.param(
                {"domain": "action\x00"}, "domain='action\\x00': must be a domain name", id="nul-domain"
            ),
            pytest.param({"domain": "a" * 100_000}, "must be a domain name", id="100kb-domain"),
            pytest.param(
                {"domain": "action", "delay_between_batches": 10**400},
                "must be between 0 and 86400 seconds",
                id="delay-10**400",
            ),
            pytest.param(
                {"domain": "action", "embedding_version": HUGE},
                "embedding_version=1000000000000000000000000000000: must be at most 4294967295",
                id="huge-version",
            ),
        ],
    )
    def test_refused_with_the_field_and_nothing_written(
        self, kwargs: dict[str, Any], says: str, offline: None, restore_registry: None
    ) -> None:
        make_action(make_team())

        result = celery_app.tasks["ai-sync-entity-vectors"].apply(kwargs=kwargs)

        assert result.failed()
        assert isinstance(result.result, InvalidInputsError), repr(result.result)
        assert says in str(result.result) and len(str(result.result)) < 200
        assert SyncRun.objects.count() == 0 and DomainVersion.objects.count() == 0


class TestCommandOptions:
    """An option argparse lets through but the database would refuse is a CommandError naming it."""

    @pytest.mark.django_db
    @pytest.mark.parametrize(
        ("command", "says"),
        [
            pytest.param(["entity_vectors_status", "--runs", str(HUGE)], "--runs=", id="status-runs"),
            pytest.param(
                ["entity_vectors_status", "--domain", "action\x00"], "--domain=", id="status-nul-domain"
            ),
            pytest.param(
                ["entity_vectors_unpark", "--domain", "action", "--id", "a\x00b"],
                "--id='a\\x00b'",
                id="unpark-nul-id",
            ),
            pytest.param(
                ["entity_vectors_unpark", "--domain", "action", "--id", "x" * 1000],
                "--id=",
                id="unpark-long-id",
            ),
            pytest.param(["team_api_token", "--team", str(HUGE)], "--team=", id="token-huge-team"),
            pytest.param(
                ["search_entities", "--domain", "action", "--team", str(HUGE), "x"],
                "--team=",
                id="search-team",
            ),
            pytest.param(
                ["migrate_embeddings", "--domain", "action", "--retire", str(HUGE)],
                "--retire=",
                id="retire-huge",
            ),
            pytest.param(
                ["migrate_embeddings", "--domain", "action", "--to-version", str(HUGE)],
                "--to-version=",
                id="to-version-huge",
            ),
            pytest.param(
                ["migrate_embeddings", "--domain", "action", "--to-version", "2", "--model", "m\x00"],
                "--model=",
                id="model-nul",
            ),
            pytest.param(
                ["migrate_embeddings", "--domain", "action", "--to-version", "2", "--dimensions", str(HUGE)],
                "--dimensions=",
                id="dimensions-huge",
            ),
            pytest.param(
                ["migrate_embeddings", "--domain", "action\x00", "--retire", "2"],
                "--domain=",
                id="migrate-nul-domain",
            ),
            pytest.param(
                [
                    "migrate_embeddings",
                    "--domain",
                    "action",
                    "--to-version",
                    "2",
                    "--promote",
                    "--max-recall-drop",
                    "nan",
                ],
                "--max-recall-drop=nan",
                id="recall-drop-nan",
            ),
            pytest.param(
                ["evaluate_search", "--embedding-version", str(HUGE)],
                "--embedding-version=",
                id="evaluate-version",
            ),
            pytest.param(
                ["evaluate_search", "--domain", "action\x00"], "--domain=", id="evaluate-nul-domain"
            ),
            pytest.param(
                ["sync_entity_vectors", "--domain", "action", "--timeout", "inf"],
                "--timeout=inf",
                id="sync-timeout-inf",
            ),
            pytest.param(["demo", "--limit", str(HUGE)], "--limit=", id="demo-limit"),
        ],
    )
    def test_a_command_error_naming_the_option(self, command: list[str], says: str, offline: None) -> None:
        make_action(make_team())
        now = timezone.now()
        EntityFailure.objects.create(
            domain="action", entity_id="1", failures=3, last_error="x", last_failed_at=now, parked_at=now
        )

        with pytest.raises(CommandError) as raised:
            run_command(*command)

        assert says in str(raised.value) and len(str(raised.value)) < 300
        assert SyncRun.objects.count() == 0 and EntityFailure.objects.count() == 1


class TestSearchArguments:
    """The Python search API refuses a team id no database key can be."""

    @pytest.mark.django_db
    def test_a_team_id_beyond_a_bigint(self, offline: None) -> None:
        make_action(make_team())

        with pytest.raises(
            SearchError, match="team_id=1000000000000000000000000000000: must be an integer team id"
        ):
            search_entities("action", HUGE, "signup")


class TestErrorsEchoShortenedInput:
    """The search endpoint's 400 repeats at most about 80 characters of a parameter."""

    @pytest.mark.django_db
    @pytest.mark.parametrize(
        ("parameters", "says"),
        [
            pytest.param({"domain": "d" * 100_000, "q": "x"}, "unknown domain 'ddd", id="domain"),
            pytest.param({"domain": "action", "q": "x", "mode": "m" * 100_000}, "mode='mmm", id="mode"),
            pytest.param({"domain": "action", "q": "x", "limit": "9" * 100_000}, "limit='999", id="limit"),
        ],
    )
    def test_a_100kb_parameter_is_not_sent_back(
        self, parameters: dict[str, str], says: str, offline: None, client: Client
    ) -> None:
        team = make_team()

        response = client.get(
            "/api/entity-vectors/search", parameters, headers={"Authorization": f"Bearer {team.api_token}"}
        )

        assert response.status_code == 400
        error = response.json()["error"]
        assert says in error and "..." in error
        assert len(response.content) < 400


@pytest.fixture
def host_logging_at_info() -> Iterator[io.StringIO]:
    """A host whose root handler has no redacting filter and that logs the libraries at INFO."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    root = logging.getLogger()
    root.addHandler(handler)
    levels = {}
    for name in ("httpx", "httpx2", "openai", "urllib3", "clickhouse_connect", "redis", "kombu", "celery"):
        levels[name] = logging.getLogger(name).level
        logging.getLogger(name).setLevel(logging.INFO)
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


class TestLibraryLogsAreRedacted:
    """The libraries' own loggers redact URL passwords, whatever the host's handlers are."""

    def test_the_openai_sdk_request_line_shows_no_password(
        self, openai_server: OpenAIServer, host_logging_at_info: io.StringIO
    ) -> None:
        base_url = openai_server.base_url.replace("http://", f"http://user:{SECRET}@")
        client = openai.OpenAI(api_key=TEST_API_KEY, base_url=base_url, max_retries=0)

        # The server may refuse the URL's own credentials: the request is logged all the same.
        with contextlib.suppress(openai.APIError):
            client.embeddings.create(model="text-embedding-3-small", input=["hello"])

        logged = host_logging_at_info.getvalue()
        assert "HTTP Request: POST" in logged and "user:***@" in logged
        assert SECRET not in logged

    @pytest.mark.parametrize(
        "name",
        [
            "httpx",
            "openai._base_client",
            "urllib3.connectionpool",
            "clickhouse_connect.driver.httpclient",
            "redis.connection",
            "kombu.connection",
            "celery.worker.consumer.connection",
        ],
    )
    def test_each_library_logger_redacts(self, name: str, host_logging_at_info: io.StringIO) -> None:
        logging.getLogger(name).warning("connecting to %s", f"http://default:{SECRET}@127.0.0.1:8123/default")

        logged = host_logging_at_info.getvalue()
        assert "http://default:***@127.0.0.1:8123" in logged and SECRET not in logged
