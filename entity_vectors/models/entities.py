"""The abstract base of a vectorized entity: the mirror columns the seed's configs filter on."""

from __future__ import annotations

from django.db import models


class VectorizedModel(models.Model):
    """Abstract base of every vectorized entity: the mirror columns the seed's configs filter on.

    `summary` and `last_summarized_at` are the latest summary and the start of the run that
    checked it; `embedding_last_synced_at` and `embedding_version` are set once the entity's row
    is confirmed in ClickHouse. The pipeline writes them with `update()` (no signals, no auto_now)
    and never reads them to decide anything: its memory is the ledger.
    """

    summary = models.TextField(null=True, blank=True)
    last_summarized_at = models.DateTimeField(null=True, blank=True)
    summary_input_hash = models.CharField(max_length=64, blank=True, default="")
    summarized_by = models.CharField(max_length=200, blank=True, default="")
    embedding_last_synced_at = models.DateTimeField(null=True, blank=True)
    embedding_version = models.PositiveIntegerField(null=True, blank=True)

    class Meta:
        abstract = True
