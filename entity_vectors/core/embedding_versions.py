"""Embedding versions of a domain: which embedder writes each, which one search serves.

A version is tracked (runs write it) from its first run until it is retired. The served version
lives in the database, so a promotion is one write that every process sees at once; before a
domain has any version, the setting ENTITY_VECTORS_EMBEDDING_VERSION names the served one.
"""

from __future__ import annotations

from django.db import IntegrityError, transaction
from django.utils import timezone

from entity_vectors import conf
from entity_vectors.exceptions import InvalidInputsError
from entity_vectors.models import DomainVersion
from entity_vectors.providers.specs import EmbedderSpec, configured_embedder_spec

TRACKED = (DomainVersion.State.SERVING, DomainVersion.State.BACKFILLING)


def spec_of(version: DomainVersion) -> EmbedderSpec:
    """The embedder that writes (and searches) a version."""
    return EmbedderSpec(name=version.embedder, model=version.embedding_model, dimensions=version.dimensions)


def tracked_versions(domain: str) -> list[DomainVersion]:
    """The versions runs of `domain` write: the served one and any being backfilled."""
    return list(DomainVersion.objects.filter(domain=domain, state__in=TRACKED).order_by("embedding_version"))


def served_version(domain: str) -> int:
    """The version search reads by default: the one serving, else the setting."""
    served = (
        DomainVersion.objects.filter(domain=domain, state=DomainVersion.State.SERVING)
        .values_list("embedding_version", flat=True)
        .first()
    )
    return int(served) if served is not None else conf.embedding_version()


def get_version(domain: str, version: int) -> DomainVersion | None:
    """The record of one version, if it was ever written."""
    return DomainVersion.objects.filter(domain=domain, embedding_version=version).first()


def mismatch(record: DomainVersion, configured: EmbedderSpec) -> str | None:
    """Why the configured embedder cannot write or search `record`, or None if it can."""
    written = spec_of(record)
    if record.explicit or written == configured:
        return None
    return (
        f"{record.domain} vectors at embedding version {record.embedding_version} were made by "
        f"{written.identity} ({written.dimensions} dimensions), but the configured embedder is "
        f"{configured.identity} ({configured.dimensions} dimensions); use a new embedding_version for a "
        "new embedder (manage.py migrate_embeddings), or configure the one that wrote them"
    )


def ensure_version(
    domain: str, version: int, spec: EmbedderSpec | None = None, *, serve_if_none: bool = True
) -> DomainVersion:
    """The record of `version`, created on its first run: served if the domain has none yet.

    `serve_if_none=False` creates it backfilling even then (a migration never serves a new version
    before it is promoted). Raises InvalidInputsError if the version was retired, or if the
    embedder that would write it is not the one that wrote it.
    """
    configured = spec or configured_embedder_spec()
    record = get_version(domain, version)
    if record is None:
        try:
            with transaction.atomic():
                serving = (
                    not serve_if_none
                    or DomainVersion.objects.filter(domain=domain, state=DomainVersion.State.SERVING).exists()
                )
                record = DomainVersion.objects.create(
                    domain=domain,
                    embedding_version=version,
                    state=DomainVersion.State.BACKFILLING if serving else DomainVersion.State.SERVING,
                    embedder=configured.name,
                    embedding_model=configured.model,
                    dimensions=configured.dimensions,
                    explicit=spec is not None,
                    promoted_at=None if serving else timezone.now(),
                )
        except IntegrityError:  # created meanwhile by another process
            record = DomainVersion.objects.get(domain=domain, embedding_version=version)
    if record.state == DomainVersion.State.RETIRED:
        raise InvalidInputsError(
            "embedding_version", version, f"version {version} of {domain} was retired; use a newer one"
        )
    problem = (
        mismatch(record, configured)
        if spec is None
        else (
            None
            if spec_of(record) == spec
            else f"version {version} of {domain} is written by {spec_of(record).identity}"
        )
    )
    if problem:
        raise InvalidInputsError("embedding_version", version, problem)
    return record
