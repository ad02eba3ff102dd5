"""Move a domain to a new embedding version without downtime: backfill, promote, retire.

1. `start_backfill`: register version N (BACKFILLING, never served before its promotion) with its
   embedder and start a run; every run writes every tracked version, so N fills in beside the
   served one, and edits made meanwhile land in both.
2. `promote`: once every live entity has a confirmed live row at N (the ledger says so) and the
   search evaluation does not lose recall@5 beyond a tolerance (or `force`), N becomes the served
   version in one transaction; the previous one stays tracked (written) until it is retired. The
   served version lives in the database, so every process switches at once.
3. `retire`: stop writing a version that no longer serves, and tombstone its rows in ClickHouse.

Plain functions returning small typed results; `manage.py migrate_embeddings` prints them.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from django.db import transaction
from django.db.models import Exists, OuterRef, Q
from django.utils import timezone

from entity_vectors import conf
from entity_vectors.bulk import update_rows
from entity_vectors.domain_versions import ensure_version, get_version, mismatch, served_version, spec_of
from entity_vectors.exceptions import PermanentError, SearchError
from entity_vectors.inputs import SyncEntityVectorsInputs
from entity_vectors.models import DomainVersion, LedgerEntry, SyncRun
from entity_vectors.providers import EmbedderSpec, check_provider_settings, configured_embedder_spec
from entity_vectors.registry import get_entity_config
from entity_vectors.store import EmbeddingRow, EmbeddingStore, chunked, get_store
from entity_vectors.versions import next_row_version
from entity_vectors.workflow.selection import eligible_filter, key_expression

DEFAULT_MAX_RECALL_DROP = 0.02
DEFAULT_INSERT_BATCH_SIZE = 10_000
MAX_VERSION = 2**32 - 1
RETIRED_BLOCK = "retired"
# Ledger fields a retirement writes (the confirmed state of a tombstoned key).
RETIRE_FIELDS = [
    "is_live",
    "live_teams",
    "has_live",
    "row_version",
    "content_hash",
    "text_hash",
    "blocked",
    "pending_version",
    "pending_team_id",
    "pending_text_hash",
    "confirmed_at",
]


class MigrationError(PermanentError, ValueError):
    """A migration step that cannot be done as asked; the message names the problem."""


# -- values ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Coverage:
    """How many live entities of a domain have a confirmed live row at one version."""

    domain: str
    version: int
    live: int
    covered: int

    @property
    def missing(self) -> int:
        """Live entities without a confirmed live row at the version."""
        return max(self.live - self.covered, 0)

    @property
    def complete(self) -> bool:
        """Whether every live entity has its row."""
        return self.missing == 0

    @property
    def ratio(self) -> float:
        """covered / live (1.0 when there is nothing live)."""
        return 1.0 if not self.live else min(self.covered / self.live, 1.0)

    def describe(self) -> str:
        """One line: `action v2 coverage: 41/42 live entities (97.6%), 1 missing`."""
        missing = f", {self.missing} missing" if self.missing else ""
        return (
            f"{self.domain} v{self.version} coverage: {self.covered}/{self.live} live entities "
            f"({self.ratio:.1%}){missing}"
        )


@dataclass(frozen=True)
class Backfill:
    """What `start_backfill` did: the version registered, the run started (or queued), coverage."""

    domain: str
    record: DomainVersion
    served: int
    created: bool
    coverage: Coverage
    run: SyncRun | None = None
    task_id: str = ""

    @property
    def queued(self) -> bool:
        """Whether the run went to the workers (it may not have written anything yet)."""
        return self.run is None


@dataclass(frozen=True)
class Gate:
    """The search evaluation gate: recall@5 of the candidate against the served version."""

    status: str  # "passed", "failed" or "skipped"
    candidate_recall: float | None = None
    served_recall: float | None = None
    queries: int = 0
    max_recall_drop: float = DEFAULT_MAX_RECALL_DROP
    note: str = ""

    @property
    def passed(self) -> bool:
        """Whether the gate lets the promotion through (a skipped gate does)."""
        return self.status != "failed"

    def describe(self, version: int, served: int) -> str:
        """One line for the command's output."""
        if self.status == "skipped":
            return f"evaluation gate skipped: {self.note}"
        served_text = "n/a" if self.served_recall is None else f"{self.served_recall:.3f}"
        line = (
            f"evaluation gate {self.status}: recall@5 {self.candidate_recall or 0.0:.3f} at v{version} "
            f"vs {served_text} at v{served} ({self.queries} labelled queries, allowed drop "
            f"{self.max_recall_drop:.3f})"
        )
        return f"{line}; {self.note}" if self.note else line


