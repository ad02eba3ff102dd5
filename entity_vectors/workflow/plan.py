"""What each entity of a batch needs, decided against the ledger (never the host's mirror columns).

For every version a run writes, an entity is one of:
- `skip`: the ledger says ClickHouse already holds exactly this text and these properties in
  this team, with no write left unconfirmed;
- `reuse`: the text (and embedder) are unchanged, only the properties or the team changed: the
  row is rewritten with the vector ClickHouse already holds, without any provider call;
- `embed`: the text is new at this version: it is embedded;
- `tombstone`: the entity must have no live row (deleted, consent withdrawn, gone) and some team
  may hold one;
and in every case, a team other than the entity's current one that may hold a live row gets a
tombstone (a move between teams).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from entity_vectors.core.entity_config import EntityConfig
from entity_vectors.providers import EmbedderSpec
from entity_vectors.workflow.context import EmbeddingVersionSpec
from entity_vectors.workflow.ledger import LedgerState

PROVENANCE_KEY = "_vectorized_by"

SKIP = "skip"
REUSE = "reuse"
EMBED = "embed"
TOMBSTONE = "tombstone"

# What a batch does with an entity, in one word (`disposition`): one of the actions above, or
# that it waits or cannot be described, or that it needs a summary first.
PARKED = "parked"
OVER_BUDGET = "over_budget"
AWAITING_BATCH_API = "awaiting_batch_api"
FAILING = "failing"
SUMMARIZE = "summarize"
REWRITE = "rewrite"


def digest(*parts: str) -> str:
    """A SHA-256 of the parts, each ended by NUL so that no two splits collide."""
    hasher = hashlib.sha256()
    for part in parts:
        hasher.update(part.encode("utf-8", "surrogatepass"))
        hasher.update(b"\x00")
    return hasher.hexdigest()


def summary_input_hash(summarizer_identity: str, system_prompt: str, description: str) -> str:
    """What a summary depends on; equal hashes mean the stored summary is still right."""
    return digest(summarizer_identity, system_prompt, description)


def text_hash(text: str, embedder: EmbedderSpec) -> str:
    """What a vector depends on: the text and the embedder that made it."""
    return digest(text, embedder.identity, str(embedder.dimensions))


def build_properties(
    config: EntityConfig[Any], entity_dict: dict[str, Any], summarized_by: str, embedder: EmbedderSpec
) -> str:
    """The row's JSON properties: the config's, the entity id under its field, and provenance."""
    properties = dict(config.build_clickhouse_properties(entity_dict))
    properties.setdefault(config.get_entity_id_field(), entity_dict["id"])
    properties[PROVENANCE_KEY] = {
        "summarizer": summarized_by,
        "embedder": embedder.identity,
        "dimensions": embedder.dimensions,
    }
    return json.dumps(properties, ensure_ascii=False, default=str, sort_keys=True)


@dataclass
class EmbeddingWork:
    """One entity at one embedding version: the decision, what to write, and (once made) the vector."""

    spec: EmbeddingVersionSpec
    action: str = SKIP
    tombstone_teams: tuple[int, ...] = ()
    properties: str = "{}"
    text_hash: str = ""
    content_hash: str = ""
    # For `reuse`: the key's team and the row version whose vector is copied.
    source_team: int | None = None
    source_version: int = 0
    vector: np.ndarray[Any, Any] | None = None
    error: str = ""


@dataclass
class EntityWork:
    """One entity of a batch, from load to staging."""

    pk: Any
    key: str
    seq: int
    # "live", or why it must have no live row: "deleted", "consent", "gone" (hard-deleted).
    state: str
    team_id: int | None = None
    instance: Any = None
    values: dict[str, Any] | None = None
    description: str = ""
    input_hash: str = ""
    summary: str | None = None
    summarized_by: str = ""
    summarized_now: bool = False
    parked: bool = False
    # Failures are counted for it (parked or not): a success has a count to clear.
    failures_counted: bool = False
    # Its owner's monthly budget has no room for it: it waits, neither failed nor done.
    over_budget: bool = False
    # A Batch API job has its summary or vector on the way: it waits for the job, not paid twice.
    awaiting_batch_api: bool = False
    error: str = ""
    # The summarizer's exception, when summarizing failed (a transient one may retry the batch).
    failure: BaseException | None = None
    # Some part of its work failed because a provider or a service did (5xx, a connection, Redis),
    # not because of the entity: it stays eligible and the failure does not count toward parking.
    faulted: bool = False
    versions: dict[int, EmbeddingWork] = field(default_factory=dict)

    @property
    def live(self) -> bool:
        """Whether the entity should have a live row."""
        return self.state == "live"

    @property
    def deferred(self) -> bool:
        """Whether it waits (for budget, or for the Batch API): neither failed nor done."""
        return self.over_budget or self.awaiting_batch_api

    @property
    def failed(self) -> bool:
        """Whether any part of its work failed (it stays eligible for the next run)."""
        return bool(self.error) or any(work.error for work in self.versions.values())


def _teams(entry: LedgerState | None) -> set[int]:
    return set(entry.live_teams) if entry is not None else set()


def decide_gone(
    work: EntityWork, entries: dict[int, LedgerState | None], specs: tuple[EmbeddingVersionSpec, ...]
) -> None:
    """An entity that must have no live row: tombstone every team that may hold one."""
    for spec in specs:
        teams = _teams(entries.get(spec.version))
        work.versions[spec.version] = EmbeddingWork(
            spec=spec, action=TOMBSTONE if teams else SKIP, tombstone_teams=tuple(sorted(teams))
        )


def _is_current(entry: LedgerState | None, team_id: int, content: str, others: set[int]) -> bool:
    """The ledger says this exact row is live in this team only, with nothing unconfirmed."""
    return (
        entry is not None
        and entry.is_live
        and entry.team_id == team_id
        and entry.content_hash == content
        and entry.pending_version is None
        and not others
    )


def _vector_source(entry: LedgerState | None, hashed_text: str) -> tuple[int, int] | None:
    """(team, row version) of a row in ClickHouse that already holds this text's vector, if any."""
    if entry is None:
        return None
    if entry.pending_version is not None:
        # An unconfirmed write of this very text may have landed: copy it if ClickHouse has it.
        if entry.pending_text_hash == hashed_text and entry.pending_team_id is not None:
            return (entry.pending_team_id, entry.pending_version)
        return None
    if entry.is_live and entry.text_hash == hashed_text and entry.team_id is not None:
        return (entry.team_id, entry.row_version)
    return None


