"""A worker with a thread pool runs several batches of a run at once in one process."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from entity_vectors.models import SyncRun, SyncRunBatch
from entity_vectors.store import EmbeddingStore
from entity_vectors.tasks import sync_entities
from tests.e2e.conftest import start_worker_nodes, wait_for_run
from tests.factories import make_action, make_team
from tests.support.openai_content import embed_text
from tests.support.openai_server import OpenAIServer
from tests.support.processes import Service

pytestmark = pytest.mark.slow

QUEUE = "ev-threads-test"


@pytest.fixture
def thread_worker(service_env: dict[str, str], service_logs: Path, settings: Any) -> Iterator[list[Service]]:
    """One worker process with 4 threads, on a queue of its own."""
    settings.ENTITY_VECTORS_QUEUE = QUEUE
    nodes = start_worker_nodes(
        ("threads1",), QUEUE, {**service_env, "ENTITY_VECTORS_QUEUE": QUEUE}, service_logs, "threads", 4
    )
    try:
        yield nodes
    finally:
        for node in nodes:
            node.stop()


def test_batches_overlap_in_one_process_and_stay_aligned_and_bounded(
    thread_worker: list[Service], use_server_store: EmbeddingStore, llm: OpenAIServer, transactional_db: Any
) -> None:
    llm.latency = 0.1
    team = make_team()
    actions = [make_action(team, name=f"Exported report {index:02d}") for index in range(40)]

    run = wait_for_run(
        sync_entities.apply_async(
            args=["action"],
            kwargs={"summarize_batch_size": 4, "max_parallel_requests": 3, "delay_between_batches": 0},
            queue=QUEUE,
        ).get(timeout=60)["run_id"],
        timeout=120,
    )

    assert run.status == SyncRun.Status.SUCCEEDED, run.error
    assert (run.selected, run.summarized, run.embedded, run.inserted) == (40, 40, 40, 40)
    assert len(llm.chat_requests()) == 40  # nothing paid twice
    assert llm.peak_in_flight <= 3  # one limit for every thread's batches
    batches = list(SyncRunBatch.objects.filter(run=run).order_by("started_at"))
    assert len({batch.worker_pid for batch in batches}) == 1
    overlapping = [
        (earlier.index, later.index)
        for earlier, later in itertools.pairwise(batches)
        if later.started_at < earlier.finished_at
    ]
    assert overlapping, "no two batches of the process ran at the same time"
    rows = {row.id: row for row in use_server_store.latest_rows("action") if not row.is_deleted}
    assert sorted(rows) == sorted(str(action.pk) for action in actions)
    for action in actions:
        action.refresh_from_db()
        row = rows[str(action.pk)]
        assert action.summary and row.text == action.summary
        # Each vector is its own summary's: nothing crossed between the threads' batches.
        np.testing.assert_allclose(row.vector, embed_text(row.text, 256), rtol=1e-5, atol=1e-6)