@dataclass(frozen=True)
class PromotionCheck:
    """Whether version N may be promoted: its coverage and the evaluation gate (unless forced)."""

    domain: str
    version: int
    served: int
    coverage: Coverage
    gate: Gate | None
    forced: bool = False
    already_serving: bool = False

    @property
    def problems(self) -> list[str]:
        """Why the promotion is refused (empty when it may go ahead)."""
        if self.forced or self.already_serving:
            return []
        problems = []
        if not self.coverage.complete:
            problems.append(
                f"{self.coverage.missing} of {self.coverage.live} live {self.domain} entities have no "
                f"confirmed row at version {self.version} (covered {self.coverage.covered}); run "
                f"`manage.py migrate_embeddings --domain {self.domain} --to-version {self.version}` again "
                "(or wait for the next scheduled run, which writes every tracked version)"
            )
        if self.gate is not None and not self.gate.passed:
            problems.append(self.gate.describe(self.version, self.served))
        return problems

    @property
    def passed(self) -> bool:
        """Whether the promotion may go ahead."""
        return not self.problems


@dataclass(frozen=True)
class Promotion:
    """What `promote` did: the check, and whether N now serves (and which version it replaced)."""

    check: PromotionCheck
    promoted: bool
    previous: int | None = None


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


# -- helpers ----------------------------------------------------------------------------------------


def _check_version_number(version: object, what: str = "--to-version") -> int:
    if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= MAX_VERSION:
        raise MigrationError(
            f"{what}={version!r}: an embedding version is a whole number from 1 to {MAX_VERSION}"
        )
    return version


def _registered(domain: str) -> str:
    records = DomainVersion.objects.filter(domain=domain).order_by("embedding_version")
    shown = ", ".join(f"v{record.embedding_version} ({record.state})" for record in records)
    return shown or "none"


def resolve_spec(embedder: str | None, model: str | None, dimensions: int | None) -> EmbedderSpec | None:
    """The embedder given on the command line (missing parts from the settings), or None if none was."""
    if embedder is None and model is None and dimensions is None:
        return None
    configured = conf.embedder_name()
    name = (embedder if embedder is not None else configured).strip().lower()
    if name not in conf.EMBEDDERS:
        raise MigrationError(
            f"--embedder={embedder!r} is not a known embedder; choose one of {', '.join(conf.EMBEDDERS)}"
        )
    if model is not None and name != "openai":
        raise MigrationError(f"--model={model!r}: only the openai embedder takes a model; {name} has none")
    if model is not None and not model.strip():
        raise MigrationError("--model: must not be empty")
    if dimensions is not None and (
        isinstance(dimensions, bool) or not isinstance(dimensions, int) or dimensions < 1
    ):
        raise MigrationError(f"--dimensions={dimensions!r}: must be a whole number of at least 1")
    if dimensions is None:
        if name == configured:
            dimensions = conf.embedding_dimensions()
        else:
            dimensions = 256 if name == "wordllama" else conf.DEFAULT_EMBEDDING_DIMENSIONS
    if name == "wordllama":
        from entity_vectors.conf.providers import semantic_installed
        from entity_vectors.providers.semantic import SUPPORTED_DIMENSIONS

        if not semantic_installed():
            raise MigrationError(
                "--embedder=wordllama needs the `semantic` extra (pip install 'entity-vectors[semantic]')"
            )
        if dimensions not in SUPPORTED_DIMENSIONS:
            raise MigrationError(
                f"--dimensions={dimensions}: wordllama makes vectors of "
                f"{', '.join(map(str, SUPPORTED_DIMENSIONS))}"
            )
    resolved_model = (model or conf.embedding_model()).strip() if name == "openai" else ""
    return EmbedderSpec(name=name, model=resolved_model, dimensions=dimensions)


