"""Monthly spend caps per budget owner (an organization, by default), never exceeded.

Before a batch calls a provider, it reserves each entity's worst-case cost against its owner's
monthly budget, in one transaction that locks the owner's `Spend` row: concurrent batches on any
number of workers queue on that lock, so the sum of what is spent and reserved never passes the
budget. An entity that does not fit waits (counted as over budget) and stays eligible for a later
month or a raised budget. After the provider calls, what the provider's usage says was spent
replaces the reservation, all of it: a provider that answers beyond the worst case (a server that
ignores `max_tokens`) is booked in full, and the owner's next batches wait until the budget has
room again.

A reservation has a holder (its run) and a lease (`BudgetReservation`): a batch whose worker was
killed never settles it, so the run's close releases what its batches still hold, and the sweeper
releases whatever outlived its lease.

The worst case of a summary is its prompt (counted with the real tokenizer) plus the summary's
token cap, and of an embedding its text (or the summary cap, for a summary not yet written).
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from django.db import transaction
from django.db.models import F
from django.utils import timezone

from entity_vectors import conf
from entity_vectors.core.entity_config import EntityConfig
from entity_vectors.models import BudgetReservation, Spend
from entity_vectors.providers.openai import summary_prompt_tokens
from entity_vectors.providers.pricing import cost
from entity_vectors.providers.text import MAX_SUMMARY_TOKENS, count_tokens
from entity_vectors.workflow.context import EmbeddingVersionSpec
from entity_vectors.workflow.plan import EMBED, EntityWork

# A reservation outlives the longest batch task (20 minutes, and its hard limit a minute later):
# one still held after this was made by a batch that will not settle it.
RESERVATION_LEASE = datetime.timedelta(minutes=30)


def month_of(moment: datetime.datetime | None = None) -> datetime.date:
    """The first day of the (UTC) month a spend counts in."""
    return (moment or timezone.now()).astimezone(datetime.UTC).date().replace(day=1)


def budget_of(owner: str) -> Decimal | None:
    """An owner's monthly budget: ENTITY_VECTORS_BUDGETS, else ENTITY_VECTORS_MONTHLY_BUDGET_USD."""
    return conf.budgets().get(owner, conf.monthly_budget_usd())


def enabled() -> bool:
    """Whether any budget is set."""
    return conf.monthly_budget_usd() is not None or bool(conf.budgets())


@dataclass
class Reservation:
    """What one batch reserved, per owner, for one month (and the rows that hold it)."""

    month: datetime.date
    by_owner: dict[str, Decimal] = field(default_factory=dict)
    rows: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> Decimal:
        """The batch's whole reservation."""
        return sum(self.by_owner.values(), Decimal(0))


def owners(config: EntityConfig[Any], works: Iterable[EntityWork]) -> dict[Any, str]:
    """Each entity's budget owner (as text), read in one query."""
    lookup = config.get_budget_owner_field()
    pks = [work.pk for work in works]
    if lookup is None or not pks:
        return {}
    return {
        pk: str(owner)
        for pk, owner in config.get_queryset().filter(pk__in=pks).values_list("pk", lookup)
        if owner is not None
    }


def worst_case(work: EntityWork, prompt: str, versions: tuple[EmbeddingVersionSpec, ...]) -> Decimal:
    """The most the entity's provider calls in this batch can cost."""
    amount = Decimal(0)
    if work.summary is None:
        if conf.summarizer_name() == "openai":
            model = conf.chat_model()
            amount += cost(model, summary_prompt_tokens(prompt, work.description, model), MAX_SUMMARY_TOKENS)
        for version in versions:
            if version.embedder.name == "openai":
                amount += cost(version.embedder.model, MAX_SUMMARY_TOKENS)
        return amount
    for version_work in work.versions.values():
        embedder = version_work.spec.embedder
        if version_work.action == EMBED and embedder.name == "openai":
            amount += cost(embedder.model, count_tokens(work.summary, embedder.model))
    return amount


