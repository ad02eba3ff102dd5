"""The change log and where periodic sweeps stopped."""

from __future__ import annotations

from django.db import models


class EntityChange(models.Model):
    """The change log: an entity of `domain` changed (or was deleted) at sequence number `seq`.

    Written by database triggers on the host's tables (so `QuerySet.update()`, raw SQL and
    cascades are seen), by signals where triggers are not installed, and by the fast lane. A row
    goes once every tracked embedding version has confirmed a write (or a skip) at least as new.
    """

    domain = models.CharField(max_length=100)
    entity_id = models.CharField(max_length=255)
    seq = models.PositiveBigIntegerField()
    changed_at = models.DateTimeField()
    # The change (its seq) at which the entity was set aside for the runs: a run's snapshot holds
    # it, a batch found it unable to go now (parked, over its owner's budget, left to a Batch API
    # job), or a fast-lane pass left it to a run (more changes than a pass takes). The fast lane
    # passes over it until a newer change.
    held_seq = models.PositiveBigIntegerField(null=True, blank=True)

    class Meta:
        constraints = (
            models.UniqueConstraint(fields=("domain", "entity_id"), name="entity_vectors_change_key"),
        )
        indexes = (
            models.Index(fields=("domain", "seq"), name="entity_vectors_change_seq"),
            # The fast lane's changes (none set aside): the poll's probe, one index lookup when
            # nothing is pending.
            models.Index(
                fields=("domain", "seq"),
                name="entity_vectors_change_fresh",
                condition=models.Q(held_seq__isnull=True) | models.Q(held_seq__lt=models.F("seq")),
            ),
        )

    def __str__(self) -> str:
        return f"{self.domain} {self.entity_id} changed (seq {self.seq})"


class SweepState(models.Model):
    """Where a periodic sweep stopped (the reconcile's position per domain)."""

    name = models.CharField(max_length=200, primary_key=True)
    state = models.JSONField(default=dict)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return self.name