def _describe_spec(spec: EmbedderSpec) -> str:
    return f"{spec.identity}, {spec.dimensions} dimensions"


def coverage(domain: str, version: int) -> Coverage:
    """Live entities of `domain`, and how many of them have a confirmed live row at `version` in their team.

    Read from the ledger (`is_live`, no write left unconfirmed), never from the host's columns.
    """
    config = get_entity_config(domain)
    live = config.get_queryset().filter(eligible_filter(config))
    confirmed = LedgerEntry.objects.filter(
        domain=domain,
        embedding_version=version,
        entity_id=OuterRef("entity_key"),
        team_id=OuterRef("team_id"),
        is_live=True,
        pending_version__isnull=True,
    )
    covered = live.annotate(entity_key=key_expression(config.model_class)).filter(Exists(confirmed)).count()
    return Coverage(domain=domain, version=version, live=live.count(), covered=covered)


# -- 1. backfill ------------------------------------------------------------------------------------


def _check_backfill(domain: str, version: int, spec: EmbedderSpec | None) -> tuple[int, EmbedderSpec]:
    """Every refusal of a backfill, before anything is written; returns the served version and N's spec."""
    get_entity_config(domain)  # UnknownDomainError names the registered domains
    _check_version_number(version)
    served = served_version(domain)
    if version == served:
        raise MigrationError(
            f"--to-version={version}: version {version} is the one {domain} search serves; a migration "
            f"backfills a new version beside it (e.g. --to-version {served + 1})"
        )
    record = get_version(domain, version)
    if record is not None and record.state == DomainVersion.State.RETIRED:
        raise MigrationError(
            f"--to-version={version}: version {version} of {domain} was retired and cannot be written again; "
            "choose a new version number"
        )
    if record is not None and spec is not None and spec_of(record) != spec:
        raise MigrationError(
            f"--to-version={version}: version {version} of {domain} is already registered with "
            f"{_describe_spec(spec_of(record))}, not {_describe_spec(spec)}; vectors of different embedders "
            "cannot share a version: choose a new version number"
        )
    if record is not None and spec is None:
        problem = mismatch(record, configured_embedder_spec())
        if problem:
            raise MigrationError(f"--to-version={version}: {problem}")
    chosen = spec_of(record) if record is not None else spec or configured_embedder_spec()
    # A run writes every tracked version: each one's embedder must be usable, N's included.
    tracked = DomainVersion.objects.filter(
        domain=domain, state__in=(DomainVersion.State.SERVING, DomainVersion.State.BACKFILLING)
    )
    check_provider_settings([chosen, *(spec_of(other) for other in tracked)])
    return served, chosen


def start_backfill(
    domain: str,
    version: int,
    spec: EmbedderSpec | None = None,
    *,
    inline: bool | None = None,
    on_batch: Callable[[SyncRun], None] | None = None,
) -> Backfill:
    """Register `version` of `domain` as backfilling (with `spec`, else the configured embedder) and
    start a run that writes it beside the served version: inline, or queued for the workers.

    Raises MigrationError (or another EntityVectorsError) before writing anything if the version
    serves, was retired, or was registered with another embedder, or if an embedder is unusable.
    """
    served, _ = _check_backfill(domain, version, spec)
    inputs = SyncEntityVectorsInputs(domain=domain, embedding_version=version, delay_between_batches=0)
    run_here = conf.inline_by_default() if inline is None else inline
    if not DomainVersion.objects.filter(domain=domain, state=DomainVersion.State.SERVING).exists():
        # Nothing registered serves yet: the served version (the setting's) is recorded as such, so
        # that it is written beside N and N never serves before its promotion.
        ensure_version(domain, served)
    created = get_version(domain, version) is None
    record = ensure_version(domain, version, spec, serve_if_none=False)
    task_id = str(uuid.uuid4())
    run: SyncRun | None = None
    if run_here:
        from entity_vectors.workflow import run_inline

        run = run_inline(inputs, task_id=task_id, on_batch=on_batch)
    else:
        _queue(inputs, task_id)
    return Backfill(
        domain=domain,
        record=record,
        served=served,
        created=created,
        coverage=coverage(domain, version),
        run=run,
        task_id=task_id,
    )


