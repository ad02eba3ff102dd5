"""`manage.py entity_vectors_status`: per domain, pending work, coverage, freshness, runs, failures, spend."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from entity_vectors import conf
from entity_vectors.core.registry import registered_domains
from entity_vectors.exceptions import EntityVectorsError
from entity_vectors.management.base import OneLineChecks
from entity_vectors.management.options import text
from entity_vectors.models import EntityFailure, SyncRun
from entity_vectors.ops.status import SPEND_DAYS, DomainStatus, domain_status
from entity_vectors.store import get_store

# Runs listed per domain: a screenful, not a query the database refuses (LIMIT 10**30).
MAX_RUNS = 1000


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


def _run_line(run: SyncRun) -> str:
    duration = f"{(run.finished_at - run.started_at).total_seconds():.1f}s" if run.finished_at else "-"
    tokens = run.prompt_tokens + run.completion_tokens + run.embedding_tokens
    return (
        f"  {run.started_at:%Y-%m-%d %H:%M:%S}  {run.kind:<9} {run.status:<9} {duration:>8}  "
        f"selected {run.selected}, summarized {run.summarized}, reused {run.summaries_reused}, "
        f"failed {run.summary_failures + run.embedding_failures}, inserted {run.inserted}, "
        f"tombstoned {run.tombstoned}, requests {run.provider_requests}, tokens {tokens}, "
        f"{conf.format_usd(run.cost_usd)}"
    )


def _clickhouse_problem() -> str | None:
    """None if the vectors' ClickHouse answers; else one line naming it (URL without its password)."""
    try:
        get_store()
    except EntityVectorsError as exc:
        return conf.redact(" ".join(str(exc).split()))
    return None


class Command(OneLineChecks, BaseCommand):
    help = (
        "Per domain: entities waiting, coverage of the served embedding version, age of the oldest "
        "change not yet handled, recent runs, failing and parked entities, spend over the last 30 days."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--domain", action="append", dest="domains", default=[], help="only these domains"
        )
        parser.add_argument("--runs", type=int, default=5, help="how many recent runs to list (0 or more)")
        parser.add_argument("--teams", action="store_true", help="also show each team's figures")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["runs"] < 0:
            raise CommandError(f"--runs={options['runs']}: must be 0 or more")
        if options["runs"] > MAX_RUNS:
            raise CommandError(f"--runs={options['runs']}: must be at most {MAX_RUNS}")
        for domain in options["domains"]:
            text("--domain", domain, 64)
        domains = options["domains"] or registered_domains()
        try:
            statuses = [domain_status(domain, runs=options["runs"]) for domain in domains]
        except EntityVectorsError as exc:
            raise CommandError(conf.redact(str(exc))) from exc
        problem = _clickhouse_problem()
        for status in statuses:
            self._show(status, options["teams"])
        if problem is not None:
            # What the database knows is shown above; the exit status and one line say what is wrong.
            raise CommandError(problem)

    def _show(self, status: DomainStatus, teams: bool) -> None:
        write = self.stdout.write
        write(self.style.MIGRATE_HEADING(status.domain))
        versions = ", ".join(
            f"v{record.embedding_version} {record.state} ({record.identity}, {record.dimensions} dims"
            f"{', backfilled' if record.backfilled_at else ''})"
            for record in status.versions
        )
        write(f"  served version {status.served_version}; versions: {versions or 'none written yet'}")
        advice = status.migration_advice()
        if advice is not None:
            write(self.style.WARNING(f"  {advice}"))
        write(
            f"  live entities {status.live}, with a current vector {status.covered} "
            f"(coverage {status.coverage:.1%}); pending {status.pending}, "
            f"oldest pending change {_age(status.oldest_pending_seconds)} old"
        )
        write(
            f"  failing entities {status.failing}, parked {status.parked}; "
            f"spend over the last {SPEND_DAYS} days {conf.format_usd(status.spend_usd)}"
        )
        if status.over_budget or status.owners_at_cap:
            owners = ", ".join(status.owners_at_cap) or "none now"
            write(
                f"  over budget: the last run left {status.over_budget} entities waiting; "
                f"owners at their monthly cap: {owners}"
            )
        if status.batch_api_job is not None:
            from entity_vectors.workflow.batch_api.submit import describe

            write(f"  {describe(status.batch_api_job)}")
        for failure in EntityFailure.objects.filter(domain=status.domain, parked_at__isnull=False)[:5]:
            write(
                f"    parked {failure.entity_id} after {failure.failures} failures: {failure.last_error[:200]}"
            )
        if teams:
            for team in sorted(status.teams.values(), key=lambda item: item.team_id):
                write(
                    f"    team {team.team_id}: live {team.live}, covered {team.covered} ({team.coverage:.0%}), "
                    f"pending {team.pending} (oldest {_age(team.oldest_pending_seconds)} old), "
                    f"failing {team.failing}, parked {team.parked}"
                )
        if status.running is not None:
            running = status.running
            write(
                f"  running: {running.id} ({running.kind}, {running.mode}) since "
                f"{running.started_at:%Y-%m-%d %H:%M:%S} UTC, "
                f"{running.batches_done + running.batches_failed}/{running.batches_total} batches"
            )
        if not status.runs:
            write("  no runs yet")
        for run in status.runs:
            write(_run_line(run))
        last_error = next(
            (run for run in status.runs if run.error and run.status != SyncRun.Status.SKIPPED), None
        )
        if last_error is not None:
            first_lines = "\n    ".join(last_error.error.splitlines()[:5])
            write(f"  last error ({last_error.started_at:%Y-%m-%d %H:%M:%S}, {last_error.status}):")
            write(f"    {first_lines}")
