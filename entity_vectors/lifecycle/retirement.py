"""Retire an embedding version that no longer serves: stop writing it, tombstone its rows.

The third step of a model migration (`backfill` does the backfill, `promotion` the promotion).
Runs started before the retirement may still write the version: its tombstones wait for them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from entity_vectors.core.embedding_versions import get_version
from entity_vectors.core.registry import get_entity_config
from entity_vectors.lifecycle.backfill import (
    DEFAULT_INSERT_BATCH_SIZE,
    MigrationError,
    _check_version_number,
    _registered,
)
from entity_vectors.models import DomainVersion, LedgerEntry, SyncRun
from entity_vectors.models.row_version import next_row_version
from entity_vectors.store import EmbeddingRow, EmbeddingStore, chunked, get_store
from entity_vectors.workflow import ledger
from entity_vectors.workflow.finish import expire_abandoned_runs

RETIRED_BLOCK = "retired"


@dataclass(frozen=True)
class Retirement:
    """What `retire` did: the version retired, the tombstones written, runs that still write it."""

    domain: str
    version: int
    already_retired: bool
    entries: int = 0
    tombstoned: int = 0
    row_version: int = 0
    # Runs started before the retirement that may still write the version: tombstones wait for them.
    waiting_for: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        """Whether the version's rows were tombstoned (no run could write them afterwards)."""
        return not self.waiting_for


def _writing_runs(domain: str, version: int) -> list[str]:
    """Running runs of `domain` that write `version` (they started before it was retired)."""
    found = []
    for run in SyncRun.objects.filter(domain=domain, status=SyncRun.Status.RUNNING):
        versions = run.versions if isinstance(run.versions, dict) else {}
        if any(int(item.get("version", 0)) == version for item in versions.get("write", [])):
            found.append(str(run.id))
    return found


def _tombstone_rows(
    domain: str, version: int, row_version: int, entry: tuple[Any, ...]
) -> list[EmbeddingRow]:
    _, entity_id, team_id, is_live, live_teams = entry
    teams = {int(team) for team in live_teams or []}
    if is_live and team_id is not None:
        teams.add(int(team_id))
    now = timezone.now()
    return [
        EmbeddingRow(
            domain=domain,
            team_id=team,
            id=str(entity_id),
            vector=[],
            text="",
            properties="{}",
            embedding_version=version,
            timestamp=now,
            version=row_version,
            is_deleted=1,
        )
        for team in sorted(teams)
    ]


def check_retirement(domain: str, version: int, promoting: int | None = None) -> DomainVersion:
    """The record of a version that may be retired; MigrationError otherwise (never registered, or
    serving, unless `promoting` names the version about to replace it)."""
    get_entity_config(domain)
    _check_version_number(version, "--retire")
    record = get_version(domain, version)
    if record is None:
        raise MigrationError(
            f"--retire={version}: version {version} of {domain} was never registered "
            f"(registered: {_registered(domain)}); nothing to retire"
        )
    if promoting is not None and promoting == version:
        raise MigrationError(f"--retire={version}: cannot retire the version being promoted")
    if record.is_served and promoting is None:
        raise MigrationError(
            f"--retire={version}: version {version} is the one {domain} search serves; promote another "
            f"version first (--to-version N --promote), then retire {version}"
        )
    return record


def retire(
    domain: str,
    version: int,
    *,
    insert_batch_size: int = DEFAULT_INSERT_BATCH_SIZE,
    wait_seconds: float = 0.0,
    store: EmbeddingStore | None = None,
    poll_seconds: float = 0.5,
) -> Retirement:
    """Retire `version` of `domain` (runs stop writing it) and tombstone every row it may hold live.

    Refuses the served version. Idempotent: retiring a retired version tombstones what is left. Runs
    that started before the retirement and still write the version are waited for (`wait_seconds`);
    if one is still running then, the version stays retired and the tombstones wait for a rerun.
    """
    check_retirement(domain, version)
    if isinstance(insert_batch_size, bool) or not isinstance(insert_batch_size, int) or insert_batch_size < 1:
        raise MigrationError(f"insert_batch_size={insert_batch_size!r}: must be a whole number of at least 1")
    already = _mark_retired(domain, version)
    waiting = _wait_for_writers(domain, version, wait_seconds, poll_seconds)
    if waiting:
        return Retirement(domain=domain, version=version, already_retired=already, waiting_for=waiting)
    entries, tombstoned, row_version = _tombstone_version(
        domain, version, store or get_store(), insert_batch_size
    )
    return Retirement(
        domain=domain,
        version=version,
        already_retired=already,
        entries=entries,
        tombstoned=tombstoned,
        row_version=row_version,
    )


def _mark_retired(domain: str, version: int) -> bool:
    """Record the version as retired (runs stop writing it); True if it was retired already."""
    with transaction.atomic():
        record = (
            DomainVersion.objects.select_for_update().filter(domain=domain, embedding_version=version).first()
        )
        if record is None or record.is_served:  # changed since the check: check again, with its message
            check_retirement(domain, version)
            raise MigrationError(f"--retire={version}: version {version} of {domain} changed meanwhile")
        already = record.state == DomainVersion.State.RETIRED
        if not already:
            record.state = DomainVersion.State.RETIRED
            record.retired_at = timezone.now()
            record.save(update_fields=["state", "retired_at"])
    return already


def _wait_for_writers(domain: str, version: int, wait_seconds: float, poll_seconds: float) -> list[str]:
    """The runs that still write the version after waiting up to `wait_seconds` for them."""
    expire_abandoned_runs(domain)
    deadline = time.monotonic() + max(wait_seconds, 0.0)
    waiting = _writing_runs(domain, version)
    while waiting and time.monotonic() < deadline:
        time.sleep(poll_seconds)
        waiting = _writing_runs(domain, version)
    return waiting


def _tombstone_version(
    domain: str, version: int, store: EmbeddingStore, insert_batch_size: int
) -> tuple[int, int, int]:
    """Tombstone every key the ledger says may hold a live row at the version; returns the entries
    looked at, the tombstones written and their row version."""
    # Taken after every writer of the version is done: the tombstones are the newest plan of each key.
    row_version = next_row_version()
    candidates = (
        LedgerEntry.objects.filter(domain=domain, embedding_version=version)
        .filter(Q(has_live=True) | Q(is_live=True) | ~Q(live_teams=[]))
        .order_by("pk")
    )
    entries = list(candidates.values_list("pk", "entity_id", "team_id", "is_live", "live_teams"))
    tombstoned = 0
    for offset in range(0, len(entries), insert_batch_size):
        page = entries[offset : offset + insert_batch_size]
        rows = [row for entry in page for row in _tombstone_rows(domain, version, row_version, entry)]
        for chunk in chunked(rows, insert_batch_size):
            tombstoned += store.insert(chunk)
        # Recorded after the insert: a crash in between leaves the ledger saying "may be live", and a
        # rerun tombstones again (the safe direction).
        ledger.record_tombstoned([entry[0] for entry in page], row_version, RETIRED_BLOCK)
    return len(entries), tombstoned, row_version


__all__ = ["RETIRED_BLOCK", "Retirement", "check_retirement", "retire"]
