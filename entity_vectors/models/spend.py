"""Spend per budget owner and month, and the reservations batches hold against it."""

from __future__ import annotations

from django.db import models


class Spend(models.Model):
    """What a budget owner (an organization, by default) spent and has reserved in one month."""

    owner = models.CharField(max_length=100)
    month = models.DateField()
    spent_usd = models.DecimalField(max_digits=14, decimal_places=6, default=0)
    reserved_usd = models.DecimalField(max_digits=14, decimal_places=6, default=0)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = (models.UniqueConstraint(fields=("owner", "month"), name="entity_vectors_spend_key"),)

    def __str__(self) -> str:
        return f"{self.owner} {self.month:%Y-%m}: ${self.spent_usd} spent, ${self.reserved_usd} reserved"


class BudgetReservation(models.Model):
    """One batch's reservation against an owner's month, with its holder and a lease.

    `Spend.reserved_usd` is the sum of the live reservations. A batch settles its own when it is
    done; the reservations of a run closed without them (a killed worker) are released when the run
    is closed, and any left past its lease by the sweeper.
    """

    owner = models.CharField(max_length=100)
    month = models.DateField()
    amount_usd = models.DecimalField(max_digits=14, decimal_places=6)
    run_id = models.UUIDField(null=True, blank=True, db_index=True)
    expires_at = models.DateTimeField(db_index=True)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"${self.amount_usd} of {self.owner} {self.month:%Y-%m} held by run {self.run_id}"
