"""The embedded default on a laptop: serve_clickhouse, a prefork worker, beat, the web and the CLI together."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from django.test import Client

from app.models import Action
from entity_vectors.models import SyncRun
from tests.conftest import run_command
from tests.factories import make_action, make_team
from tests.support.devserver import DevServer, start_devserver
from tests.support.openai_server import OpenAIServer
from tests.support.processes import ROOT, pool_children, start_beat, start_celery, wait_until

pytestmark = pytest.mark.slow


@pytest.fixture
def devserver(tmp_path: Path) -> Iterator[DevServer]:
    """`manage.py serve_clickhouse` on a free port with a new data directory, stopped at the end."""
    server = start_devserver(tmp_path / "clickhouse")
    try:
        yield server
    finally:
        server.stop()


class TestLaptop:
    """Four processes share one chdb directory through the development server: no ClickHouse server."""

    @pytest.mark.django_db(transaction=True)
    def test_beat_and_a_prefork_worker_sync_and_the_cli_and_web_find_it(
        self,
        service_env: dict[str, str],
        service_logs: Path,
        llm: OpenAIServer,
        redis_client: redis.Redis,
        settings: Any,
        client: Client,
        tmp_path: Path,
        devserver: DevServer,
    ) -> None:
        # A queue of its own: workers of other tests (on another ClickHouse) must not take these runs.
        queue = f"laptop-{uuid.uuid4().hex[:8]}"
        env = {
            **service_env,
            "CLICKHOUSE_URL": devserver.url,
            "ENTITY_VECTORS_QUEUE": queue,
            "ENTITY_VECTORS_SCHEDULE_SECONDS": "2",
        }
        settings.CLICKHOUSE_URL = devserver.url  # the web search and the CLI, in this process
        settings.ENTITY_VECTORS_EXECUTION = "distributed"
        team, other = make_team(), make_team()
        make_action(
            team, name="Signed up", description="A visitor created an account with email and password"
        )
        make_action(team, name="Paid invoice", description="A customer paid an invoice by card")
        make_action(other, name="Signed up elsewhere", description="Another team's sign up")
        worker_args = f"worker -Q {queue} -P prefork -c 2 -n {queue}@%h --without-mingle --without-gossip"
        worker = start_celery(
            "laptop-worker", [*worker_args.split(), "--loglevel", "INFO"], env, service_logs
        )
        beat = start_beat("laptop-beat", env, service_logs, tmp_path / "beat-schedule")
        try:
            wait_until(
                lambda: not Action.objects.filter(embedding_last_synced_at__isnull=True).exists(),
                timeout=90,
                what="beat's runs to sync every action on the worker",
            )
            assert len(pool_children(worker.process.pid)) == 2  # prefork, two processes: no --pool solo
        except AssertionError:
            print(f"----- worker -----\n{worker.log()[-6000:]}\n----- beat -----\n{beat.log()[-3000:]}")
            raise
        finally:
            beat.stop()
            wait_until(
                lambda: not SyncRun.objects.filter(status=SyncRun.Status.RUNNING).exists(),
                timeout=60,
                what="runs to finish before the worker stops",
            )
            worker.stop()
            redis_client.delete(queue, f"_kombu.binding.{queue}")
        run = SyncRun.objects.filter(domain="action", status=SyncRun.Status.SUCCEEDED, inserted=3).first()
        assert run is not None and run.mode == SyncRun.Mode.DISTRIBUTED
        assert "entity-vectors-sync-action" in beat.log()

        out, _ = run_command("search_entities", "--domain", "action", "--team", str(team.id), "signed up")
        assert out.splitlines()[0].startswith("1. Signed up (id ")
        assert "elsewhere" not in out and "Paid invoice" in out

        response = client.get(
            "/api/entity-vectors/search",
            {"domain": "action", "q": "paid invoice", "limit": "5"},
            headers={"Authorization": f"Bearer {team.api_token}"},  # type: ignore[attr-defined]
        )
        assert response.status_code == 200, response.content
        results = response.json()["results"]
        assert [hit["properties"]["name"] for hit in results] == ["Paid invoice", "Signed up"]
        assert {hit["team_id"] for hit in results} == {team.id}
        out, err = devserver.stop()
        assert devserver.process.returncode == 0, err
        assert "FOR DEVELOPMENT ONLY" in out


class TestSharedWithoutAServer:
    """CLICKHOUSE_URL=chdb://... in every process, nothing started by hand: the first process to
    open the directory serves it to the others (two prefork processes and the CLI)."""

    @pytest.mark.django_db(transaction=True)
    def test_a_prefork_worker_and_the_cli_share_the_embedded_store(
        self,
        service_env: dict[str, str],
        service_logs: Path,
        llm: OpenAIServer,
        redis_client: redis.Redis,
        tmp_path: Path,
    ) -> None:
        queue = f"shared-{uuid.uuid4().hex[:8]}"
        env = {**service_env, "CLICKHOUSE_URL": f"chdb://{tmp_path / 'clickhouse'}", "ENTITY_VECTORS_QUEUE": queue}
        team = make_team()
        for index in range(6):
            make_action(team, name=f"Shared store action {index}", description="Exported a report to PDF")
        worker_args = f"worker -Q {queue} -P prefork -c 2 -n {queue}@%h --without-mingle --without-gossip"
        worker = start_celery("shared-worker", [*worker_args.split(), "--loglevel", "INFO"], env, service_logs)
        try:
            sync = subprocess.run(
                [sys.executable, "manage.py", "sync_entity_vectors", "--domain", "action", "--wait",
                 "--summarize-batch-size", "2", "--delay-between-batches", "0"],
                cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
            )  # fmt: skip
            assert sync.returncode == 0, sync.stdout + sync.stderr + worker.log()[-4000:]
            assert len(pool_children(worker.process.pid)) == 2
            found = subprocess.run(
                [sys.executable, "manage.py", "search_entities", "--domain", "action", "--team", str(team.pk),
                 "Shared store action 3"],
                cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
            )  # fmt: skip
        finally:
            worker.stop()
            redis_client.delete(queue, f"_kombu.binding.{queue}")

        assert found.returncode == 0, found.stderr
        assert found.stdout.splitlines()[0].startswith("1. Shared store action 3 (id "), found.stdout
        run = SyncRun.objects.get(domain="action", status=SyncRun.Status.SUCCEEDED)
        assert run.mode == SyncRun.Mode.DISTRIBUTED and run.inserted == 6 and run.batches_total == 3
        assert "in use by another process" not in worker.log()