def reserve(
    config: EntityConfig[Any],
    works: list[EntityWork],
    versions: tuple[EmbeddingVersionSpec, ...],
    holder: str | None = None,
) -> tuple[Reservation, list[EntityWork]]:
    """Reserve each entity's worst case against its owner's budget, held by run `holder`; returns
    the entities that do not fit."""
    reservation = Reservation(month=month_of())
    prompt = config.get_summary_prompt()
    owner_of = owners(config, works)
    costs = {work.key: worst_case(work, prompt, versions) for work in works}
    capped = {owner: budget for owner in set(owner_of.values()) if (budget := budget_of(owner)) is not None}
    if not capped:
        return reservation, []
    refused: list[EntityWork] = []
    with transaction.atomic():
        Spend.objects.bulk_create(
            [Spend(owner=owner, month=reservation.month) for owner in sorted(capped)], ignore_conflicts=True
        )
        rows = {
            row.owner: row
            for row in Spend.objects.select_for_update()
            .filter(owner__in=sorted(capped), month=reservation.month)
            .order_by("owner")
        }
        room = {owner: capped[owner] - rows[owner].spent_usd - rows[owner].reserved_usd for owner in capped}
        for work in works:
            owner = owner_of.get(work.pk)
            if owner not in capped:
                continue
            if costs[work.key] > room[owner]:
                refused.append(work)
                continue
            room[owner] -= costs[work.key]
            reservation.by_owner[owner] = reservation.by_owner.get(owner, Decimal(0)) + costs[work.key]
        expires_at = timezone.now() + RESERVATION_LEASE
        for owner, amount in reservation.by_owner.items():
            Spend.objects.filter(pk=rows[owner].pk).update(reserved_usd=F("reserved_usd") + amount)
            held = BudgetReservation.objects.create(
                owner=owner, month=reservation.month, amount_usd=amount, run_id=holder, expires_at=expires_at
            )
            reservation.rows[owner] = held.pk
    return reservation, refused


def settle(reservation: Reservation | None, spent: Decimal) -> None:
    """Replace a batch's reservation by what it spent, all of it (shared by owner in proportion to
    what each reserved, evenly where nothing was reserved).

    A reservation the run's close or the sweeper released meanwhile is not released twice; the
    spend is booked all the same.
    """
    if reservation is None or not reservation.by_owner:
        return
    total = reservation.total
    owners_ = sorted(reservation.by_owner)
    with transaction.atomic():
        for owner in owners_:
            reserved = reservation.by_owner[owner]
            share = spent * reserved / total if total else spent / len(owners_)
            held = BudgetReservation.objects.filter(pk=reservation.rows.get(owner, 0)).delete()[0]
            Spend.objects.filter(owner=owner, month=reservation.month).update(
                reserved_usd=F("reserved_usd") - (reserved if held else Decimal(0)),
                spent_usd=F("spent_usd") + share,
            )


def release(run_id: Any = None) -> Decimal:
    """Release the reservations still held by run `run_id` (closed: its batches will not settle
    them), or, without a run, every reservation past its lease. Returns the amount released."""
    held = BudgetReservation.objects.all()
    held = held.filter(run_id=run_id) if run_id is not None else held.filter(expires_at__lt=timezone.now())
    released = Decimal(0)
    with transaction.atomic():
        rows = list(held.select_for_update().order_by("pk"))
        for row in rows:
            Spend.objects.filter(owner=row.owner, month=row.month).update(
                reserved_usd=F("reserved_usd") - row.amount_usd
            )
            released += row.amount_usd
        BudgetReservation.objects.filter(pk__in=[row.pk for row in rows]).delete()
    return released


def over_budget(month: datetime.date | None = None) -> list[Spend]:
    """Owners whose spend this month has reached their budget."""
    rows = Spend.objects.filter(month=month or month_of())
    return [row for row in rows if (budget := budget_of(row.owner)) is not None and row.spent_usd >= budget]
