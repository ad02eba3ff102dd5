"""`manage.py entity_vectors_status`: per domain, pending entities, last runs, failures."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from entity_vectors import conf
from entity_vectors.exceptions import EntityVectorsError
from entity_vectors.models import SyncRun
from entity_vectors.registry import get_entity_config, registered_domains
from entity_vectors.workflow import count_pending


class Command(BaseCommand):
    help = "Per domain: entities waiting for a run, the last runs with their counts, the last errors."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--domain", action="append", dest="domains", default=[], help="only these domains"
        )
        parser.add_argument("--runs", type=int, default=5, help="how many recent runs to list")
        parser.add_argument("--embedding-version", type=int, default=None, help="default: the current one")

    def handle(self, *args: Any, **options: Any) -> None:
        domains = options["domains"] or registered_domains()
        version = (
            conf.embedding_version() if options["embedding_version"] is None else options["embedding_version"]
        )
        if version < 1:
            raise CommandError(f"--embedding-version={version}: must be at least 1")
        try:
            configs = [get_entity_config(domain) for domain in domains]
        except EntityVectorsError as exc:
            raise CommandError(str(exc)) from exc
        for config in configs:
            domain = config.domain_name
            runs = list(SyncRun.objects.filter(domain=domain).order_by("-started_at")[: options["runs"]])
            running = SyncRun.objects.filter(domain=domain, status=SyncRun.Status.RUNNING).first()
            self.stdout.write(self.style.MIGRATE_HEADING(f"{domain}"))
            self.stdout.write(
                f"  pending entities (embedding version {version}): {count_pending(config, version)}"
            )
            if running is not None:
                self.stdout.write(
                    f"  running: {running.id} since {running.started_at:%Y-%m-%d %H:%M:%S} UTC, "
                    f"{running.batches_done + running.batches_failed}/{running.batches_total} batches"
                )
            if not runs:
                self.stdout.write("  no runs yet")
            for run in runs:
                duration = (
                    f"{(run.finished_at - run.started_at).total_seconds():.1f}s" if run.finished_at else "-"
                )
                self.stdout.write(
                    f"  {run.started_at:%Y-%m-%d %H:%M:%S}  {run.status:<9} {duration:>8}  "
                    f"selected {run.selected}, summarized {run.summarized}, reused {run.summaries_reused}, "
                    f"failed {run.summary_failures}, inserted {run.inserted}, tombstoned {run.tombstoned}, "
                    f"requests {run.provider_requests}, tokens {run.prompt_tokens + run.completion_tokens + run.embedding_tokens}"
                )
            last_error = (
                SyncRun.objects.filter(domain=domain)
                .exclude(error="")
                .exclude(status=SyncRun.Status.SKIPPED)
                .order_by("-started_at")
                .first()
            )
            if last_error is not None:
                first_lines = "\n    ".join(last_error.error.splitlines()[:5])
                self.stdout.write(
                    f"  last error ({last_error.started_at:%Y-%m-%d %H:%M:%S}, {last_error.status}):"
                )
                self.stdout.write(f"    {first_lines}")
