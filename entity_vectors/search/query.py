"""Search a team's entities of one domain: by meaning (vector), by words (text), or both (hybrid).

- `vector`: the query is embedded by the embedder the version searched recorded (whatever the
  environment's default embedder is now), and rows are ranked by cosine distance: exactly for a
  team whose domain holds fewer rows than ENTITY_VECTORS_APPROXIMATE_SEARCH_MIN_ROWS (100k by
  default), through an HNSW index for a larger one (the index's nearest candidates, oversampled,
  re-ranked exactly; see the store).
- `text`: no provider call; rows are ranked by BM25 over the words of their name and text,
  found through ClickHouse's full-text index: words, their abbreviations, the words they begin,
  stems and misspellings; CJK text as character bigrams (see `store.fulltext`).
- `hybrid`: both rankings fused as the version's recorded fusion says (`evaluate_search
  --choose-fusion`), else as its embedder's default (`search.tuning`); see `store.fusion`.

A hit's `distance` follows its rank in every mode (0 is best): the cosine distance (`vector`),
1 - the BM25 score over the best the query allows (`text`; 0 for a whole-name match), 1 - the
fused score over the best possible one (`hybrid`).

Every mode reads the latest row of each key first and only then drops tombstones, is scoped to
one team, and binds every value as a query parameter.
"""

from __future__ import annotations

from entity_vectors import conf
from entity_vectors.core.embedding_versions import get_version, served_version, spec_of
from entity_vectors.core.entity_config import consenting_teams
from entity_vectors.core.registry import get_entity_config
from entity_vectors.exceptions import ConsentRequired, SearchError, echo
from entity_vectors.models import DomainVersion, SyncRun
from entity_vectors.providers import EmbedderSpec, open_providers
from entity_vectors.providers.access import access_for
from entity_vectors.runtime import aio
from entity_vectors.search.tuning import fusion_of
from entity_vectors.store import EmbeddingStore, EntityHit, get_store

MAX_LIMIT = 1000
MAX_QUERY_CHARS = 10_000
MODES = ("vector", "text", "hybrid")


# Searches in flight that may wait on the provider at once, every process together.
SEARCH_REQUESTS = 256


async def _embed_query(query: str, spec: EmbedderSpec) -> list[float]:
    # The interactive lane: the share of the rate budget a backfill leaves, and brief retries.
    access = access_for(SyncRun.Mode.DISTRIBUTED, "search", SEARCH_REQUESTS, interactive=True)
    async with (
        access.open() as opened,
        open_providers(
            opened.limiter, embedders=[spec], budget=opened.budget, retries=opened.retries
        ) as providers,
    ):
        result = await providers.embedder.embed([query])
        if result.failures:
            raise SearchError(f"the query could not be embedded: {result.failures[0]}")
        return [float(value) for value in result.vectors[0]]


def effective_mode(domain: str, mode: str | None = None, embedding_version: int | None = None) -> str:
    """The mode a search of `domain` uses: `mode`, else ENTITY_VECTORS_SEARCH_MODE, else the best
    mode for the embedder that wrote the version searched."""
    if mode:
        return mode
    version = served_version(domain) if embedding_version is None else embedding_version
    record = get_version(domain, version)
    return conf.search_mode(record.search_mode if record is not None else "")


def _check_arguments(
    team_id: object, query: object, limit: object, embedding_version: object, mode: object
) -> None:
    # A team id is a database key (a 64-bit integer): a larger one would be the database's error.
    if isinstance(team_id, bool) or not isinstance(team_id, int) or not 0 <= team_id < 2**63:
        raise SearchError(f"team_id={echo(team_id)}: must be an integer team id")
    if not isinstance(query, str) or not query.strip():
        raise SearchError("query: must be a non-empty text")
    if len(query) > MAX_QUERY_CHARS:
        raise SearchError(f"query: {len(query)} characters is too long (at most {MAX_QUERY_CHARS})")
    if "\x00" in query:
        raise SearchError("query: must not contain NUL characters")
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
        raise SearchError(f"limit={echo(limit)}: must be a whole number from 1 to {MAX_LIMIT}")
    if embedding_version is not None and (
        isinstance(embedding_version, bool)
        or not isinstance(embedding_version, int)
        or not 1 <= embedding_version < 2**32
    ):
        raise SearchError(
            f"embedding_version={echo(embedding_version)}: must be a whole number of at least 1"
        )
    if mode is not None and mode not in MODES:
        raise SearchError(f"mode={echo(mode)}: must be one of {', '.join(MODES)}")


def check_team_consent(domain: str, team_id: int) -> None:
    """Refuse a team whose organization has not approved AI processing: its query would reach a provider."""
    config = get_entity_config(domain)
    team_model = config.model_class._meta.get_field("team").related_model
    consenting = consenting_teams(config, [team_id])
    if consenting is None:
        approved = config.get_queryset().filter(team_id=team_id).filter(config.get_consent_filter()).exists()
    else:
        approved = team_id in consenting
        if not approved and not team_model._default_manager.filter(pk=team_id).exists():
            raise SearchError(f"team_id={team_id}: no such team")
    if not approved:
        raise ConsentRequired(
            f"team {team_id} may not search: its organization has not approved AI data processing, and a "
            "search sends the query to the embeddings provider"
        )


def search_entities(
    domain: str,
    team_id: int,
    query: str,
    *,
    limit: int = 10,
    embedding_version: int | None = None,
    mode: str | None = None,
) -> list[EntityHit]:
    """The team's live entities of `domain` that best match `query`, best first."""
    get_entity_config(domain)  # UnknownDomainError names the registered domains
    _check_arguments(team_id, query, limit, embedding_version, mode)
    check_team_consent(domain, team_id)
    version = served_version(domain) if embedding_version is None else embedding_version
    record = get_version(domain, version)
    if record is None:
        return []  # nothing was ever written at this version
    mode = mode or conf.search_mode(record.search_mode)
    store = get_store()
    text = query.strip()
    if mode == "text":
        return store.text_search(domain, team_id, text, limit, version)
    vector = aio.run(_embed_query(text, spec_of(record)))
    if mode == "vector":
        return store.search(domain, team_id, vector, limit, version)
    return store.hybrid_search(domain, team_id, vector, text, limit, version, fusion_of(record))


def rankings(
    store: EmbeddingStore,
    record: DomainVersion,
    team_id: int,
    query: str,
    vector_depth: int,
    text_depth: int,
    *,
    vector: bool = True,
    text: bool = True,
) -> tuple[list[EntityHit], list[EntityHit]]:
    """The vector and text rankings of a query (so many rows each; an empty list for one not asked)
    in a version of a team's domain, as hybrid search takes them before fusing (for evaluation:
    no argument or consent check)."""
    vector_hits: list[EntityHit] = []
    if vector:
        embedded = aio.run(_embed_query(query.strip(), spec_of(record)))
        vector_hits = store.search(record.domain, team_id, embedded, vector_depth, record.embedding_version)
    text_hits = (
        store.text_search(record.domain, team_id, query.strip(), text_depth, record.embedding_version)
        if text
        else []
    )
    return vector_hits, text_hits
