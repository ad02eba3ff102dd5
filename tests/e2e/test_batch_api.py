"""A Batch API backfill on real workers: failed lines, a duplicate poll, a process killed mid-submission."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from decimal import Decimal

import pytest

from entity_vectors.core.inputs import SyncEntityVectorsInputs
from entity_vectors.models import BatchApiJob, EntityFailure, ProviderBatch, SyncRun
from entity_vectors.providers.pricing import cost
from entity_vectors.store import EmbeddingStore
from entity_vectors.tasks import poll_batch_api
from entity_vectors.workflow.dry_run import dry_run
from tests.factories import make_action, make_team
from tests.support.openai_server import OpenAIServer
from tests.support.processes import ROOT, wait_until

pytestmark = pytest.mark.slow


def lines_of(server: OpenAIServer, endpoint: str) -> list[list[str]]:
    """The custom_ids of each batch the server was asked to run on `endpoint`."""
    files = server.files
    return [
        [json.loads(line)["custom_id"] for line in files[batch["input_file_id"]].decode().splitlines()]
        for batch in server.batches
        if batch["endpoint"] == endpoint
    ]


def test_a_backfill_of_200_with_failed_lines_a_duplicate_poll_and_a_killed_submitter(
    pipeline: EmbeddingStore, llm: OpenAIServer, service_env: dict[str, str]
) -> None:
    team = make_team()
    actions = [make_action(team, name=f"Backfill action {index}") for index in range(197)]
    poison = [make_action(team, name=f"Poison line {index}") for index in range(3)]
    llm.fail_batch_lines("Poison line", status=500)
    # The batch create hangs: the submitting process is killed while the provider still makes it.
    llm.hang_next(1, 3.0, path="/batches")

    submitter = subprocess.Popen(
        [sys.executable, "manage.py", "sync_entity_vectors", "--domain", "action", "--batch-api"],
        cwd=ROOT,
        env=service_env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_until(
        lambda: any(r.path.endswith("/batches") and r.status is None for r in llm.requests),
        timeout=60,
        what="the batch create to be in flight",
    )
    os.killpg(submitter.pid, signal.SIGKILL)
    submitter.wait(10)
    job = BatchApiJob.objects.get()
    chat = ProviderBatch.objects.get(job=job)
    assert chat.status == ProviderBatch.Status.PREPARED and chat.input_file_id  # uploaded, not recorded
    wait_until(lambda: llm.batches, timeout=10, what="the provider to create the batch anyway")

    # Two polls delivered at once, to two worker processes: one polls, the other leaves it.
    first, second = poll_batch_api.delay(), poll_batch_api.delay()
    answers = [first.get(timeout=120), second.get(timeout=120)]
    assert sum(entry["polled"] for answer in answers for entry in answer["jobs"]) >= 1

    def done() -> bool:
        poll_batch_api.delay().get(timeout=120)
        return BatchApiJob.objects.get(pk=job.pk).status == BatchApiJob.Status.DONE

    wait_until(done, timeout=180, what="the job to be done", interval=0.5)
    job.refresh_from_db()

    # Each request sent (and paid) once: one chat batch of 200 lines, one embeddings batch of 197.
    chat_batches, embedding_batches = lines_of(llm, "/v1/chat/completions"), lines_of(llm, "/v1/embeddings")
    assert [len(ids) for ids in chat_batches] == [200]
    assert [len(ids) for ids in embedding_batches] == [197]
    assert not llm.chat_requests() and not llm.embedding_requests()
    uploads = [r for r in llm.requests if r.path.endswith("/files") and r.status == 200]
    assert len(uploads) == 2
    # 197 synced, 3 still eligible (and counted as failed once).
    live = {int(row.id) for row in pipeline.latest_rows("action") if not row.is_deleted}
    assert live == {action.pk for action in actions}
    assert set(job.failed) == {str(action.pk) for action in poison}
    assert set(EntityFailure.objects.filter(failures=1).values_list("entity_id", flat=True)) == set(job.failed)
    plan = dry_run(SyncEntityVectorsInputs(domain="action"))
    assert plan.total().summarize == 3
    # The writing run made no provider call; the job paid the Batch API's half price.
    run = SyncRun.objects.get(pk=job.run_id)
    assert run.kind == SyncRun.Kind.BATCH_API and run.status == SyncRun.Status.SUCCEEDED
    assert run.inserted == 197 and run.provider_requests == 0
    expected = cost("gpt-4.1-mini", job.prompt_tokens, job.completion_tokens, batch=True) + cost(
        "text-embedding-3-small", job.embedding_tokens, batch=True
    )
    assert job.cost_usd == expected.quantize(Decimal("0.000001")) and job.cost_usd > 0
