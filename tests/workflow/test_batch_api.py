"""Backfills through the Batch API: half price, matched by custom_id, nothing lost or paid twice."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import pytest
from django.core.management.base import CommandError

from app.models import Action
from entity_vectors.core.inputs import SyncEntityVectorsInputs
from entity_vectors.models import BatchApiJob, BatchApiRequest, EntityFailure, ProviderBatch, SyncRun
from entity_vectors.providers.pricing import cost
from entity_vectors.search.query import search_entities
from entity_vectors.store import EmbeddingStore
from entity_vectors.tasks.schedule import build_beat_schedule
from entity_vectors.workflow.batch_api import poll as batchapi_poll
from entity_vectors.workflow.batch_api import submit as batchapi
from entity_vectors.workflow.dry_run import dry_run
from entity_vectors.workflow.executor import write_job_inline
from tests.conftest import run_command, run_workflow
from tests.factories import make_action, make_team
from tests.support.openai_server import OpenAIServer

pytestmark = pytest.mark.django_db


def inputs(**fields: Any) -> SyncEntityVectorsInputs:
    return SyncEntityVectorsInputs(domain="action", delay_between_batches=0, **fields)


def poll_until_done(limit: int = 10) -> BatchApiJob:
    for _ in range(limit):
        results = batchapi_poll.poll_jobs(write=write_job_inline)
        if not results:
            break
    job = BatchApiJob.objects.latest("pk")
    assert job.status == BatchApiJob.Status.DONE, batchapi.describe(job)
    return job


def live_requests(server: OpenAIServer) -> dict[str, int]:
    """Chat and embeddings requests made outside the Batch API."""
    return {"chat": len(server.chat_requests()), "embeddings": len(server.embedding_requests())}


def batch_lines(server: OpenAIServer, endpoint: str) -> list[dict[str, Any]]:
    """Every request line of every batch the server was asked to run on `endpoint`."""
    files = server.files
    lines = []
    for batch in server.batches:
        if batch["endpoint"] == endpoint:
            lines += [json.loads(line) for line in files[batch["input_file_id"]].decode().splitlines()]
    return lines


def synced(store: EmbeddingStore) -> set[int]:
    return {int(row.id) for row in store.latest_rows("action") if not row.is_deleted}


class TestBackfill:
    """A backfill goes summaries -> vectors -> one writing run, each request sent and paid once."""

    def test_results_are_matched_by_custom_id_and_written_through_the_ledger(
        self, llm: OpenAIServer, embedded_store: EmbeddingStore
    ) -> None:
        team = make_team()
        actions = [make_action(team, name=f"Backfilled action {index}") for index in range(12)]
        llm.batch_output_shuffled = True

        job = batchapi.start_job(inputs())
        assert job.status == BatchApiJob.Status.SUMMARIZING
        assert live_requests(llm) == {"chat": 0, "embeddings": 0}
        chat_lines = batch_lines(llm, "/v1/chat/completions")
        assert len(chat_lines) == 12 and len({line["custom_id"] for line in chat_lines}) == 12

        job = poll_until_done()

        assert synced(embedded_store) == {action.pk for action in actions}
        assert len(batch_lines(llm, "/v1/embeddings")) == 12
        assert live_requests(llm) == {"chat": 0, "embeddings": 0}
        # Each entity got its own summary back (not a neighbour's: the output was shuffled).
        for action in Action.objects.filter(pk__in=[a.pk for a in actions]):
            assert action.name in action.summary
        run = SyncRun.objects.get(pk=job.run_id)
        assert run.kind == SyncRun.Kind.BATCH_API and run.status == SyncRun.Status.SUCCEEDED
        assert run.provider_requests == 0 and run.cost_usd == 0
        expected = cost("gpt-4.1-mini", job.prompt_tokens, job.completion_tokens, batch=True) + cost(
            "text-embedding-3-small", job.embedding_tokens, batch=True
        )
        assert job.prompt_tokens > 0 and job.embedding_tokens > 0
        assert job.cost_usd == expected.quantize(Decimal("0.000001"))
        assert (
            expected
            == (
                cost("gpt-4.1-mini", job.prompt_tokens, job.completion_tokens)
                + cost("text-embedding-3-small", job.embedding_tokens)
            )
            / 2
        )
        assert not BatchApiRequest.objects.exists()  # the job's scratch rows are gone
        # The next run has nothing to do.
        after = run_workflow("action")
        assert after.summarized == after.embedded == after.provider_requests == 0
        assert live_requests(llm) == {"chat": 0, "embeddings": 0}
        hits = search_entities("action", team.pk, "Backfilled action 3", limit=1)
        assert hits and hits[0].id == str(actions[3].pk)

    def test_failed_lines_are_failures_and_stay_eligible(
        self, llm: OpenAIServer, embedded_store: EmbeddingStore
    ) -> None:
        team = make_team()
        good = [make_action(team, name=f"Fine action {index}") for index in range(5)]
        bad = [make_action(team, name=f"Refused action {index}") for index in range(2)]
        llm.fail_batch_lines("Refused action", status=500)

        batchapi.start_job(inputs())
        job = poll_until_done()

        assert synced(embedded_store) == {action.pk for action in good}
        assert set(job.failed) == {str(action.pk) for action in bad}
        failures = EntityFailure.objects.filter(domain="action")
        assert {row.entity_id for row in failures} == {str(action.pk) for action in bad}
        assert all("Batch API line failed (500)" in row.last_error for row in failures)
        assert live_requests(llm)["chat"] == 0  # not retried live in the same job
        assert dry_run(inputs()).total().summarize == 2  # still eligible

    def test_an_expired_batch_falls_back_to_the_normal_path(
        self, llm: OpenAIServer, embedded_store: EmbeddingStore
    ) -> None:
        team = make_team()
        actions = [make_action(team, name=f"Late action {index}") for index in range(6)]
        llm.expire_next_batch(completed=2)

        batchapi.start_job(inputs())
        job = poll_until_done()

        assert synced(embedded_store) == {action.pk for action in actions}
        assert job.failed == {}
        # The 2 lines that ran were taken; the 4 that never ran were summarized live.
        assert live_requests(llm)["chat"] == 4
        assert batch_lines(llm, "/v1/embeddings") and len(batch_lines(llm, "/v1/embeddings")) == 2

    def test_a_failed_batch_falls_back_to_the_normal_path(
        self, llm: OpenAIServer, embedded_store: EmbeddingStore
    ) -> None:
        actions = [make_action(make_team(), name=f"Unlucky action {index}") for index in range(3)]
        llm.fail_next_batch()

        batchapi.start_job(inputs())
        job = poll_until_done()

        assert synced(embedded_store) == {action.pk for action in actions}
        assert live_requests(llm) == {"chat": 3, "embeddings": 1}
        assert job.cost_usd == 0

    def test_a_lost_batch_creation_is_retried_with_the_uploaded_file(
        self, llm: OpenAIServer, embedded_store: EmbeddingStore
    ) -> None:
        actions = [make_action(make_team(), name=f"Retried action {index}") for index in range(4)]
        llm.fail_next(3, status=400, path="/batches")  # the create is refused (past the SDK's retries)

        job = batchapi.start_job(inputs())

        batch = ProviderBatch.objects.get(job=job)
        assert batch.status == ProviderBatch.Status.PREPARED and batch.input_file_id
        assert batch.submit_attempts == 1
        job.refresh_from_db()
        assert "prepared" in batchapi.describe(job) and "could not submit batch" in job.error
        poll_until_done()
        uploads = [r for r in llm.requests if r.path.endswith("/files") and r.status == 200]
        assert len(uploads) == 2  # the chat file once, then the embeddings file
        assert synced(embedded_store) == {action.pk for action in actions}


class TestRunsLeaveTheJobItsWork:
    """While a request is pending, runs do not pay for the same work at full price."""

    def test_a_run_above_the_threshold_hands_its_work_to_a_job(
        self, llm: OpenAIServer, embedded_store: EmbeddingStore, settings: Any
    ) -> None:
        settings.ENTITY_VECTORS_BATCH_API_THRESHOLD = 5
        llm.batch_processing_seconds = 3600  # the batch stays in progress
        team = make_team()
        actions = [make_action(team, name=f"Big backfill {index}") for index in range(6)]

        run = run_workflow("action")

        assert BatchApiJob.objects.get().status == BatchApiJob.Status.SUMMARIZING
        assert run.awaiting_batch_api == 6 and run.summarized == 0
        assert live_requests(llm) == {"chat": 0, "embeddings": 0}
        # An entity edited since the job started is handled now (the job's result would be stale).
        Action.objects.filter(pk=actions[0].pk).update(name="Edited meanwhile")
        again = run_workflow("action")
        assert again.summarized == 1 and again.awaiting_batch_api == 5
        assert synced(embedded_store) == {actions[0].pk}
        assert BatchApiJob.objects.get().status == BatchApiJob.Status.SUMMARIZING

    def test_no_openai_no_batch_api(self, offline: None, settings: Any) -> None:
        make_action(make_team())

        with pytest.raises(CommandError, match="the Batch API is OpenAI's"):
            run_command("sync_entity_vectors", "--domain", "action", "--batch-api")
        assert not BatchApiJob.objects.exists()
        assert "entity-vectors-batch-api" not in build_beat_schedule()

    def test_the_poll_is_on_the_beat_schedule_with_openai(self, llm: OpenAIServer) -> None:
        entry = build_beat_schedule()["entity-vectors-batch-api"]

        assert entry["task"] == "ai-sync-entity-vectors-batch-api"
        assert entry["schedule"].total_seconds() == 60


class TestCommand:
    """`sync_entity_vectors --batch-api [--wait]`."""

    def test_wait_follows_the_job_to_the_end(self, llm: OpenAIServer, embedded_store: EmbeddingStore) -> None:
        actions = [make_action(make_team(), name=f"Command action {index}") for index in range(3)]

        out, _ = run_command("sync_entity_vectors", "--domain", "action", "--batch-api", "--wait")

        assert "Batch API job" in out and ": done;" in out and "(Batch API price)" in out
        assert synced(embedded_store) == {action.pk for action in actions}

    def test_without_wait_it_says_who_polls(self, llm: OpenAIServer, embedded_store: EmbeddingStore) -> None:
        make_action(make_team(), name="Queued action")

        out, _ = run_command("sync_entity_vectors", "--domain", "action", "--batch-api")

        assert "summarizing" in out and "beat polls the job every 60s" in out
        again, _ = run_command("sync_entity_vectors", "--domain", "action", "--batch-api")
        assert "already in progress" in again
        assert BatchApiJob.objects.count() == 1


def test_jobs_show_in_the_status_and_the_admin(
    llm: OpenAIServer, embedded_store: EmbeddingStore, client: Any
) -> None:
    from django.contrib.auth.models import User

    llm.batch_processing_seconds = 3600
    make_action(make_team(), name="Watched action")
    job = batchapi.start_job(inputs())

    out, _ = run_command("entity_vectors_status", "--domain", "action")
    client.force_login(User.objects.create_superuser("admin", "admin@example.com", "pw"))
    listing = client.get("/admin/entity_vectors/batchapijob/")
    detail = client.get(f"/admin/entity_vectors/batchapijob/{job.pk}/change/")

    assert f"Batch API job {job.pk} of action: summarizing" in out and "chat submitted (validating)" in out
    assert listing.status_code == 200 and b"summarizing" in listing.content
    assert detail.status_code == 200 and b"/v1/chat/completions" in detail.content
