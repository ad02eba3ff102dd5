"""The pipeline's memory: versions, the ledger, summaries, the change log, failures, counters."""

from __future__ import annotations

from django.db import models


class DomainVersion(models.Model):
    """One embedding version of a domain: which embedder writes it and whether search serves it.

    The served version of a domain lives here, so that promoting a new one is one database write
    that every process sees; the embedder recorded here is what a run and a search of that version
    must use (vectors of different embedders cannot be compared).
    """

    class State(models.TextChoices):
        BACKFILLING = "backfilling"
        SERVING = "serving"
        RETIRED = "retired"

    domain = models.CharField(max_length=100)
    embedding_version = models.PositiveIntegerField()
    state = models.CharField(max_length=16, choices=State.choices, default=State.BACKFILLING)
    embedder = models.CharField(max_length=32)
    embedding_model = models.CharField(max_length=200, blank=True, default="")
    dimensions = models.PositiveIntegerField()
    # Given on purpose (migrate_embeddings --embedder/--model): the settings need not match it.
    explicit = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)
    # Set when a run has gone over every entity of the domain for this version without a failure:
    # from then on, runs find work through the change log instead of comparing whole tables.
    backfilled_at = models.DateTimeField(null=True, blank=True)
    promoted_at = models.DateTimeField(null=True, blank=True)
    retired_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ("domain", "embedding_version")
        constraints = (
            models.UniqueConstraint(
                fields=("domain", "embedding_version"), name="entity_vectors_domain_version"
            ),
        )

    def __str__(self) -> str:
        return f"{self.domain} v{self.embedding_version} ({self.state}, {self.embedder})"

    @property
    def identity(self) -> str:
        """The embedder label recorded with every vector of this version."""
        return f"{self.embedder}:{self.embedding_model}" if self.embedding_model else self.embedder

    @property
    def is_served(self) -> bool:
        """Whether search reads this version by default."""
        return self.state == self.State.SERVING


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
    # The change (its seq) at which a batch found the entity unable to go now (parked, over its
    # owner's budget, left to a Batch API job): the fast lane passes over it until a newer change.
    held_seq = models.PositiveBigIntegerField(null=True, blank=True)

    class Meta:
        constraints = (
            models.UniqueConstraint(fields=("domain", "entity_id"), name="entity_vectors_change_key"),
        )
        indexes = (models.Index(fields=("domain", "seq"), name="entity_vectors_change_seq"),)

    def __str__(self) -> str:
        return f"{self.domain} {self.entity_id} changed (seq {self.seq})"


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


class Counter(models.Model):
    """Named counters for databases without sequences (SQLite): the row-version counter."""

    name = models.CharField(max_length=64, primary_key=True)
    value = models.PositiveBigIntegerField(default=0)

    def __str__(self) -> str:
        return f"{self.name}={self.value}"


class SweepState(models.Model):
    """Where a periodic sweep stopped (the reconcile's position per domain)."""

    name = models.CharField(max_length=200, primary_key=True)
    state = models.JSONField(default=dict)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return self.name


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
