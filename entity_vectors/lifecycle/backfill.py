"""Move a domain to a new embedding version without downtime: backfill, promote, retire.

1. `start_backfill`: register version N (BACKFILLING, never served before its promotion) with its
   embedder and start a run; every run writes every tracked version, so N fills in beside the
   served one, and edits made meanwhile land in both.
2. `promote` (`promotion`): once every live entity has a confirmed live row at N (the ledger says so) and the
   search evaluation does not lose recall@5 beyond a tolerance (or `force`), N becomes the served
   version in one transaction; the previous one stays tracked (written) until it is retired. The
   served version lives in the database, so every process switches at once.
3. `retire` (`retirement`): stop writing a version that no longer serves, and tombstone
   its rows in ClickHouse.

Plain functions returning small typed results; `manage.py migrate_embeddings` prints them.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass

from django.db.models import Exists, OuterRef

from entity_vectors import conf
from entity_vectors.core.embedding_versions import (
    ensure_version,
    get_version,
    served_version,
    spec_of,
)
from entity_vectors.core.inputs import SyncEntityVectorsInputs
from entity_vectors.core.registry import get_entity_config
from entity_vectors.exceptions import PermanentError
from entity_vectors.models import DomainVersion, LedgerEntry, SyncRun
from entity_vectors.providers import EmbedderSpec, check_provider_settings, configured_embedder_spec
from entity_vectors.workflow.selection import eligible_filter, key_expression

DEFAULT_INSERT_BATCH_SIZE = 10_000
MAX_VERSION = 2**32 - 1


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


__all__ = [
    "Backfill",
    "Coverage",
    "MigrationError",
    "coverage",
    "resolve_spec",
    "start_backfill",
]
