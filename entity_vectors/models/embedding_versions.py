"""Embedding versions of a domain: which embedder writes each, which one search serves."""

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
    # Given on the command line (migrate_embeddings --embedder/--model/--dimensions), not taken
    # from the environment's default; either way, runs and searches of the version use it.
    explicit = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)
    # Set when a run has gone over every entity of the domain for this version without a failure:
    # from then on, runs find work through the change log instead of comparing whole tables.
    backfilled_at = models.DateTimeField(null=True, blank=True)
    promoted_at = models.DateTimeField(null=True, blank=True)
    retired_at = models.DateTimeField(null=True, blank=True)
    # How search serves this version, as `evaluate_search --choose-fusion` chose it on the labelled
    # set: the default mode ("" = the embedder's default) and how hybrid search fuses the vector
    # and text rankings (`store.fusion.Fusion` as a dict; {} = the embedder's default), with when.
    search_mode = models.CharField(max_length=16, blank=True, default="")
    fusion = models.JSONField(default=dict, blank=True)
    search_tuned_at = models.DateTimeField(null=True, blank=True)

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
