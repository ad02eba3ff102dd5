"""A domain's Batch API job, and whether its providers have any work for one."""

from __future__ import annotations

from entity_vectors import conf
from entity_vectors.core.embedding_versions import tracked_versions
from entity_vectors.models import BatchApiJob


def applies(domain: str) -> bool:
    """Whether runs of `domain` have anything for OpenAI's Batch API to do: summaries by the openai
    summarizer, or vectors of a version the openai embedder writes (each version keeps the embedder
    it recorded; a domain without versions yet gets the environment's default one)."""
    if conf.summarizer_name() == "openai":
        return True
    versions = tracked_versions(domain)
    if not versions:
        return conf.embedder_name() == "openai"
    return any(version.embedder == "openai" for version in versions)


def active_job(domain: str) -> BatchApiJob | None:
    """The domain's job in progress, if any (there is at most one)."""
    return BatchApiJob.objects.filter(domain=domain, status__in=BatchApiJob.ACTIVE).first()
