"""Embedding versions of a domain: which embedder writes each, which one search serves.

A version is tracked (runs write it) from its first run until it is retired. The served version
lives in the database, so a promotion is one write that every process sees at once; before a
domain has any version, the setting ENTITY_VECTORS_EMBEDDING_VERSION names the served one.

The embedder belongs to the version: it is recorded (name, model, dimensions) when the version is
made, from the environment's default embedder (ENTITY_VECTORS_EMBEDDER, ..., or OPENAI_API_KEY
being set) or from `migrate_embeddings --embedder`, and every run and search of the version uses
it from then on, whatever the default says later. Moving to another embedder is a new version
(`migrate_embeddings`); `default_embedder_change` tells when the default no longer matches.
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


def default_embedder_change(record: DomainVersion) -> EmbedderSpec | None:
    """The environment's default embedder if it is not the one that writes `record`, else None.

    Nothing changes by itself when they differ (the version keeps its embedder); a migration to a
    new version moves the vectors to the default one.
    """
    default = configured_embedder_spec()
    return None if spec_of(record) == default else default


def ensure_version(
    domain: str, version: int, spec: EmbedderSpec | None = None, *, serve_if_none: bool = True
) -> DomainVersion:
    """The record of `version`, created on its first run: served if the domain has none yet.

    A new version is written by `spec`, else by the environment's default embedder; an existing
    one keeps the embedder it was made with, whatever the default is now. `serve_if_none=False`
    creates it backfilling even then (a migration never serves a new version before it is
    promoted). Raises InvalidInputsError if the version was retired, or if `spec` is given and is
    not the embedder that writes the version.
    """
    record = get_version(domain, version)
    if record is None:
        chosen = spec or configured_embedder_spec()
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
                    embedder=chosen.name,
                    embedding_model=chosen.model,
                    dimensions=chosen.dimensions,
                    explicit=spec is not None,
                    promoted_at=None if serving else timezone.now(),
                )
        except IntegrityError:  # created meanwhile by another process
            record = DomainVersion.objects.get(domain=domain, embedding_version=version)
    if record.state == DomainVersion.State.RETIRED:
        raise InvalidInputsError(
            "embedding_version", version, f"version {version} of {domain} was retired; use a newer one"
        )
    if spec is not None and spec_of(record) != spec:
        raise InvalidInputsError(
            "embedding_version",
            version,
            (
                f"version {version} of {domain} is written by {spec_of(record).identity} "
                f"({record.dimensions} dimensions)"
            ),
        )
    return record
