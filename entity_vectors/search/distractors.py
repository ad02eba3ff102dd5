"""`evaluate_search --distractors N`: the labelled set searched among N generated entities more.

The generated entities (`catalogue`) go, embedded by each searched version's own embedder, into a
scratch copy of the searched teams' rows, which the evaluation searches and then drops.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from entity_vectors.core.embedding_versions import spec_of
from entity_vectors.core.registry import get_entity_config
from entity_vectors.exceptions import PermanentError
from entity_vectors.models import DomainVersion, SyncRun
from entity_vectors.providers import EmbedderSpec, open_providers
from entity_vectors.providers.access import access_for
from entity_vectors.runtime import aio
from entity_vectors.search.catalogue import generate
from entity_vectors.store import EmbeddingRow, EmbeddingStore, chunked
from entity_vectors.store.base import SqlEmbeddingStore

# Texts embedded per provider request, requests in flight, and rows per insert.
EMBED_BATCH = 256
EMBED_CONCURRENCY = 4
INSERT_BATCH = 5000


async def _embed(texts: list[str], spec: EmbedderSpec) -> list[Any]:
    # A backfill's share of the provider budget, not the interactive lane's.
    access = access_for(SyncRun.Mode.DISTRIBUTED, "evaluate-distractors", EMBED_CONCURRENCY)
    async with (
        access.open() as opened,
        open_providers(
            opened.limiter, embedders=[spec], budget=opened.budget, retries=opened.retries
        ) as providers,
    ):
        vectors: list[Any] = []
        for start in range(0, len(texts), EMBED_BATCH):
            result = await providers.embedder.embed(texts[start : start + EMBED_BATCH])
            if result.failures:
                raise EvaluationSetupError(
                    f"distractors could not be embedded: {next(iter(result.failures.values()))}"
                )
            vectors.extend(result.vectors)
        return vectors


class EvaluationSetupError(PermanentError, ValueError):
    """The distractors could not be made (their texts could not be embedded)."""


@contextmanager
def store_with_distractors(
    base: EmbeddingStore,
    groups: Sequence[tuple[DomainVersion, Sequence[int]]],
    count: int,
    on_progress: Callable[[str], None] | None = None,
) -> Iterator[EmbeddingStore]:
    """A scratch copy of `groups` (each version with the teams searched in it) holding `count`
    generated entities more per team and domain, embedded by each version's embedder; dropped on exit.

    The real rows are copied, never changed: an evaluation among distractors leaves the served
    table as it was. The same generated entities (one embedding each) go to every team.
    """
    if not isinstance(base, SqlEmbeddingStore):
        raise EvaluationSetupError("distractors need a ClickHouse store")
    report = on_progress or (lambda line: None)
    scratch = base.for_table(f"{base.table}_eval_{secrets.token_hex(4)}")
    try:
        scratch.ensure_schema()
        scratch.copy_groups(
            base.table, [(team, r.domain, r.embedding_version) for r, teams in groups for team in teams]
        )
        now = datetime.now(UTC)
        for record, teams in groups:
            config = get_entity_config(record.domain)
            names = config.get_queryset().filter(team_id__in=list(teams)).values_list("name", flat=True)
            made = list(generate(record.domain, count, exclude=[str(name) for name in names]))
            report(
                f"distractors: embedding {len(made):,} generated {record.domain} entities ({record.identity})"
            )
            vectors = aio.run(_embed([item.text for item in made], spec_of(record)))
            rows = [
                EmbeddingRow(
                    domain=record.domain,
                    team_id=int(team),
                    id=item.id,
                    vector=vector,
                    text=item.text,
                    properties=item.properties(),
                    embedding_version=record.embedding_version,
                    timestamp=now,
                    version=1,
                )
                for team in teams
                for item, vector in zip(made, vectors, strict=True)
            ]
            for chunk in chunked(rows, INSERT_BATCH):
                scratch.insert(chunk)
            report(f"distractors: {len(made):,} {record.domain} entities in each of {len(teams)} teams")
        yield scratch
    finally:
        scratch.drop()
