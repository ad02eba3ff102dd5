"""A monthly budget holds across concurrent batches on two worker processes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from app.models import Action
from entity_vectors.core.registry import get_entity_config
from entity_vectors.models import Spend, SyncRun, SyncRunBatch
from entity_vectors.providers.pricing import cost
from entity_vectors.providers.text import MAX_SUMMARY_TOKENS, count_tokens
from entity_vectors.store import EmbeddingStore
from entity_vectors.tasks import sync_entities
from tests.e2e.conftest import start_worker_nodes, wait_for_run
from tests.factories import make_action, make_team
from tests.support.openai_server import OpenAIServer
from tests.support.processes import Service

pytestmark = pytest.mark.slow

QUEUE = "ev-budget-test"
# Expensive prices, so that a few dozen summaries reach a small cap.
PRICES = {
    "gpt-4.1-mini": {"input": 100, "output": 100},
    "text-embedding-3-small": {"input": 100, "output": 0},
}
BATCH = 4
CAPPED_ACTIONS = 40


@pytest.fixture
def budget_workers(service_env: dict[str, str], service_logs: Path, settings: Any) -> Iterator[Any]:
    """Two worker processes on a queue of their own, started with the budget the test sets."""
    started: list[Service] = []

    def start(budgets: dict[str, str]) -> list[Service]:
        env = {
            **service_env,
            "ENTITY_VECTORS_QUEUE": QUEUE,
            "ENTITY_VECTORS_PRICES": json.dumps(PRICES),
            "ENTITY_VECTORS_BUDGETS": json.dumps(budgets),
        }
        started.extend(start_worker_nodes(("budget1", "budget2"), QUEUE, env, service_logs))
        return started

    settings.ENTITY_VECTORS_QUEUE = QUEUE
    settings.ENTITY_VECTORS_PRICES = PRICES
    try:
        yield start
    finally:
        for service in started:
            service.stop()


def worst_case_per_action(action: Action) -> Decimal:
    """What the budget reserves for one action not yet summarized (its prompt, the summary cap,
    and an embedding of a summary at its cap)."""
    config = get_entity_config("action")
    model, embedding_model = "gpt-4.1-mini", "text-embedding-3-small"
    tokens = (
        count_tokens(config.get_summary_prompt(), model) + count_tokens(config.describe(action), model) + 8
    )
    return cost(model, tokens, MAX_SUMMARY_TOKENS) + cost(embedding_model, MAX_SUMMARY_TOKENS)


def test_the_cap_holds_within_one_batch_with_two_worker_processes(
    budget_workers: Any, use_server_store: EmbeddingStore, llm: OpenAIServer, transactional_db: Any
) -> None:
    llm.latency = 0.05
    capped, free = make_team(), make_team()
    actions = [
        make_action(capped, name=f"Capped action {index:02d}", description="the same words " * 10)
        for index in range(CAPPED_ACTIONS)
    ]
    for index in range(5):
        make_action(free, name=f"Free action {index}")
    worst = worst_case_per_action(actions[0])
    cap = (worst * Decimal("12.5")).quantize(Decimal("0.000001"))  # room for 12 at their worst
    budget_workers({str(capped.organization_id): str(cap)})

    run = wait_for_run(
        sync_entities.apply_async(
            args=["action"],
            kwargs={"summarize_batch_size": BATCH, "delay_between_batches": 0},
            queue=QUEUE,
        ).get(timeout=60)["run_id"],
        timeout=120,
    )

    assert run.status == SyncRun.Status.SUCCEEDED, run.error
    assert len(set(SyncRunBatch.objects.filter(run=run).values_list("worker_pid", flat=True))) == 2
    spend = Spend.objects.get(owner=str(capped.organization_id))
    assert spend.reserved_usd == 0
    assert spend.spent_usd <= cap, "the cap was passed"
    # Stopped within one batch of the cap: another batch at its worst would not have fit.
    assert cap - spend.spent_usd < BATCH * worst
    landed = {row.id for row in use_server_store.latest_rows("action") if not row.is_deleted}
    capped_ids = {str(action.pk) for action in actions}
    assert 0 < run.over_budget < CAPPED_ACTIONS
    assert len(landed & capped_ids) == CAPPED_ACTIONS - run.over_budget
    assert {str(pk) for pk in Action.objects.filter(team=free).values_list("pk", flat=True)} <= landed
    # Only what landed was paid for: no request was sent for an entity that waits.
    assert len(llm.chat_requests()) == CAPPED_ACTIONS - run.over_budget + 5


def test_a_killed_worker_leaves_nothing_reserved_once_the_sweeper_closes_its_run(
    budget_workers: Any, use_server_store: EmbeddingStore, llm: OpenAIServer, transactional_db: Any
) -> None:
    import os
    import signal
    from datetime import timedelta

    from django.utils import timezone

    from app.celery import app as celery_app
    from entity_vectors.models import BudgetReservation
    from entity_vectors.workflow import sweep
    from tests.support.processes import wait_until

    llm.latency = 30  # the batch reserves, then waits on the provider
    team = make_team()
    for index in range(3):
        make_action(team, name=f"Reserved action {index}")
    owner = str(team.organization_id)
    workers = budget_workers({owner: "100"})
    run_id = sync_entities.apply_async(args=["action"], kwargs={"delay_between_batches": 0}, queue=QUEUE).get(
        timeout=60
    )["run_id"]
    wait_until(
        lambda: Spend.objects.filter(owner=owner, reserved_usd__gt=0).exists(),
        timeout=60,
        what="a reservation",
    )
    reserved = Spend.objects.get(owner=owner).reserved_usd

    for worker in workers:  # every worker and its pool process, mid-batch
        os.killpg(worker.process.pid, signal.SIGKILL)
        worker.process.wait(10)
    celery_app.control.purge()
    SyncRun.objects.filter(pk=run_id).update(lease_expires_at=timezone.now() - timedelta(seconds=1))
    llm.latency = 0

    swept = sweep()

    assert run_id in swept.closed
    assert swept.released_usd == 0  # the run's close released it, not the lease
    spend = Spend.objects.get(owner=owner)
    assert reserved > 0 and spend.reserved_usd == 0 and spend.spent_usd == 0
    assert not BudgetReservation.objects.exists()
    assert SyncRun.objects.get(pk=run_id).status == SyncRun.Status.FAILED
