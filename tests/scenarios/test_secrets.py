"""A known secret never appears anywhere it could be printed or stored, even in a failing run.

The ClickHouse URL's password, the broker's, and the OpenAI key are planted; a run fails on them;
then the logs (captured at the file descriptors), the run's stored errors, the admin's page of the
run, the system checks' output, the exception a caller sees, and a worker's stderr are searched.
"""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.core.management import call_command
from django.core.management.base import SystemCheckError
from django.test import Client

from entity_vectors.models import SyncRun, SyncRunBatch
from tests.conftest import run_workflow
from tests.factories import make_action, make_team
from tests.support.processes import ROOT

pytestmark = pytest.mark.django_db(transaction=True)

CLICKHOUSE_SECRET = "ch-pw-Zq81xK4"
OPENAI_SECRET = "sk-test-Yt5Gm2Lp9"


class TestSecretsAreRedacted:
    """Redaction everywhere text can leave the process or be kept."""

    def test_a_failing_run_leaks_no_secret(
        self, offline: None, embedded_store: Any, settings: Any, capfd: pytest.CaptureFixture[str]
    ) -> None:
        make_action(make_team(), name="Never lands")
        settings.OPENAI_API_KEY = OPENAI_SECRET
        settings.CLICKHOUSE_URL = f"http://default:{CLICKHOUSE_SECRET}@127.0.0.1:9/default"

        with pytest.raises(Exception) as raised:
            run_workflow("action")

        seen = [str(raised.value), repr(raised.value)]
        run = SyncRun.objects.get()
        seen += [run.error, *(batch.error for batch in SyncRunBatch.objects.all())]
        admin = User.objects.create_superuser("admin", "admin@example.com", "pw")
        client = Client()
        client.force_login(admin)
        page = client.get(f"/admin/entity_vectors/syncrun/{run.pk}/change/")
        assert page.status_code == 200
        seen.append(page.content.decode())
        with pytest.raises(SystemCheckError) as checked:
            settings.CLICKHOUSE_URL = f"ftp://default:{CLICKHOUSE_SECRET}@127.0.0.1:9/default"
            call_command("check", tags=["entity_vectors"])
        seen.append(str(checked.value))
        captured = capfd.readouterr()
        seen += [captured.out, captured.err]

        assert "127.0.0.1:9" in run.error  # the error says where, just not the password
        for text in seen:
            assert CLICKHOUSE_SECRET not in text and OPENAI_SECRET not in text

    def test_a_worker_refusing_to_start_prints_no_secret(self) -> None:
        env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "tests.settings",
            "CLICKHOUSE_URL": f"ftp://default:{CLICKHOUSE_SECRET}@127.0.0.1:9/default",
            "CELERY_BROKER_URL": f"redis://:{CLICKHOUSE_SECRET}@127.0.0.1:6379/11",
        }
        worker = subprocess.run(
            [sys.executable, "-m", "celery", "-A", "app", "worker", "--pool", "solo", "--loglevel", "INFO"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )

        assert worker.returncode != 0
        assert "CLICKHOUSE_URL=" in worker.stderr and "is not understood" in worker.stderr
        assert CLICKHOUSE_SECRET not in worker.stderr + worker.stdout
