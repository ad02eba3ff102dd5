"""Search by meaning: embed the query, take the nearest live vectors of one team."""

from __future__ import annotations

from asgiref.sync import async_to_sync

from entity_vectors import conf
from entity_vectors.exceptions import SearchError
from entity_vectors.providers import Embedder, open_providers
from entity_vectors.registry import get_entity_config
from entity_vectors.store import EntityHit, get_store

MAX_LIMIT = 1000
MAX_QUERY_CHARS = 10_000


async def _embed_query(query: str) -> tuple[list[float], str]:
    async with open_providers() as providers:
        embedder: Embedder = providers.embedder
        vectors = await embedder.embed([query])
        return list(vectors[0]), embedder.identity


def search_entities(
    domain: str,
    team_id: int,
    query: str,
    *,
    limit: int = 10,
    embedding_version: int | None = None,
) -> list[EntityHit]:
    """The team's live entities of `domain` nearest in meaning to `query`, nearest first."""
    get_entity_config(domain)  # UnknownDomainError names the registered domains
    if isinstance(team_id, bool) or not isinstance(team_id, int):
        raise SearchError(f"team_id={team_id!r}: must be an integer team id")
    if not isinstance(query, str) or not query.strip():
        raise SearchError("query: must be a non-empty text")
    if len(query) > MAX_QUERY_CHARS:
        raise SearchError(f"query: {len(query)} characters is too long (at most {MAX_QUERY_CHARS})")
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
        raise SearchError(f"limit={limit!r}: must be a whole number from 1 to {MAX_LIMIT}")
    if embedding_version is None:
        embedding_version = conf.embedding_version()
    elif (
        isinstance(embedding_version, bool) or not isinstance(embedding_version, int) or embedding_version < 1
    ):
        raise SearchError(f"embedding_version={embedding_version!r}: must be a whole number of at least 1")

    vector, identity = async_to_sync(_embed_query)(query.strip())
    store = get_store()
    stored = store.stored_embedders(domain, embedding_version, team_id)
    if stored and (identity, len(vector)) not in stored:
        found = ", ".join(f"{embedder or 'unknown'} ({dims} dimensions)" for embedder, dims in stored)
        raise SearchError(
            f"the {domain} vectors of team {team_id} at embedding version {embedding_version} were made by "
            f"{found}, but the configured embedder is {identity} ({len(vector)} dimensions): search with the "
            "embedder that wrote them, or re-embed under a new embedding_version"
        )
    return store.search(domain, team_id, vector, limit, embedding_version)
