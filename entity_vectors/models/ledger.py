"""What ClickHouse holds and what was paid for: the ledger, summaries and failures per entity."""

from __future__ import annotations

from django.db import models


class LedgerEntry(models.Model):
    """What ClickHouse holds for one (domain, entity, embedding version): the pipeline's memory.

    `live_teams` lists every team whose key may hold a live row: the confirmed one plus any
    attempted write not yet confirmed, so that a crash between insert and confirm never leaves a
    row the ledger does not know of. `row_version` and the hashes describe the confirmed row.
    """

    domain = models.CharField(max_length=100)
    entity_id = models.CharField(max_length=255)
    embedding_version = models.PositiveIntegerField()
    team_id = models.BigIntegerField(null=True, blank=True)
    is_live = models.BooleanField(default=False)
    live_teams = models.JSONField(default=list)
    has_live = models.BooleanField(default=False)
    row_version = models.PositiveBigIntegerField(default=0)
    content_hash = models.CharField(max_length=64, blank=True, default="")
    text_hash = models.CharField(max_length=64, blank=True, default="")
    summary_input_hash = models.CharField(max_length=64, blank=True, default="")
    # The change-log sequence number the confirmed row reflects.
    source_seq = models.PositiveBigIntegerField(default=0)
    pending_version = models.PositiveBigIntegerField(null=True, blank=True)
    # What the newest unconfirmed write would have made live (so that, if it landed, the next run
    # can confirm it by copying its vector instead of paying for it again).
    pending_team_id = models.BigIntegerField(null=True, blank=True)
    pending_text_hash = models.CharField(max_length=64, blank=True, default="")
    attempted_at = models.DateTimeField(null=True, blank=True)
    confirmed_at = models.DateTimeField(null=True, blank=True)
    # Why the entity has no live row although it exists: "consent" or "deleted" (for repairs).
    blocked = models.CharField(max_length=16, blank=True, default="")

    class Meta:
        constraints = (
            models.UniqueConstraint(
                fields=("domain", "entity_id", "embedding_version"), name="entity_vectors_ledger_key"
            ),
        )
        indexes = (
            models.Index(
                fields=("domain", "pending_version"),
                name="entity_vectors_ledger_pending",
                condition=models.Q(pending_version__isnull=False),
            ),
            models.Index(
                fields=("domain", "blocked"),
                name="entity_vectors_ledger_blocked",
                condition=~models.Q(blocked=""),
            ),
        )

    def __str__(self) -> str:
        state = f"live in team {self.team_id}" if self.is_live else "no live row"
        return f"{self.domain} {self.entity_id} v{self.embedding_version}: {state}"


class EntitySummary(models.Model):
    """An entity's latest summary and the hash of the input it was written from."""

    domain = models.CharField(max_length=100)
    entity_id = models.CharField(max_length=255)
    summary = models.TextField()
    input_hash = models.CharField(max_length=64)
    summarized_by = models.CharField(max_length=200)
    summarized_at = models.DateTimeField()

    class Meta:
        constraints = (
            models.UniqueConstraint(fields=("domain", "entity_id"), name="entity_vectors_summary_key"),
        )

    def __str__(self) -> str:
        return f"summary of {self.domain} {self.entity_id}"


class EntityFailure(models.Model):
    """Consecutive failures of one entity; after enough of them it is parked (not sent again)."""

    domain = models.CharField(max_length=100)
    entity_id = models.CharField(max_length=255)
    team_id = models.BigIntegerField(null=True, blank=True)
    failures = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True, default="")
    # The summary input the failures were seen with: a change of content unparks the entity.
    input_hash = models.CharField(max_length=64, blank=True, default="")
    last_failed_at = models.DateTimeField()
    parked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = (
            models.UniqueConstraint(fields=("domain", "entity_id"), name="entity_vectors_failure_key"),
        )

    def __str__(self) -> str:
        state = "parked" if self.parked_at else f"{self.failures} failures"
        return f"{self.domain} {self.entity_id}: {state}"
