"""A first hour without friction: a service that is down is named in one line, at once; tokens rotate."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time
import uuid
from typing import Any

import pytest
import redis
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection
from django.test import Client

from app.models import Team
from entity_vectors.store import EmbeddingStore
from tests.conftest import run_command, run_workflow
from tests.factories import make_action, make_team
from tests.support.processes import ROOT

pytestmark = pytest.mark.django_db
SECRET = "s3cret-pw"
CLICKHOUSE_DOWN = f"http://default:{SECRET}@127.0.0.1:9/default"
CLICKHOUSE_SHOWN = "http://default:***@127.0.0.1:9/default"
REDIS_DOWN = f"redis://:{SECRET}@127.0.0.1:9/0"
REDIS_SHOWN = "redis://:***@127.0.0.1:9/0"
SEARCH_URL = "/api/entity-vectors/search"
WITHIN = 3.5  # seconds: the 3 s connect timeout at most, plus the command itself


def one_line_error(name: str, *args: Any, **options: Any) -> tuple[str, float]:
    """Run a command that must fail: its CommandError message (one line) and how long it took."""
    started = time.monotonic()
    with pytest.raises(CommandError) as caught:
        run_command(name, *args, **options)
    elapsed = time.monotonic() - started
    message = str(caught.value)
    assert "\n" not in message, message
    assert SECRET not in message, message
    return message, elapsed


def assert_names_clickhouse(message: str) -> None:
    """The message names ClickHouse, where it is, the URL without its password, and a hint."""
    assert message.startswith("ClickHouse at 127.0.0.1:9 is unreachable"), message
    assert f"({CLICKHOUSE_SHOWN}): connection refused" in message
    assert "set CLICKHOUSE_URL" in message and "serve_clickhouse" in message
    assert "worker" not in message  # an outage is not a missing worker


def database_url() -> str:
    """The test database, for commands run in another process."""
    settings_dict = connection.settings_dict
    return f"postgres://{settings_dict['USER']}@{settings_dict['HOST']}:{settings_dict['PORT']}/{settings_dict['NAME']}"


def manage(*arguments: str, env: dict[str, str], timeout: float = 10) -> tuple[int, str, str, float]:
    """`python manage.py ...` in its own process: exit code, stdout, stderr, seconds (incl. start-up)."""
    queue = f"first-hour-{uuid.uuid4().hex[:8]}"  # nothing queued here may reach another test's workers
    full_env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "DATABASE_URL": database_url(),
        "ENTITY_VECTORS_QUEUE": queue,
        "ENTITY_VECTORS_LOG_LEVEL": "WARNING",
        **env,
    }
    started = time.monotonic()
    try:
        result = subprocess.run(
            [sys.executable, "manage.py", *arguments],
            cwd=ROOT,
            env=full_env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"manage.py {' '.join(arguments)} still ran after {timeout:.0f}s") from exc
    finally:
        broker = redis.Redis.from_url(os.environ["CELERY_BROKER_URL"])
        broker.delete(queue, f"_kombu.binding.{queue}")
        broker.close()
    return result.returncode, result.stdout, result.stderr, time.monotonic() - started


@pytest.fixture
def vectorized(offline: None, embedded_store: EmbeddingStore) -> Team:
    """A team with an action vectorized in the embedded store."""
    team = make_team()
    make_action(team, name="Signed up", description="Account created")
    run_workflow("action")
    return team


@pytest.fixture
def clickhouse_down(settings: Any, vectorized: Team) -> Team:
    """CLICKHOUSE_URL now points at a closed port (with a password that must never be shown)."""
    settings.CLICKHOUSE_URL = CLICKHOUSE_DOWN
    return vectorized


class TestClickHouseDown:
    """Every command that reads ClickHouse fails in one line naming it, within the connect timeout."""

    def test_search_entities(self, clickhouse_down: Team) -> None:
        message, elapsed = one_line_error(
            "search_entities", "--domain", "action", "--team", str(clickhouse_down.id), "signed up"
        )

        assert_names_clickhouse(message)
        assert elapsed < WITHIN

    def test_entity_vectors_status_shows_the_database_side_then_fails(self, clickhouse_down: Team) -> None:
        out = io.StringIO()
        started = time.monotonic()
        with pytest.raises(CommandError) as caught:
            call_command("entity_vectors_status", "--domain", "action", stdout=out)

        assert time.monotonic() - started < WITHIN
        assert_names_clickhouse(str(caught.value))
        assert "\n" not in str(caught.value)
        assert "live entities 1, with a current vector 1" in out.getvalue()  # what the database knows

    def test_demo_fails_before_seeding_anything(self, clickhouse_down: Team) -> None:
        teams = Team.objects.count()

        message, elapsed = one_line_error("demo")

        assert_names_clickhouse(message)
        assert elapsed < WITHIN
        assert Team.objects.count() == teams

    def test_the_web_search_answers_503_at_once(self, clickhouse_down: Team, client: Client) -> None:
        started = time.monotonic()

        status = search(client, clickhouse_down.api_token)  # type: ignore[attr-defined]

        assert status == 503
        assert time.monotonic() - started < WITHIN

    def test_sync_entity_vectors_refuses_to_queue(self) -> None:
        code, out, err, elapsed = manage(
            "sync_entity_vectors",
            "--domain",
            "action",
            env={"CLICKHOUSE_URL": CLICKHOUSE_DOWN, "ENTITY_VECTORS_EXECUTION": "distributed"},
        )

        assert code == 1, out + err
        assert err.startswith("CommandError: ") and len(err.strip().splitlines()) == 1, err
        assert_names_clickhouse(err.removeprefix("CommandError: ").strip())
        assert elapsed < WITHIN


class TestRedisDown:
    """A command that sends runs to the workers names Redis in one line when it is down."""

    def test_demo_with_distributed_runs(
        self, settings: Any, embedded_store: EmbeddingStore, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        settings.ENTITY_VECTORS_EXECUTION = "distributed"
        monkeypatch.setenv("CELERY_BROKER_URL", REDIS_DOWN)  # Celery reads it at each use

        message, elapsed = one_line_error("demo")

        assert message.startswith("Redis at 127.0.0.1:9 is unreachable"), message
        assert f"({REDIS_SHOWN}): connection refused" in message
        assert "set CELERY_BROKER_URL" in message
        assert elapsed < WITHIN

    def test_demo_names_the_result_backend(
        self, settings: Any, embedded_store: EmbeddingStore, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        settings.ENTITY_VECTORS_EXECUTION = "distributed"
        monkeypatch.setenv("CELERY_RESULT_BACKEND", REDIS_DOWN)

        message, elapsed = one_line_error("demo")

        assert (
            message.startswith("Redis at 127.0.0.1:9 is unreachable") and "CELERY_RESULT_BACKEND" in message
        )
        assert elapsed < WITHIN

    def test_sync_entity_vectors_with_distributed_runs(self) -> None:
        code, out, err, elapsed = manage(
            "sync_entity_vectors",
            "--domain",
            "action",
            env={
                "CELERY_BROKER_URL": REDIS_DOWN,
                "CELERY_RESULT_BACKEND": REDIS_DOWN,
                "ENTITY_VECTORS_EXECUTION": "distributed",
                "CLICKHOUSE_URL": "chdb:///nonexistent/never-opened",
            },
        )

        assert code == 1, out + err
        assert err.startswith("CommandError: Redis at 127.0.0.1:9 is unreachable"), err
        assert len(err.strip().splitlines()) == 1, err
        assert REDIS_SHOWN in err and SECRET not in err
        assert elapsed < WITHIN


def search(client: Client, token: str) -> int:
    """The status of a search with this bearer token."""
    response = client.get(
        SEARCH_URL, {"domain": "action", "q": "signed up"}, headers={"Authorization": f"Bearer {token}"}
    )
    return int(response.status_code)


class TestTeamApiToken:
    """`team_api_token` issues a new token (the old one stops working at once) or shows the hint."""

    def test_rotating_prints_a_new_token_and_the_old_one_stops_working(
        self, vectorized: Team, client: Client
    ) -> None:
        old = vectorized.api_token  # type: ignore[attr-defined]
        assert search(client, old) == 200

        out, err = run_command("team_api_token", "--team", str(vectorized.id))

        new = out.strip()
        assert new.startswith("ev_") and new != old and len(out.splitlines()) == 1
        assert "shown only this once" in err and "previous token stopped working" in err
        assert search(client, old) == 401
        assert search(client, new) == 200
        vectorized.refresh_from_db()
        assert vectorized.api_token_hint == new[:10]
        assert new not in (vectorized.api_token_hash, vectorized.api_token_hint)

    def test_show_hint_prints_only_the_hint_and_rotates_nothing(
        self, vectorized: Team, client: Client
    ) -> None:
        token = vectorized.api_token  # type: ignore[attr-defined]

        out, _ = run_command("team_api_token", "--team", str(vectorized.id), "--show-hint")

        assert token[:10] in out and token not in out
        assert search(client, token) == 200

    def test_an_unknown_team_is_a_clear_error(self) -> None:
        team = make_team()

        message, _ = one_line_error("team_api_token", "--team", str(team.id + 1000))

        assert message.startswith(f"--team {team.id + 1000}: no such team")
        assert str(team.id) in message


class TestFreshMachine:
    """The quickstart's first command, as a newcomer runs it: its own process, nothing there yet."""

    def test_the_demo_prints_its_results_and_no_error(self, tmp_path: Any) -> None:
        code, out, err, _ = manage(
            "demo",
            env={
                "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}",
                "CLICKHOUSE_URL": f"chdb://{tmp_path / 'clickhouse'}",
                "ENTITY_VECTORS_EXECUTION": "inline",
            },
            timeout=180,
        )

        assert code == 0, err
        assert "Example searches" in out and "in this process" in out
        # Nothing on stderr: no traceback, and no message from the embedded engine's shutdown.
        assert err.strip() == "", err