def _queue(inputs: SyncEntityVectorsInputs, task_id: str) -> None:
    from kombu.exceptions import OperationalError

    from entity_vectors.tasks import sync_entities

    try:
        sync_entities.apply_async(kwargs=inputs.as_dict(), task_id=task_id)
    except OperationalError as exc:
        from celery import current_app

        broker = conf.redact(str(current_app.conf.broker_url))
        raise MigrationError(
            f"version {inputs.embedding_version} of {inputs.domain} is registered, but its run cannot be "
            f"queued: the broker at {broker} is unreachable ({conf.redact(str(exc))}); start Redis or set "
            "CELERY_BROKER_URL, then run this command again"
        ) from None


# -- 2. promote -------------------------------------------------------------------------------------


def _recall(domain: str, version: int, queries_path: Path | str | None) -> tuple[float, int]:
    from entity_vectors.evaluation import evaluate

    results = evaluate(
        domains=[domain], modes=("vector",), queries_path=queries_path, embedding_version=version
    )
    result = next(item for item in results if item.domain == domain)
    return result.recall_at_5, result.queries


def evaluation_gate(
    domain: str,
    version: int,
    served: int,
    max_recall_drop: float = DEFAULT_MAX_RECALL_DROP,
    queries_path: Path | str | None = None,
) -> Gate:
    """recall@5 of `version` against `served` on the labelled queries of `domain` (vector search).

    Skipped (with a note) when the labelled set has no queries for the domain; failed when the
    candidate loses more than `max_recall_drop`, or when it cannot be evaluated at all.
    """
    from entity_vectors.evaluation import EvaluationError, load_queries

    try:
        labelled = {query.domain for query in load_queries(queries_path)}
    except EvaluationError as exc:
        return Gate(
            "failed", max_recall_drop=max_recall_drop, note=f"the labelled queries cannot be read: {exc}"
        )
    if domain not in labelled:
        return Gate(
            "skipped",
            max_recall_drop=max_recall_drop,
            note=f"the labelled query set has no queries for {domain} (ENTITY_VECTORS_EVAL_QUERIES)",
        )
    try:
        candidate, queries = _recall(domain, version, queries_path)
    except (EvaluationError, SearchError) as exc:
        return Gate(
            "failed",
            max_recall_drop=max_recall_drop,
            note=(
                f"version {version} cannot be evaluated: {exc}; point ENTITY_VECTORS_EVAL_QUERIES at "
                "labelled queries of your data, or pass --skip-evaluation"
            ),
        )
    note = ""
    baseline: float | None
    try:
        baseline, _ = _recall(domain, served, queries_path)
    except SearchError as exc:  # the served version cannot be searched as configured: nothing to keep
        baseline, note = None, f"the served version could not be evaluated ({exc})"
    passed = baseline is None or candidate >= baseline - max_recall_drop - 1e-9
    return Gate(
        "passed" if passed else "failed",
        candidate_recall=candidate,
        served_recall=baseline,
        queries=queries,
        max_recall_drop=max_recall_drop,
        note=note,
    )


def _promotable(domain: str, version: int) -> DomainVersion:
    get_entity_config(domain)
    _check_version_number(version)
    record = get_version(domain, version)
    if record is None:
        raise MigrationError(
            f"--to-version={version}: version {version} of {domain} was never registered (registered: "
            f"{_registered(domain)}); backfill it first: manage.py migrate_embeddings --domain {domain} "
            f"--to-version {version}"
        )
    if record.state == DomainVersion.State.RETIRED:
        raise MigrationError(
            f"--to-version={version}: version {version} of {domain} was retired; it cannot serve"
        )
    return record