def decide_live(
    config: EntityConfig[Any],
    work: EntityWork,
    entries: dict[int, LedgerState | None],
    specs: tuple[EmbeddingVersionSpec, ...],
) -> None:
    """An entity with its summary: skip, reuse or embed at each version, tombstoning other teams."""
    assert work.summary is not None and work.values is not None and work.team_id is not None
    entity_dict = {**work.values, "summary": work.summary}
    for spec in specs:
        entry = entries.get(spec.version)
        properties = build_properties(config, entity_dict, work.summarized_by, spec.embedder)
        hashed_text = text_hash(work.summary, spec.embedder)
        content = digest(hashed_text, properties)
        others = _teams(entry) - {work.team_id}
        source = _vector_source(entry, hashed_text)
        if _is_current(entry, work.team_id, content, others):
            action = SKIP
        elif source is not None:
            action = REUSE
        else:
            action = EMBED
        work.versions[spec.version] = EmbeddingWork(
            spec=spec,
            action=action,
            tombstone_teams=tuple(sorted(others)),
            properties=properties,
            text_hash=hashed_text,
            content_hash=content,
            source_team=source[0] if action == REUSE and source else None,
            source_version=source[1] if action == REUSE and source else 0,
        )


def disposition(work: EntityWork) -> str:
    """What a batch does with `work` as decided so far, in one word: it waits (parked, over budget,
    awaiting the Batch API), it failed before any request (failing), it is tombstoned, it needs a
    summary, or else its versions' actions (embed, rewrite without a provider call, skip).

    The dry run reports these; a batch counts the first four the same way.
    """
    if work.parked:
        return PARKED
    if work.over_budget:
        return OVER_BUDGET
    if work.awaiting_batch_api:
        return AWAITING_BATCH_API
    if work.error:
        return FAILING
    if not work.live:
        return TOMBSTONE if any(v.action == TOMBSTONE for v in work.versions.values()) else SKIP
    if work.summary is None:
        return SUMMARIZE
    actions = {version.action for version in work.versions.values()}
    if EMBED in actions:
        return EMBED
    if REUSE in actions or any(version.tombstone_teams for version in work.versions.values()):
        return REWRITE
    return SKIP
