"""A domain's Batch API job, and whether the configured providers have any work for one."""

from __future__ import annotations

from entity_vectors import conf
from entity_vectors.models import BatchApiJob


def applies() -> bool:
    """Whether the configured providers have anything for OpenAI's Batch API to do."""
    return conf.summarizer_name() == "openai" or conf.embedder_name() == "openai"


def active_job(domain: str) -> BatchApiJob | None:
    """The domain's job in progress, if any (there is at most one)."""
    return BatchApiJob.objects.filter(domain=domain, status__in=BatchApiJob.ACTIVE).first()
