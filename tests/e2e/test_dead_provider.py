"""A wrong OPENAI_BASE_URL on the embedded default, as a user meets it: `manage.py sync_entity_vectors`
against a closed port fails in seconds with one line naming the host, and nothing is lost."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from app.models import Action
from entity_vectors.models import EntityFailure, LedgerEntry, SyncRun, SyncRunBatch
from tests.factories import make_action, make_team
from tests.support.openai_server import OpenAIServer
from tests.support.ports import DEAD_HOST_REQUESTS, closed_port
from tests.support.processes import ROOT

pytestmark = pytest.mark.slow

# The bound for a run against a provider nothing can reach (the process's start included).
FAIL_WITHIN_SECONDS = 10.0
# Settings of the test environment that a user does not have: the defaults apply here.
TEST_ONLY = (
    "ENTITY_VECTORS_EXECUTION",
    "ENTITY_VECTORS_PROVIDER_MAX_RETRIES",
    "ENTITY_VECTORS_PROVIDER_TIMEOUT",
    "ENTITY_VECTORS_PROVIDER_MAX_BACKOFF",
    "ENTITY_VECTORS_TASK_RETRY_BACKOFF",
    "ENTITY_VECTORS_TASK_MAX_RETRIES",
    "ENTITY_VECTORS_MAX_COUNTDOWN",
    "ENTITY_VECTORS_FLUSH_INTERVAL",
)


def sync(env: dict[str, str]) -> tuple[subprocess.CompletedProcess[str], float]:
    """`manage.py sync_entity_vectors --domain action --wait` as a process; its result and seconds."""
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "manage.py", "sync_entity_vectors", "--domain", "action", "--wait"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    return result, time.monotonic() - started


class TestDeadProvider:
    """The embedded default (chdb, inline runs), default retries, a provider URL nothing listens on."""

    @pytest.mark.django_db(transaction=True)
    def test_a_closed_port_fails_in_seconds_in_one_line_and_the_next_run_syncs_everything(
        self, service_env: dict[str, str], llm: OpenAIServer, tmp_path: Path
    ) -> None:
        port = closed_port()
        env = {key: value for key, value in service_env.items() if key not in TEST_ONLY}
        env.update(
            {
                "CLICKHOUSE_URL": f"chdb://{tmp_path / 'clickhouse'}",
                "OPENAI_BASE_URL": f"http://127.0.0.1:{port}/v1",
                "ENTITY_VECTORS_LOG_LEVEL": "WARNING",  # as `make demo` runs
            }
        )
        team = make_team()
        actions = [make_action(team, name=f"Step {index}") for index in range(14)]

        failed, seconds = sync(env)

        assert failed.returncode == 1, failed.stderr
        assert seconds < FAIL_WITHIN_SECONDS, f"took {seconds:.1f}s"
        (line,) = failed.stderr.splitlines()  # one line, no traceback, no log block
        assert line.startswith(
            f"CommandError: action: the provider at 127.0.0.1:{port} is unreachable (connection refused) after "
        ), line
        assert f"check OPENAI_BASE_URL (http://127.0.0.1:{port}/v1)" in line
        assert line.endswith("its 14 entities not synced wait for the next run")
        assert "0/1 batches" in failed.stdout  # the bar showed from the start
        run = SyncRun.objects.get()
        assert run.status == SyncRun.Status.FAILED
        assert run.provider_requests <= DEAD_HOST_REQUESTS  # not 14 entities x 5 attempts x 6 batch attempts
        assert set(SyncRunBatch.objects.filter(run=run).values_list("status", flat=True)) == {"pending"}
        assert not EntityFailure.objects.exists()  # nothing blamed on the entities, nothing parked
        assert not LedgerEntry.objects.exists()
        assert not Action.objects.filter(embedding_last_synced_at__isnull=False).exists()

        env["OPENAI_BASE_URL"] = llm.base_url  # the URL fixed
        fixed, _ = sync(env)

        assert fixed.returncode == 0, fixed.stderr
        assert "action: succeeded" in fixed.stdout and "inserted 14" in fixed.stdout, fixed.stdout
        assert len(llm.chat_requests()) == 14  # each pending entity once
        synced = Action.objects.filter(pk__in=[action.pk for action in actions], embedding_last_synced_at__isnull=False)
        assert synced.count() == 14
        assert LedgerEntry.objects.filter(is_live=True).count() == 14
