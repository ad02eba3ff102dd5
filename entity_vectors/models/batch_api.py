"""The Batch API's tables: a job, its provider batches, and one row per request (custom_id)."""

from __future__ import annotations

import uuid

from django.db import models


class BatchApiJob(models.Model):
    """A backfill through the provider's Batch API: summaries, then vectors, then a run that writes them.

    Its state lives here (and in its ProviderBatch and BatchApiRequest rows), so a worker restart,
    a duplicate poll or a partly failed batch loses nothing and pays nothing twice.
    """

    class Status(models.TextChoices):
        SUMMARIZING = "summarizing"
        EMBEDDING = "embedding"
        WRITING = "writing"
        DONE = "done"
        FAILED = "failed"

    ACTIVE = (Status.SUMMARIZING, Status.EMBEDDING, Status.WRITING)

    domain = models.CharField(max_length=100, db_index=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.SUMMARIZING)
    inputs = models.JSONField(default=dict)
    # The entities (primary keys) the job has requests for; the ones whose request failed, with why.
    entity_ids = models.JSONField(default=list)
    failed = models.JSONField(default=dict)
    run = models.ForeignKey("entity_vectors.SyncRun", null=True, blank=True, on_delete=models.SET_NULL)
    requests = models.PositiveIntegerField(default=0)
    prompt_tokens = models.PositiveBigIntegerField(default=0)
    completion_tokens = models.PositiveBigIntegerField(default=0)
    embedding_tokens = models.PositiveBigIntegerField(default=0)
    cost_usd = models.DecimalField(max_digits=14, decimal_places=6, default=0)
    # A poll holds the job until then (a second poll meanwhile does nothing; a dead one's lease ends).
    leased_until = models.DateTimeField(null=True, blank=True)
    # Runs started to write the results (a run that did not finish cleanly is followed by another).
    write_attempts = models.PositiveIntegerField(default=0)
    error = models.TextField(blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = (
            models.UniqueConstraint(
                fields=("domain",),
                condition=models.Q(status__in=("summarizing", "embedding", "writing")),
                name="entity_vectors_one_active_batch_api_job",
            ),
        )

    def __str__(self) -> str:
        return f"Batch API job {self.pk} of {self.domain} ({self.status})"


class ProviderBatch(models.Model):
    """One batch submitted to the provider's Batch API: a file of requests, each with its custom_id.

    `prepared` holds the file's content until the provider has the batch; the batch is created
    with this row's id in its metadata, so a worker that died between upload and record is
    recovered by looking the batch up, never by creating (and paying for) it again.
    """

    class Status(models.TextChoices):
        PREPARED = "prepared"
        SUBMITTED = "submitted"
        PROCESSED = "processed"

    job = models.ForeignKey(BatchApiJob, on_delete=models.CASCADE, related_name="provider_batches")
    # Sent in the batch's metadata: how a batch created by a worker that died is found again.
    key = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    endpoint = models.CharField(max_length=64)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PREPARED)
    requests = models.PositiveIntegerField(default=0)
    submit_attempts = models.PositiveIntegerField(default=0)
    content = models.BinaryField(default=b"")
    input_file_id = models.CharField(max_length=200, blank=True, default="")
    provider_batch_id = models.CharField(max_length=200, blank=True, default="")
    provider_status = models.CharField(max_length=32, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"{self.endpoint} batch {self.provider_batch_id or self.pk} ({self.status})"


class BatchApiRequest(models.Model):
    """One entity's request in a Batch API job: its summary, or its vector at one version.

    Keyed by what it was made for (the summary's input hash, the vector's text hash), so a result
    for content that changed since is never used. While one is pending, runs leave its entity to
    the job instead of paying for the same work at full price.
    """

    class Kind(models.TextChoices):
        SUMMARY = "summary"
        VECTOR = "vector"

    class State(models.TextChoices):
        PENDING = "pending"
        READY = "ready"

    job = models.ForeignKey(BatchApiJob, on_delete=models.CASCADE, related_name="items")
    provider_batch = models.ForeignKey(ProviderBatch, null=True, on_delete=models.SET_NULL, related_name="items")
    domain = models.CharField(max_length=100)
    entity_id = models.CharField(max_length=200)
    team_id = models.BigIntegerField(null=True)
    kind = models.CharField(max_length=8, choices=Kind.choices)
    # 0 for a summary.
    embedding_version = models.PositiveIntegerField(default=0)
    # What the result is for: the summary's input hash, or the vector's text hash.
    content_hash = models.CharField(max_length=64)
    # The entity's summary input hash when the request was made (its failures are counted for it).
    input_hash = models.CharField(max_length=64)
    state = models.CharField(max_length=8, choices=State.choices, default=State.PENDING)
    vector = models.BinaryField(null=True)

    class Meta:
        constraints = (
            models.UniqueConstraint(
                fields=("domain", "entity_id", "kind", "embedding_version"), name="entity_vectors_batch_request_key"
            ),
        )

    @property
    def custom_id(self) -> str:
        """The request's id in the provider's files (results are matched by it, never by position)."""
        return f"{self.kind}-{self.pk}-{self.entity_id}"

    def __str__(self) -> str:
        return f"{self.kind} of {self.domain} {self.entity_id} ({self.state})"
