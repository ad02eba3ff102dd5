"""System checks report settings that cannot work, with a hint."""

from __future__ import annotations

from typing import Any

import pytest

from entity_vectors.checks import check_settings
from entity_vectors.conf.startup import worker_problems


class TestSettingsChecks:
    """Bad settings are errors at start-up, not at the first run."""

    @pytest.mark.parametrize(
        ("name", "value", "message"),
        [
            pytest.param("ENTITY_VECTORS_SUMMARIZER", "claude", "not a known summarizer", id="summarizer"),
            pytest.param("ENTITY_VECTORS_EMBEDDER", "word2vec", "not a known embedder", id="embedder"),
            pytest.param("CLICKHOUSE_URL", "mysql://x", "is not understood", id="url"),
            pytest.param("ENTITY_VECTORS_EMBEDDING_DIMENSIONS", "many", "is not an integer", id="dimensions"),
            pytest.param("ENTITY_VECTORS_CLICKHOUSE_TABLE", "x; DROP", "plain identifier", id="table"),
            pytest.param("ENTITY_VECTORS_SCHEDULES", '{"action": 0}', "must be at least 1", id="schedule"),
        ],
    )
    def test_a_bad_setting_is_an_error_naming_it(
        self, settings: Any, name: str, value: str, message: str
    ) -> None:
        setattr(settings, name, value)

        errors = check_settings()

        assert any(name in error.msg and message in error.msg for error in errors), errors
        assert all(error.hint for error in errors)

    def test_openai_without_a_key_is_an_error(self, settings: Any) -> None:
        settings.ENTITY_VECTORS_SUMMARIZER = "openai"
        settings.OPENAI_API_KEY = ""

        (error,) = check_settings()

        assert "OPENAI_API_KEY is not set" in error.msg

    def test_the_default_settings_pass(self) -> None:
        assert check_settings() == []


class TestWorkerChecks:
    """Worker processes share the embedded store through the first of them, unless sharing is off."""

    def test_prefork_on_the_shared_embedded_store_is_fine(self) -> None:
        assert worker_problems("celery.concurrency.prefork", 4) == []

    def test_prefork_on_the_embedded_store_without_sharing_is_refused(self, settings: Any) -> None:
        settings.ENTITY_VECTORS_EMBEDDED_SHARE = "false"

        (problem,) = worker_problems("celery.concurrency.prefork", 4)

        assert "cannot be shared by 4 worker processes" in problem.msg
        assert "ENTITY_VECTORS_EMBEDDED_SHARE" in problem.hint and "CLICKHOUSE_URL" in problem.hint

    @pytest.mark.parametrize(
        ("pool", "concurrency"),
        [
            pytest.param("celery.concurrency.solo", 1, id="solo"),
            pytest.param("celery.concurrency.prefork", 1, id="one"),
        ],
    )
    def test_a_single_process_is_fine(self, pool: str, concurrency: int) -> None:
        assert worker_problems(pool, concurrency) == []

    def test_a_server_store_is_fine_with_any_pool(self, settings: Any) -> None:
        settings.CLICKHOUSE_URL = "http://default:@127.0.0.1:8123/default"
        assert worker_problems("celery.concurrency.prefork", 8) == []


class TestWorkerRefusesToShareTheEmbeddedStore:
    """A real `celery worker -c 2` on the embedded store with sharing off exits at once with the reason."""

    def test_prefork_worker_exits_with_the_hint(self, tmp_path: Any) -> None:
        import os
        import subprocess
        import sys

        from tests.support.processes import ROOT

        env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "tests.settings",
            "CLICKHOUSE_URL": f"chdb://{tmp_path}",
            "ENTITY_VECTORS_EMBEDDED_SHARE": "false",
        }
        result = subprocess.run(
            [sys.executable, "-m", "celery", "-A", "app", "worker", "-c", "2", "-Q", "max-ai-task-queue"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )

        assert result.returncode == 2
        assert "cannot be shared by 2 worker processes" in result.stderr
        assert "--pool solo" in result.stderr
