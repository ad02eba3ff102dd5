"""Spend you can see, cap and plan: costs per run, monthly budgets, dry runs, parked entities."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from app.models import Action
from entity_vectors import conf
from entity_vectors.core.inputs import SyncEntityVectorsInputs
from entity_vectors.models import Spend
from entity_vectors.store import EmbeddingStore
from tests.conftest import run_command, run_workflow
from tests.factories import make_action, make_team
from tests.support.openai_server import OpenAIServer

pytestmark = pytest.mark.django_db


class TestCostPerRun:
    """Each run records its cost in dollars next to its tokens, from the price table."""

    def test_the_cost_follows_the_tokens_and_the_prices(
        self, llm: OpenAIServer, embedded_store: EmbeddingStore
    ) -> None:
        team = make_team()
        for index in range(3):
            make_action(team, name=f"Priced {index}")

        run = run_workflow("action")

        expected = (
            Decimal("0.40") * run.prompt_tokens
            + Decimal("1.60") * run.completion_tokens
            + Decimal("0.02") * run.embedding_tokens
        ) / 1_000_000
        assert run.cost_usd > 0 and abs(run.cost_usd - expected) < Decimal("0.000002")
        out, _ = run_command("entity_vectors_status", "--domain", "action")
        assert conf.format_usd(run.cost_usd) in out

    def test_a_price_table_in_the_settings_wins(
        self, llm: OpenAIServer, embedded_store: EmbeddingStore, settings: Any
    ) -> None:
        settings.ENTITY_VECTORS_PRICES = {
            "gpt-4.1-mini": {"input": 0, "output": 0},
            "text-embedding-3-small": {"input": 1000},
        }
        make_action(make_team(), name="Expensive embedding")

        run = run_workflow("action")

        assert run.cost_usd == (Decimal(1000) * run.embedding_tokens / 1_000_000).quantize(
            Decimal("0.000001")
        )


class TestMonthlyBudget:
    """An organization's provider spend never passes its monthly budget; its entities wait instead."""

    def test_the_cap_holds_and_other_organizations_are_untouched(
        self, llm: OpenAIServer, embedded_store: EmbeddingStore, settings: Any
    ) -> None:
        capped, free = make_team(), make_team()
        for index in range(12):
            make_action(capped, name=f"Capped action {index}", description="x " * 40)
        for index in range(3):
            make_action(free, name=f"Free action {index}")
        # Expensive prices, so that a few summaries reach the cap.
        settings.ENTITY_VECTORS_PRICES = {"gpt-4.1-mini": {"input": 100, "output": 100}}
        settings.ENTITY_VECTORS_BUDGETS = {str(capped.organization_id): "0.25"}

        run = run_workflow("action", summarize_batch_size=4)

        spend = Spend.objects.get(owner=str(capped.organization_id))
        assert spend.spent_usd <= Decimal("0.25") and spend.reserved_usd == 0
        assert 0 < run.over_budget < 12
        landed = {row.id for row in embedded_store.latest_rows("action") if not row.is_deleted}
        capped_ids = {str(pk) for pk in Action.objects.filter(team=capped).values_list("pk", flat=True)}
        assert len(landed & capped_ids) == 12 - run.over_budget
        assert {str(pk) for pk in Action.objects.filter(team=free).values_list("pk", flat=True)} <= landed
        out, _ = run_command("entity_vectors_status", "--domain", "action")
        assert f"the last run left {run.over_budget} entities waiting" in out

        settings.ENTITY_VECTORS_BUDGETS = {str(capped.organization_id): "100"}  # the budget is raised
        later = run_workflow("action")
        assert later.over_budget == 0 and later.summarized == run.over_budget


class TestHonestSpend:
    """What the provider's usage says is booked, all of it, and reservations never outlive their run."""

    def test_a_server_that_ignores_max_tokens_is_booked_in_full_and_stops_the_next_batches(
        self, llm: OpenAIServer, embedded_store: EmbeddingStore, settings: Any
    ) -> None:
        settings.ENTITY_VECTORS_PRICES = {"gpt-4.1-mini": {"input": 100, "output": 100}}
        team = make_team()
        owner = str(team.organization_id)
        settings.ENTITY_VECTORS_BUDGETS = {owner: "1.00"}  # room for this one at its worst, about $0.05
        make_action(team, name="Talkative", description="TALKATIVE")
        llm.reply_when("TALKATIVE", content="A summary that never ends. " * 4000)  # 20,000 words

        run = run_workflow("action")

        spend = Spend.objects.get(owner=owner)
        assert run.completion_tokens > 10_000  # far past the 300 tokens asked for
        assert spend.spent_usd == run.cost_usd > Decimal("1.00")  # what the usage says, not the worst case
        assert spend.reserved_usd == 0
        make_action(team, name="Next one")
        llm.reset()
        after = run_workflow("action")
        assert after.over_budget == 1 and llm.requests == []  # the owner waits until the budget allows

    def test_a_run_closed_without_its_batch_releases_what_the_batch_reserved(
        self, llm: OpenAIServer, embedded_store: EmbeddingStore, settings: Any
    ) -> None:
        from entity_vectors import workflow
        from entity_vectors.core.registry import get_entity_config
        from entity_vectors.models import BudgetReservation
        from entity_vectors.workflow import budget
        from entity_vectors.workflow.plan import EntityWork

        settings.ENTITY_VECTORS_PRICES = {"gpt-4.1-mini": {"input": 100, "output": 100}}
        team = make_team()
        owner = str(team.organization_id)
        settings.ENTITY_VECTORS_BUDGETS = {owner: "10"}
        action = make_action(team, name="Reserved then abandoned")
        started = workflow.start_run(SyncEntityVectorsInputs(domain="action", delay_between_batches=0))
        work = EntityWork(pk=action.pk, key=str(action.pk), seq=0, state="live", team_id=team.id)
        work.description = "Reserved then abandoned"
        reservation, refused = budget.reserve(
            get_entity_config("action"), [work], started.context.versions, holder=started.context.run_id
        )
        assert not refused and Spend.objects.get(owner=owner).reserved_usd == reservation.total > 0

        workflow.close_run(started.context.run_id, error="abandoned: its worker was killed")

        assert Spend.objects.get(owner=owner).reserved_usd == 0
        assert not BudgetReservation.objects.exists()
        budget.settle(reservation, Decimal("0.01"))  # the batch settles after all: spend booked once
        spend = Spend.objects.get(owner=owner)
        assert (spend.reserved_usd, spend.spent_usd) == (0, Decimal("0.01"))

    def test_the_sweeper_releases_a_reservation_past_its_lease(
        self, llm: OpenAIServer, embedded_store: EmbeddingStore, settings: Any
    ) -> None:
        from datetime import timedelta

        from django.utils import timezone

        from entity_vectors.models import BudgetReservation
        from entity_vectors.workflow import sweep

        team = make_team()
        owner = str(team.organization_id)
        Spend.objects.create(
            owner=owner, month=timezone.now().date().replace(day=1), reserved_usd=Decimal("0.5")
        )
        BudgetReservation.objects.create(
            owner=owner,
            month=timezone.now().date().replace(day=1),
            amount_usd=Decimal("0.5"),
            run_id=None,
            expires_at=timezone.now() - timedelta(seconds=1),
        )

        assert sweep().released_usd == Decimal("0.5")
        assert Spend.objects.get(owner=owner).reserved_usd == 0 and not BudgetReservation.objects.exists()
