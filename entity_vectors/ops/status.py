"""Freshness, coverage, failures and spend per domain and team: what an operator watches.

Shown by `manage.py entity_vectors_status`, the admin, and exported to Prometheus (`metrics.py`).
Reads the pipeline's own tables (ledger, change log, failures, runs) and counts the host's live
entities; it sends nothing and writes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from django.db.models import Count, Min, Q, Sum
from django.utils import timezone

from entity_vectors import conf
from entity_vectors.capture.changelog import key_of
from entity_vectors.core.embedding_versions import default_embedder_change, served_version, spec_of
from entity_vectors.core.entity_config import EntityConfig
from entity_vectors.core.registry import get_entity_config
from entity_vectors.models import (
    BatchApiJob,
    DomainVersion,
    EntityChange,
    EntityFailure,
    LedgerEntry,
    SyncRun,
)
from entity_vectors.providers.specs import EmbedderSpec
from entity_vectors.workflow import budget
from entity_vectors.workflow.selection import eligible_filter, to_pks

SPEND_DAYS = 30


@dataclass
class TeamStatus:
    """One team's share of a domain."""

    team_id: int
    live: int = 0
    covered: int = 0
    pending: int = 0
    failing: int = 0
    parked: int = 0
    oldest_pending_at: datetime | None = None

    @property
    def coverage(self) -> float:
        """Live entities with a current vector / live entities (1.0 when there are none)."""
        return 1.0 if not self.live else min(self.covered / self.live, 1.0)

    @property
    def oldest_pending_seconds(self) -> float:
        """Age of the team's oldest change not yet handled (0 when nothing waits)."""
        return _age(self.oldest_pending_at)


def _age(moment: datetime | None) -> float:
    return 0.0 if moment is None else max((timezone.now() - moment).total_seconds(), 0.0)


@dataclass
class DomainStatus:
    """One domain at a glance."""

    domain: str
    served_version: int
    versions: list[DomainVersion]
    live: int
    covered: int
    pending: int
    oldest_pending_at: datetime | None
    failing: int
    parked: int
    spend_usd: Decimal
    runs: list[SyncRun]
    running: SyncRun | None
    teams: dict[int, TeamStatus] = field(default_factory=dict)
    # Entities the latest finished run left waiting for budget, and the owners at their cap.
    over_budget: int = 0
    owners_at_cap: list[str] = field(default_factory=list)
    # The domain's Batch API job in progress, if any.
    batch_api_job: BatchApiJob | None = None
    # The environment's default embedder when it is not the served version's: what a migration
    # would move to (`migration_advice`).
    default_embedder: EmbedderSpec | None = None
    # The version number a migration would make.
    next_version: int = 0

    @property
    def coverage(self) -> float:
        """Live entities with a current vector / live entities (1.0 when there are none)."""
        return 1.0 if not self.live else min(self.covered / self.live, 1.0)

    @property
    def oldest_pending_seconds(self) -> float:
        """Age of the oldest change not yet handled (0 when nothing waits)."""
        return _age(self.oldest_pending_at)

    @property
    def served(self) -> DomainVersion | None:
        """The record of the served version (None before its first run)."""
        return next(
            (record for record in self.versions if record.embedding_version == self.served_version), None
        )

    def migration_advice(self) -> str | None:
        """One line when the environment's default embedder is not the served version's: the served
        version keeps its own (nothing breaks), and the command that moves the vectors to the default.

        A version already backfilling with the default embedder gets the command that promotes it.
        """
        served, default = self.served, self.default_embedder
        if served is None or default is None:
            return None
        made_by = f"{served.identity}, {served.dimensions} dimensions"
        underway = next(
            (
                record
                for record in self.versions
                if record.state == DomainVersion.State.BACKFILLING
                and record.embedding_version > served.embedding_version
                and spec_of(record) == default
            ),
            None,
        )
        if underway is not None:
            return (
                f"the default embedder ({default.identity}, {default.dimensions} dimensions) writes version "
                f"{underway.embedding_version}, backfilling beside the served version "
                f"{served.embedding_version} ({made_by}); once its coverage is complete: manage.py "
                f"migrate_embeddings --domain {self.domain} --to-version {underway.embedding_version} "
                "--promote"
            )
        move = f"manage.py migrate_embeddings --domain {self.domain} --to-version {self.next_version} --wait"
        if served.embedder == "openai" and not conf.openai_api_key():
            return (
                f"version {served.embedding_version} (served) is made by the openai embedder ({made_by}), "
                "which needs OPENAI_API_KEY, not set: its runs and searches fail; set the key, or move to "
                f"the default {default.identity} ({default.dimensions} dimensions): {move}"
            )
        return (
            f"version {served.embedding_version} (served) keeps the embedder it was made with ({made_by}), "
            f"not the default {default.identity} ({default.dimensions} dimensions); to move to it: {move}"
        )


