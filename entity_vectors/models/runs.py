"""Run history: one row per run, one per batch (with the batch's staged rows)."""

from __future__ import annotations

import uuid
from decimal import Decimal
from typing import ClassVar

from django.core.serializers.json import DjangoJSONEncoder
from django.db import models


class SyncRun(models.Model):
    """One run of one domain: what it selected, what it did, how it ended."""

    class Status(models.TextChoices):
        RUNNING = "running"
        SUCCEEDED = "succeeded"
        PARTIAL = "partial"
        FAILED = "failed"
        SKIPPED = "skipped"

    class Mode(models.TextChoices):
        INLINE = "inline"
        DISTRIBUTED = "distributed"

    class Kind(models.TextChoices):
        RUN = "run"
        FAST_LANE = "fast-lane"
        BATCH_API = "batch-api"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    domain = models.CharField(max_length=100, db_index=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.RUNNING)
    mode = models.CharField(max_length=16, choices=Mode.choices, default=Mode.INLINE)
    kind = models.CharField(max_length=16, choices=Kind.choices, default=Kind.RUN)
    start_dt = models.DateTimeField()
    started_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    # The run's lease: a running run that has not moved by then is considered abandoned (closed,
    # its claims released).
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    # Set once the chord is sent: a redelivered entry task then knows not to start it again.
    dispatched_at = models.DateTimeField(null=True, blank=True)
    inputs = models.JSONField(default=dict)
    # The embedding versions this run writes (the domain's tracked versions when it started).
    versions = models.JSONField(default=list)
    task_id = models.CharField(max_length=255, blank=True, default="")
    batches_total = models.PositiveIntegerField(default=0)
    batches_done = models.PositiveIntegerField(default=0)
    batches_failed = models.PositiveIntegerField(default=0)
    selected = models.PositiveIntegerField(default=0)
    summarized = models.PositiveIntegerField(default=0)
    summaries_reused = models.PositiveIntegerField(default=0)
    summary_failures = models.PositiveIntegerField(default=0)
    embedded = models.PositiveIntegerField(default=0)
    embedding_failures = models.PositiveIntegerField(default=0)
    vectors_reused = models.PositiveIntegerField(default=0)
    inserted = models.PositiveIntegerField(default=0)
    tombstoned = models.PositiveIntegerField(default=0)
    skipped = models.PositiveIntegerField(default=0)
    parked = models.PositiveIntegerField(default=0)
    over_budget = models.PositiveIntegerField(default=0)
    awaiting_batch_api = models.PositiveIntegerField(default=0)
    # Entities another writer held (a claim) when this run's batch came to them: that writer does them.
    held_elsewhere = models.PositiveIntegerField(default=0)
    # Entities left for a later run by the team quantum (other teams were waiting).
    deferred = models.PositiveIntegerField(default=0)
    # The change log's highest sequence number when the run took its snapshot: a run is covered by
    # another of the same inputs that snapshotted at or after every change there is.
    snapshot_seq = models.PositiveBigIntegerField(null=True, blank=True)
    provider_requests = models.PositiveIntegerField(default=0)
    prompt_tokens = models.PositiveBigIntegerField(default=0)
    completion_tokens = models.PositiveBigIntegerField(default=0)
    embedding_tokens = models.PositiveBigIntegerField(default=0)
    cost_usd = models.DecimalField(max_digits=14, decimal_places=6, default=Decimal("0"))
    error = models.TextField(blank=True, default="")

    COUNT_FIELDS: ClassVar[tuple[str, ...]] = (
        "selected",
        "summarized",
        "summaries_reused",
        "summary_failures",
        "embedded",
        "embedding_failures",
        "vectors_reused",
        "inserted",
        "tombstoned",
        "skipped",
        "parked",
        "over_budget",
        "awaiting_batch_api",
        "held_elsewhere",
        "deferred",
        "provider_requests",
        "prompt_tokens",
        "completion_tokens",
        "embedding_tokens",
    )

    class Meta:
        ordering = ("-started_at",)
        # Several runs of a domain run at once (on different entities: `EntityClaim`).
        indexes = (
            models.Index(
                fields=("domain", "status"),
                name="entity_vectors_running_runs",
                condition=models.Q(status="running"),
            ),
        )

    def __str__(self) -> str:
        return f"{self.domain} run {self.id} ({self.status})"

    def counts(self) -> dict[str, int]:
        """The run's counters by name."""
        return {name: int(getattr(self, name)) for name in self.COUNT_FIELDS}


class EntityClaim(models.Model):
    """One writer's claim on one entity: while it holds (until `expires_at`), no other batch of any run,
    fast-lane pass or Batch API writer processes the entity.

    Taken by a batch before it sends anything, released when its rows are flushed, when the batch
    fails, when its run closes; a claim past its lease (a killed worker) is taken over by the next
    writer that wants the entity.
    """

    domain = models.CharField(max_length=100)
    entity_id = models.CharField(max_length=255)
    run = models.ForeignKey("SyncRun", on_delete=models.CASCADE, related_name="claims")
    batch_index = models.PositiveIntegerField()
    expires_at = models.DateTimeField()

    class Meta:
        constraints = (
            models.UniqueConstraint(fields=("domain", "entity_id"), name="entity_vectors_claim_key"),
        )
        indexes = (models.Index(fields=("run", "batch_index"), name="entity_vectors_claim_holder"),)

    def __str__(self) -> str:
        return f"{self.domain} {self.entity_id} held by batch {self.batch_index} of run {self.run_id}"


class SyncRunBatch(models.Model):
    """One batch of a run: its ids (the run's snapshot), outcome and staged rows.

    Rows are staged compactly: `rows` holds each row's metadata as JSON and `vectors` all the
    row vectors as one little-endian float32 buffer, so a batch of 96 vectors of 1536 floats is
    ~600 KB here instead of passing through the result backend.
    """

    class Status(models.TextChoices):
        PENDING = "pending"
        STAGED = "staged"
        FAILED = "failed"
        FLUSHED = "flushed"
        # Staged, but its run was closed before the flush took it: payload dropped, entities wait.
        DROPPED = "dropped"

    run = models.ForeignKey(SyncRun, on_delete=models.CASCADE, related_name="batches")
    index = models.PositiveIntegerField()
    # DjangoJSONEncoder: primary keys may be UUIDs, not only integers.
    entity_ids = models.JSONField(default=list, encoder=DjangoJSONEncoder)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    not_before = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveIntegerField(default=0)
    worker_pid = models.PositiveIntegerField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    counts = models.JSONField(default=dict)
    # Live rows and tombstones of this batch confirmed in ClickHouse (set when it is flushed).
    inserted = models.PositiveIntegerField(default=0)
    tombstoned = models.PositiveIntegerField(default=0)
    item_errors = models.JSONField(default=list)
    error = models.TextField(blank=True, default="")
    # The staged rows' metadata as compact JSON bytes (not a JSON column: the database need not
    # parse it), and their vectors as one little-endian float32 buffer.
    rows = models.BinaryField(default=b"")
    vectors = models.BinaryField(default=b"")

    class Meta:
        ordering = ("run", "index")
        constraints = (models.UniqueConstraint(fields=("run", "index"), name="entity_vectors_batch_index"),)

    def __str__(self) -> str:
        return f"batch {self.index} of {self.run_id} ({self.status})"
