"""Adopting an install of the first release: its synced entities enter the ledger, nothing is re-paid.

The first release kept its state in the host's columns. Upgrading, each entity it synced gets a
ledger entry saying its row is live in its team at the version it reached (with the hashes of
what that release wrote, so an unchanged entity is skipped), each stored summary is kept, and
each version becomes a DomainVersion written by the configured embedder. An entity whose write
was attempted but never confirmed is recorded as possibly live, so the next run repairs it.
Run by a migration; safe to run again.
"""

from __future__ import annotations

from typing import Any

from django.db import connection
from django.utils import timezone

from entity_vectors import conf
from entity_vectors.capture.changelog import key_of
from entity_vectors.core.entity_config import EntityConfig
from entity_vectors.models import DomainVersion, EntitySummary, LedgerEntry
from entity_vectors.providers.specs import EmbedderSpec, configured_embedder_spec
from entity_vectors.workflow.plan import build_properties, digest, text_hash

PAGE = 2000


def adopt(config: EntityConfig[Any]) -> int:
    """Fill the ledger, summaries and versions of one domain from the host's columns; returns entries made."""
    model = config.model_class
    if model._meta.db_table not in connection.introspection.table_names():
        return 0  # the host's table does not exist yet: a new install, nothing to adopt
    spec = configured_embedder_spec()
    manager = model._default_manager
    synced = manager.filter(embedding_version__isnull=False).order_by("pk")
    fields = ["team_id"] + [
        name for name in config.get_sync_values_fields() if name not in ("team_id", "summary", "pk")
    ]
    made = 0
    versions: set[int] = set()
    last: Any = None
    while True:
        page = list((synced if last is None else synced.filter(pk__gt=last))[:PAGE])
        if not page:
            break
        last = page[-1].pk
        values = {row["pk"]: row for row in manager.filter(pk__in=[e.pk for e in page]).values("pk", *fields)}
        versions.update(int(entity.embedding_version) for entity in page)
        entries = [_entry(config, entity, values[entity.pk], spec) for entity in page]
        summaries = [_summary(config.domain_name, entity) for entity in page]
        made += len(LedgerEntry.objects.bulk_create(entries, ignore_conflicts=True))
        EntitySummary.objects.bulk_create([s for s in summaries if s is not None], ignore_conflicts=True)
    _record_versions(config.domain_name, versions, spec)
    return made


def _entry(config: EntityConfig[Any], entity: Any, values: dict[str, Any], spec: EmbedderSpec) -> LedgerEntry:
    """The ledger entry of an entity the first release synced (or tried to)."""
    summary = entity.summary or ""
    confirmed = entity.embedding_last_synced_at is not None and bool(summary)
    content = hashed = ""
    if confirmed:
        entity_dict = {"id": entity.pk, **values, "summary": summary}
        properties = build_properties(config, entity_dict, entity.summarized_by or "template", spec)
        hashed = text_hash(summary, spec)
        content = digest(hashed, properties)
    return LedgerEntry(
        domain=config.domain_name,
        entity_id=key_of(entity.pk),
        embedding_version=int(entity.embedding_version),
        team_id=entity.team_id,
        is_live=confirmed,
        live_teams=[entity.team_id],
        has_live=True,
        content_hash=content,
        text_hash=hashed,
        summary_input_hash=entity.summary_input_hash or "",
        # Never confirmed by the first release: a write may have landed, repair it.
        pending_version=None if confirmed else 1,
        confirmed_at=entity.embedding_last_synced_at,
    )


def _summary(domain: str, entity: Any) -> EntitySummary | None:
    """The summary the first release kept for an entity, if it kept one with its input hash."""
    if not (entity.summary and entity.summary_input_hash):
        return None
    return EntitySummary(
        domain=domain,
        entity_id=key_of(entity.pk),
        summary=entity.summary,
        input_hash=entity.summary_input_hash,
        summarized_by=entity.summarized_by or "template",
        summarized_at=entity.last_summarized_at or timezone.now(),
    )


def _record_versions(domain: str, versions: set[int], spec: EmbedderSpec) -> None:
    """Each version the first release wrote, by the configured embedder; the setting's one serves."""
    served = conf.embedding_version()
    for version in sorted(versions):
        DomainVersion.objects.get_or_create(
            domain=domain,
            embedding_version=version,
            defaults={
                "state": DomainVersion.State.SERVING if version == served else DomainVersion.State.BACKFILLING,
                "embedder": spec.name,
                "embedding_model": spec.model,
                "dimensions": spec.dimensions,
                "backfilled_at": timezone.now() if version == served else None,
                "promoted_at": timezone.now() if version == served else None,
            },
        )


def adopt_all() -> int:
    """Adopt every registered domain."""
    from entity_vectors.core.registry import default_registry

    return sum(adopt(config) for config in default_registry.configs())
