"""A run's figures from its batches: what a failed batch paid for still counts."""

from __future__ import annotations

from typing import Any

import pytest

from entity_vectors.models import SyncRun
from entity_vectors.store import EmbeddingStore
from tests.conftest import run_workflow
from tests.factories import make_action, make_team
from tests.support.openai_server import OpenAIServer

pytestmark = pytest.mark.django_db


class TestCountsAfterAFailure:
    """A batch that fails after saving its summaries still reports them (and their tokens)."""

    def test_summaries_saved_before_a_failure_are_counted(
        self, llm: OpenAIServer, embedded_store: EmbeddingStore, settings: Any
    ) -> None:
        settings.ENTITY_VECTORS_PROVIDER_MAX_RETRIES = 0
        settings.ENTITY_VECTORS_TASK_MAX_RETRIES = 0
        for index in range(3):
            make_action(make_team(), name=f"Counted {index}")
        llm.fail_next(5, status=503, path="/embeddings")

        run = run_workflow("action")

        assert run.status == SyncRun.Status.FAILED
        assert run.summarized == 3 and run.prompt_tokens > 0
        assert run.embedded == 0 and run.inserted == 0
        llm.reset()
        retry = run_workflow("action")
        assert retry.summarized == 0 and retry.summaries_reused == 3 and llm.chat_requests() == []