def _team(teams: dict[int, TeamStatus], team_id: Any) -> TeamStatus | None:
    if team_id is None:
        return None
    key = int(team_id)
    status = teams.get(key)
    if status is None:
        status = teams[key] = TeamStatus(team_id=key)
    return status


def domain_status(domain: str, runs: int = 5) -> DomainStatus:
    """Everything the status command, the admin and the metrics show for one domain."""
    config = get_entity_config(domain)
    version = served_version(domain)
    versions = list(DomainVersion.objects.filter(domain=domain).order_by("embedding_version"))
    served = next((record for record in versions if record.embedding_version == version), None)
    teams = _team_statuses(config, version)
    live = sum(team.live for team in teams.values())
    covered = sum(min(team.covered, team.live) for team in teams.values())
    changes = EntityChange.objects.filter(domain=domain)
    failures = EntityFailure.objects.filter(domain=domain)
    spend, jobs = _spend(domain)
    latest = (
        SyncRun.objects.filter(domain=domain, kind=SyncRun.Kind.RUN)
        .exclude(status__in=[SyncRun.Status.RUNNING, SyncRun.Status.SKIPPED])
        .order_by("-started_at")
        .first()
    )
    return DomainStatus(
        over_budget=latest.over_budget if latest is not None else 0,
        owners_at_cap=[row.owner for row in budget.over_budget()] if budget.enabled() else [],
        batch_api_job=next((job for job in jobs if job.status in BatchApiJob.ACTIVE), None),
        domain=domain,
        served_version=version,
        versions=versions,
        live=live,
        covered=covered,
        pending=max(changes.count(), live - covered),
        oldest_pending_at=changes.aggregate(oldest=Min("changed_at"))["oldest"],
        failing=failures.filter(parked_at__isnull=True).count(),
        parked=failures.filter(parked_at__isnull=False).count(),
        spend_usd=spend,
        runs=list(SyncRun.objects.filter(domain=domain).order_by("-started_at")[:runs]),
        running=SyncRun.objects.filter(domain=domain, status=SyncRun.Status.RUNNING).first(),
        teams=teams,
        default_embedder=None if served is None else default_embedder_change(served),
        next_version=max([version, *(record.embedding_version for record in versions)]) + 1,
    )


def _team_statuses(config: EntityConfig[Any], version: int) -> dict[int, TeamStatus]:
    """Per team: live and covered entities, pending changes (the oldest's age), failing and parked."""
    domain = config.domain_name
    teams: dict[int, TeamStatus] = {}
    live_rows = (
        config.get_queryset().filter(eligible_filter(config)).values("team_id").annotate(n=Count("pk"))
    )
    for row in live_rows:
        status = _team(teams, row["team_id"])
        assert status is not None
        status.live = int(row["n"])
    covered_rows = (
        LedgerEntry.objects.filter(
            domain=domain, embedding_version=version, is_live=True, pending_version__isnull=True
        )
        .values("team_id")
        .annotate(n=Count("pk"))
    )
    for row in covered_rows:
        status = _team(teams, row["team_id"])
        if status is not None:
            status.covered = int(row["n"])
    # Per team: the change log holds keys only; the host's table says whose they are.
    changed_at = dict(
        EntityChange.objects.filter(domain=domain).values_list("entity_id", "changed_at")[:100_000]
    )
    owners = (
        config.get_queryset().filter(pk__in=to_pks(config, list(changed_at))).values_list("pk", "team_id")
    )
    for pk, team_id in owners:
        status = _team(teams, team_id)
        if status is None:
            continue
        status.pending += 1
        at = changed_at.get(key_of(pk))
        if at is not None and (status.oldest_pending_at is None or at < status.oldest_pending_at):
            status.oldest_pending_at = at
    failures = EntityFailure.objects.filter(domain=domain)
    for row in failures.values("team_id", "parked_at").annotate(n=Count("pk")):
        status = _team(teams, row["team_id"])
        if status is not None and row["parked_at"] is None:
            status.failing += int(row["n"])
        elif status is not None:
            status.parked += int(row["n"])
    return teams


def _spend(domain: str) -> tuple[Decimal, list[BatchApiJob]]:
    """What the domain's runs and Batch API jobs spent in the last SPEND_DAYS, and its jobs (those of
    the period, and any still going)."""
    since = timezone.now() - timedelta(days=SPEND_DAYS)
    runs = SyncRun.objects.filter(domain=domain, started_at__gte=since).aggregate(total=Sum("cost_usd"))[
        "total"
    ]
    # Batch API jobs pay for their work themselves (their writing runs cost nothing).
    jobs = list(
        BatchApiJob.objects.filter(domain=domain)
        .filter(Q(created_at__gte=since) | Q(status__in=BatchApiJob.ACTIVE))
        .defer("entity_ids")
    )
    paid = sum((Decimal(job.cost_usd) for job in jobs if job.created_at >= since), Decimal(0))
    return Decimal(runs or 0) + paid, jobs
