"""The sync ledger's reads and writes: what ClickHouse holds, attempted and confirmed.

A write is recorded as attempted before its insert (the teams it may make live are added to
`live_teams`) and as confirmed after it. A confirm only wins if its row version is at least the
ledger's: a late write of an older plan loses in ClickHouse and in the ledger alike.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from django.db import transaction
from django.utils import timezone

from entity_vectors.bulk import KeyLookup, update_rows, upsert_rows
from entity_vectors.models import LedgerEntry

LedgerKey = tuple[str, int]  # (entity_id, embedding_version)

ATTEMPT_FIELDS = [
    "live_teams",
    "has_live",
    "pending_version",
    "pending_team_id",
    "pending_text_hash",
    "attempted_at",
]
CONFIRM_FIELDS = [
    "team_id",
    "is_live",
    "live_teams",
    "has_live",
    "row_version",
    "content_hash",
    "text_hash",
    "summary_input_hash",
    "source_seq",
    "blocked",
    "pending_version",
    "pending_team_id",
    "pending_text_hash",
    "confirmed_at",
]


@dataclass(frozen=True)
class LedgerWrite:
    """One (entity, version) write planned by a batch: a live row and/or tombstones."""

    entity_id: str
    version: int
    row_version: int
    live_team: int | None
    tombstone_teams: tuple[int, ...]
    content_hash: str = ""
    text_hash: str = ""
    summary_input_hash: str = ""
    source_seq: int = 0
    # Why there is no live row ("deleted", "consent", "gone"), for tombstone-only writes.
    blocked: str = ""

    @property
    def key(self) -> LedgerKey:
        """The ledger key."""
        return (self.entity_id, self.version)


@dataclass(slots=True)
class LedgerState:
    """One ledger entry as read for a decision (a plain value: no model instance per entity)."""

    pk: int
    entity_id: str
    embedding_version: int
    team_id: int | None
    is_live: bool
    live_teams: list[int]
    row_version: int
    content_hash: str
    text_hash: str
    source_seq: int
    pending_version: int | None
    pending_team_id: int | None
    pending_text_hash: str

    @property
    def key(self) -> LedgerKey:
        """The ledger key."""
        return (self.entity_id, self.embedding_version)


_STATE_FIELDS = [field for field in LedgerState.__dataclass_fields__ if field != "pk"]


def _states(
    domain: str, entity_ids: Sequence[str], versions: Iterable[int], lock: bool
) -> dict[LedgerKey, LedgerState]:
    # Plain rows, not the ORM's: this reads every entity of a batch (and of a flush chunk, locked),
    # where per-value lookup preparation and converters cost more than the query.
    wanted = sorted(set(versions))
    if not wanted:
        return {}
    lookup = KeyLookup(
        LedgerEntry, {"domain": domain}, "entity_id", ["id", *_STATE_FIELDS], {"embedding_version": wanted}
    )
    rows = lookup.rows(sorted(set(entity_ids)), lock=lock)
    found: dict[LedgerKey, LedgerState] = {}
    for pk, entity_id, version, team_id, is_live, live_teams, *rest in rows:
        state = LedgerState(
            pk,
            entity_id,
            version,
            team_id,
            bool(is_live),
            json.loads(live_teams) if isinstance(live_teams, str) else list(live_teams or []),
            *rest,
        )
        found[state.key] = state
    return found


def load_entries(
    domain: str, entity_ids: Sequence[str], versions: Iterable[int]
) -> dict[LedgerKey, LedgerState]:
    """The ledger entries of these entities at these versions."""
    return _states(domain, entity_ids, versions, lock=False)


def record_attempts(domain: str, writes: Sequence[LedgerWrite]) -> None:
    """Before the insert: these writes may land, and their live teams may hold rows."""
    if not writes:
        return
    now = timezone.now()
    rows = []
    with transaction.atomic(savepoint=False):  # the batch's own transaction, if any
        states = _states(
            domain, [write.entity_id for write in writes], [write.version for write in writes], lock=True
        )
        for write in writes:
            state = states.get(write.key)
            teams = set(state.live_teams) if state is not None else set()
            if write.live_team is not None:
                teams.add(write.live_team)
            pending = state.pending_version if state is not None else None
            newest = write.row_version >= (pending or 0)
            rows.append(
                {
                    "domain": domain,
                    "entity_id": write.entity_id,
                    "embedding_version": write.version,
                    "live_teams": sorted(teams),
                    "has_live": bool(teams),
                    "pending_version": write.row_version if newest else pending,
                    "pending_team_id": write.live_team if newest else state.pending_team_id,  # type: ignore[union-attr]
                    "pending_text_hash": write.text_hash if newest else state.pending_text_hash,  # type: ignore[union-attr]
                    "attempted_at": now,
                }
            )
        upsert_rows(LedgerEntry, ["domain", "entity_id", "embedding_version"], rows, ATTEMPT_FIELDS)


@dataclass(frozen=True)
class Confirmed:
    """What a confirm found: writes that won, and entities a newer-numbered but staler write superseded."""

    won: list[LedgerWrite]
    requeue: dict[str, int]


def confirm(domain: str, writes: Sequence[LedgerWrite]) -> Confirmed:
    """After the insert: record what each key now holds, if this write is the newest plan."""
    if not writes:
        return Confirmed(won=[], requeue={})
    now = timezone.now()
    won: list[LedgerWrite] = []
    requeue: dict[str, int] = {}
    changed: dict[int, dict[str, Any]] = {}
    with transaction.atomic():
        states = _states(
            domain, [write.entity_id for write in writes], [write.version for write in writes], lock=True
        )
        for write in writes:
            state = states.get(write.key)
            if state is None:  # never attempted (cannot happen through flush); nothing to record
                continue
            if state.pending_version == write.row_version:
                state.pending_version, state.pending_team_id, state.pending_text_hash = None, None, ""
            row: dict[str, Any] = {
                "pending_version": state.pending_version,
                "pending_team_id": state.pending_team_id,
                "pending_text_hash": state.pending_text_hash,
            }
            if write.row_version < state.row_version:
                changed[state.pk] = row  # a newer plan already landed: this write lost
                continue
            if write.source_seq < state.source_seq:
                # Newer number, older read: ClickHouse now holds what an earlier change showed.
                requeue[write.entity_id] = state.source_seq
            others = set(state.live_teams) if state.pending_version is not None else set()
            teams = others | ({write.live_team} if write.live_team is not None else set())
            row.update(
                team_id=write.live_team if write.live_team is not None else state.team_id,
                is_live=write.live_team is not None,
                live_teams=sorted(teams),
                has_live=bool(teams),
                row_version=write.row_version,
                content_hash=write.content_hash,
                text_hash=write.text_hash,
                summary_input_hash=write.summary_input_hash,
                source_seq=write.source_seq,
                blocked=write.blocked,
                confirmed_at=now,
            )
            changed[state.pk] = row
            won.append(write)
        full = [pk for pk, row in changed.items() if "row_version" in row]
        update_rows(LedgerEntry, {pk: changed[pk] for pk in full}, CONFIRM_FIELDS)
        update_rows(
            LedgerEntry,
            {pk: row for pk, row in changed.items() if "row_version" not in row},
            ["pending_version", "pending_team_id", "pending_text_hash"],
        )
    return Confirmed(won=won, requeue=requeue)


def record_skips(domain: str, seen: dict[LedgerKey, int]) -> None:
    """Entities whose ledger already matches them: note the change they were checked at."""
    if not seen:
        return
    with transaction.atomic(savepoint=False):  # the batch's own transaction, if any
        states = _states(domain, [key[0] for key in seen], [key[1] for key in seen], lock=True)
        update_rows(
            LedgerEntry,
            {
                state.pk: {"source_seq": seq}
                for key, seq in seen.items()
                if (state := states.get(key)) is not None and seq > state.source_seq
            },
            ["source_seq"],
        )


# What the ledger says of a key all of whose rows were tombstoned at once (a retired version).
TOMBSTONED = {
    "is_live": False,
    "live_teams": [],
    "has_live": False,
    "content_hash": "",
    "text_hash": "",
    "pending_version": None,
    "pending_team_id": None,
    "pending_text_hash": "",
}


def record_tombstoned(entry_pks: Sequence[int], row_version: int, blocked: str) -> None:
    """After the insert: these entries' keys hold tombstones only, at `row_version` (`blocked` says
    why they have no live row)."""
    now = timezone.now()
    values = {**TOMBSTONED, "row_version": row_version, "blocked": blocked, "confirmed_at": now}
    update_rows(LedgerEntry, {pk: values for pk in entry_pks}, list(values))
