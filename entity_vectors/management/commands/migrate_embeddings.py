"""`manage.py migrate_embeddings --domain D --to-version N [--promote] [--retire M]`: a new embedding
version without downtime (backfill beside the served one, promote it, retire the old one)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import CommandError, CommandParser

from entity_vectors import conf
from entity_vectors.core.registry import get_entity_config
from entity_vectors.exceptions import EntityVectorsError
from entity_vectors.lifecycle.backfill import Backfill, coverage, resolve_spec, start_backfill
from entity_vectors.lifecycle.promotion import DEFAULT_MAX_RECALL_DROP, promote
from entity_vectors.lifecycle.retirement import check_retirement, retire
from entity_vectors.management.options import fraction, seconds, text
from entity_vectors.management.reporting import FollowingCommand, describe_run, landed_nothing
from entity_vectors.models import SyncRun
from entity_vectors.providers import EmbedderSpec

RETIRE_WAIT_SECONDS = 300.0


class Command(FollowingCommand):
    """Backfill, promote and retire embedding versions of one domain."""

    help = (
        "Move a domain to a new embedding version without downtime. --to-version N registers N "
        "(optionally with --embedder/--model/--dimensions) and starts a run that writes it beside the "
        "served version; search keeps serving the old one. --promote switches search to N once its "
        "coverage is complete and the search evaluation gate passes (or --force). --retire M stops "
        "writing M and tombstones its rows."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--domain", required=True, help="the domain to migrate")
        parser.add_argument("--to-version", type=int, default=None, metavar="N", help="the new version")
        parser.add_argument("--embedder", default=None, help="embedder of N (openai, hashing, wordllama)")
        parser.add_argument("--model", default=None, help="embedding model of N (openai only)")
        parser.add_argument("--dimensions", type=int, default=None, help="vector size of N")
        parser.add_argument(
            "--promote", action="store_true", help="make N the served version (no run is started)"
        )
        parser.add_argument(
            "--force", action="store_true", help="promote without the coverage and evaluation checks"
        )
        parser.add_argument(
            "--max-recall-drop",
            type=float,
            default=None,
            help=f"recall@5 that N may lose against the served version (default {DEFAULT_MAX_RECALL_DROP})",
        )
        parser.add_argument(
            "--skip-evaluation",
            action="store_true",
            help="promote on full coverage alone (no evaluation gate)",
        )
        parser.add_argument(
            "--retire", type=int, default=None, metavar="M", help="retire version M (never the served one)"
        )
        parser.add_argument(
            "--wait", action="store_true", help="follow the backfill run and print its counts"
        )
        parser.add_argument(
            "--inline",
            "--eager",
            dest="inline",
            action="store_true",
            help="run the backfill in this process even when workers could take it",
        )
        parser.add_argument(
            "--timeout",
            type=float,
            default=None,
            help=f"seconds to wait for a queued run (--wait), or for runs still writing M (default "
            f"{RETIRE_WAIT_SECONDS:.0f})",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        domain: str = options["domain"]
        target: int | None = options["to_version"]
        retiring: int | None = options["retire"]
        try:
            spec = self._check(options)
            if retiring is not None:
                check_retirement(domain, retiring, promoting=target if options["promote"] else None)
            if target is not None and not options["promote"]:
                self._backfill(domain, target, spec, options)
            if options["promote"]:
                assert target is not None
                self._promote(domain, target, options)
            if retiring is not None:
                self._retire(domain, retiring, options)
        except (EntityVectorsError, ValueError) as exc:
            raise CommandError(conf.redact(str(exc))) from exc

    @staticmethod
    def _check(options: dict[str, Any]) -> EmbedderSpec | None:
        """Refusals that need no database: option combinations and the embedder's spec."""
        target, retiring = options["to_version"], options["retire"]
        if target is None:
            for name in ("promote", "embedder", "model", "dimensions", "wait", "inline"):
                if options[name] not in (None, False):
                    raise CommandError(f"--{name.replace('_', '-')} needs --to-version N")
            if retiring is None:
                raise CommandError("give --to-version N (with --promote to promote it) and/or --retire M")
        given = [name for name in ("embedder", "model", "dimensions") if options[name] is not None]
        if options["promote"] and given:
            raise CommandError(
                f"--{given[0]} registers a version; it cannot be given with --promote (the version keeps "
                "the embedder it was backfilled with)"
            )
        if not options["promote"]:
            for name in ("force", "skip_evaluation", "max_recall_drop"):
                if options[name] not in (None, False):
                    raise CommandError(f"--{name.replace('_', '-')} needs --promote")
        if target is not None and target == retiring:
            raise CommandError(f"--retire={retiring}: cannot retire the version being migrated to")
        # Versions are checked where they are used (lifecycle.backfill); what the database or a
        # provider would refuse instead of a clear error is checked here.
        seconds("--timeout", options["timeout"])
        dimensions = options["dimensions"]
        if dimensions is not None and dimensions > conf.MAX_EMBEDDING_DIMENSIONS:
            raise CommandError(f"--dimensions={dimensions}: must be at most {conf.MAX_EMBEDDING_DIMENSIONS}")
        fraction("--max-recall-drop", options["max_recall_drop"])
        text("--domain", options["domain"], 64)
        for name, longest in (("embedder", 100), ("model", conf.MAX_MODEL_NAME)):
            if options[name]:  # an empty one gets its own message from resolve_spec
                text(f"--{name}", options[name], longest)
        get_entity_config(options["domain"])  # an unknown domain, before any version is read
        return resolve_spec(options["embedder"], options["model"], options["dimensions"])

    # -- backfill -------------------------------------------------------------------------------

    def _backfill(
        self, domain: str, version: int, spec: EmbedderSpec | None, options: dict[str, Any]
    ) -> None:
        bar = self.progress_bar(domain) if options["wait"] else None

        def on_batch(run: SyncRun) -> None:
            if bar is not None:
                bar.update(run.batches_done, run.batches_failed, run.batches_total)

        try:
            result = start_backfill(
                domain, version, spec, inline=True if options["inline"] else None, on_batch=on_batch
            )
        finally:
            if bar is not None:
                bar.close()
        record = result.record
        embedder = f"{record.identity}, {record.dimensions} dimensions"
        if result.created:
            self.stdout.write(
                f"{domain}: registered embedding version {version} ({embedder}) as backfilling; search keeps "
                f"serving version {result.served}"
            )
        else:
            self.stdout.write(
                f"{domain}: embedding version {version} ({embedder}) is already registered ({record.state}); "
                f"continuing its backfill; search keeps serving version {result.served}"
            )
        run = result.run
        if run is None:
            self.stdout.write(f"{domain}: backfill queued as task {result.task_id} on queue {conf.queue()}")
            if not options["wait"]:
                self.stdout.write(f"{result.coverage.describe()} (so far; the run is on the workers)")
                return
            run = self.follow(domain, result.task_id, options["timeout"])
        self.stdout.write(describe_run(run))
        self._report_coverage(result, run)

    def _report_coverage(self, result: Backfill, run: SyncRun) -> None:
        domain, version = result.domain, result.record.embedding_version
        covered = coverage(domain, version)
        self.stdout.write(covered.describe())
        if run.status == SyncRun.Status.SKIPPED:
            self.stdout.write(
                f"{domain}: the backfill run was skipped ({run.error}); version {version} is tracked, so the "
                "domain's next run writes it (or run this command again)"
            )
        elif covered.complete:
            self.stdout.write(
                f"next: manage.py migrate_embeddings --domain {domain} --to-version {version} --promote"
            )
        if run.status == SyncRun.Status.FAILED or landed_nothing(run):
            raise CommandError(f"{domain}: the backfill run of version {version} failed ({run.status})")

    # -- promote --------------------------------------------------------------------------------

    def _promote(self, domain: str, version: int, options: dict[str, Any]) -> None:
        drop = options["max_recall_drop"]
        result = promote(
            domain,
            version,
            max_recall_drop=DEFAULT_MAX_RECALL_DROP if drop is None else drop,
            force=options["force"],
            evaluate=not options["skip_evaluation"],
        )
        check = result.check
        self.stdout.write(check.coverage.describe())
        if check.already_serving:
            self.stdout.write(f"{domain}: version {version} already serves search; nothing to promote")
            return
        if check.forced:
            self.stdout.write("--force: promoting without the coverage and evaluation checks")
        elif check.gate is not None:
            self.stdout.write(check.gate.describe(version, check.served))
        if not result.promoted:
            raise CommandError(
                f"promotion of {domain} version {version} refused: {'; '.join(check.problems)}. "
                "--force promotes anyway"
            )
        self.stdout.write(
            f"{domain}: version {version} now serves search (was version {result.previous}), in every "
            f"process at once; version {result.previous} is still written until retired: manage.py "
            f"migrate_embeddings --domain {domain} --retire {result.previous}"
        )

    # -- retire ---------------------------------------------------------------------------------

    def _retire(self, domain: str, version: int, options: dict[str, Any]) -> None:
        wait = options["timeout"] if options["timeout"] is not None else RETIRE_WAIT_SECONDS
        result = retire(domain, version, wait_seconds=wait)
        if not result.complete:
            raise CommandError(
                f"{domain}: version {version} is retired (runs started from now on do not write it), but "
                f"run {', '.join(result.waiting_for)} started earlier and still writes it; its rows are not "
                f"tombstoned yet: run --retire {version} again once it finishes"
            )
        again = " (it was already retired)" if result.already_retired else ""
        self.stdout.write(
            f"{domain}: version {version} retired{again}; runs no longer write it; tombstoned "
            f"{result.tombstoned} rows of {result.entries} entities (row version {result.row_version})"
        )