def check_promotion(
    domain: str,
    version: int,
    *,
    max_recall_drop: float = DEFAULT_MAX_RECALL_DROP,
    force: bool = False,
    evaluate: bool = True,
    queries_path: Path | str | None = None,
) -> PromotionCheck:
    """Whether `version` may serve `domain`: full coverage and the evaluation gate (`force` skips both,
    `evaluate=False` only the gate). Raises MigrationError for a version that cannot serve at all."""
    if isinstance(max_recall_drop, bool) or not 0.0 <= max_recall_drop <= 1.0:
        raise MigrationError(f"--max-recall-drop={max_recall_drop!r}: must be a number from 0 to 1")
    record = _promotable(domain, version)
    served = served_version(domain)
    covered = coverage(domain, version)
    if record.is_served:
        return PromotionCheck(domain, version, served, covered, None, forced=force, already_serving=True)
    gate = None
    if evaluate and not force:
        gate = evaluation_gate(domain, version, served, max_recall_drop, queries_path)
    elif not force:
        gate = Gate("skipped", max_recall_drop=max_recall_drop, note="--skip-evaluation was given")
    return PromotionCheck(domain, version, served, covered, gate, forced=force)


def promote(
    domain: str,
    version: int,
    *,
    max_recall_drop: float = DEFAULT_MAX_RECALL_DROP,
    force: bool = False,
    evaluate: bool = True,
    queries_path: Path | str | None = None,
) -> Promotion:
    """Make `version` the one search serves, if `check_promotion` allows (or `force`), in one transaction.

    The previously served version becomes backfilling: still written by every run until retired.
    """
    check = check_promotion(
        domain,
        version,
        max_recall_drop=max_recall_drop,
        force=force,
        evaluate=evaluate,
        queries_path=queries_path,
    )
    if check.already_serving or not check.passed:
        return Promotion(check=check, promoted=False)
    with transaction.atomic():
        records = list(DomainVersion.objects.select_for_update().filter(domain=domain).order_by("pk"))
        target = next((record for record in records if record.embedding_version == version), None)
        if target is None or target.state == DomainVersion.State.RETIRED:
            raise MigrationError(
                f"version {version} of {domain} was retired or removed meanwhile; not promoted"
            )
        if target.is_served:
            return Promotion(check=check, promoted=False)
        previous = [record for record in records if record.is_served]
        for record in previous:
            record.state = DomainVersion.State.BACKFILLING
            record.save(update_fields=["state"])
        target.state = DomainVersion.State.SERVING
        target.promoted_at = timezone.now()
        target.save(update_fields=["state", "promoted_at"])
    return Promotion(
        check=check, promoted=True, previous=previous[0].embedding_version if previous else check.served
    )


# -- 3. retire --------------------------------------------------------------------------------------


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
    from entity_vectors.workflow import expire_abandoned_runs

    expire_abandoned_runs(domain)
    deadline = time.monotonic() + max(wait_seconds, 0.0)
    waiting = _writing_runs(domain, version)
    while waiting and time.monotonic() < deadline:
        time.sleep(poll_seconds)
        waiting = _writing_runs(domain, version)
    if waiting:
        return Retirement(domain=domain, version=version, already_retired=already, waiting_for=waiting)
    store = store or get_store()
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
        now = timezone.now()
        # Recorded after the insert: a crash in between leaves the ledger saying "may be live", and a
        # rerun tombstones again (the safe direction).
        update_rows(
            LedgerEntry,
            {
                entry[0]: {
                    "is_live": False,
                    "live_teams": [],
                    "has_live": False,
                    "row_version": row_version,
                    "content_hash": "",
                    "text_hash": "",
                    "blocked": RETIRED_BLOCK,
                    "pending_version": None,
                    "pending_team_id": None,
                    "pending_text_hash": "",
                    "confirmed_at": now,
                }
                for entry in page
            },
            RETIRE_FIELDS,
        )
    return Retirement(
        domain=domain,
        version=version,
        already_retired=already,
        entries=len(entries),
        tombstoned=tombstoned,
        row_version=row_version,
    )


__all__ = [
    "DEFAULT_MAX_RECALL_DROP",
    "Backfill",
    "Coverage",
    "Gate",
    "MigrationError",
    "Promotion",
    "PromotionCheck",
    "Retirement",
    "check_promotion",
    "check_retirement",
    "coverage",
    "evaluation_gate",
    "promote",
    "resolve_spec",
    "retire",
    "start_backfill",
]
