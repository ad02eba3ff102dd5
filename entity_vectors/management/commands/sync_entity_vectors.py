"""`manage.py sync_entity_vectors`: start a run of a domain (or every domain), optionally follow it."""

from __future__ import annotations

import time
import uuid
from typing import Any

from django.core.management.base import CommandError, CommandParser

from entity_vectors import conf
from entity_vectors.core.embedding_versions import served_version
from entity_vectors.core.inputs import SyncEntityVectorsInputs
from entity_vectors.core.registry import registered_domains
from entity_vectors.exceptions import EntityVectorsError
from entity_vectors.management.options import seconds
from entity_vectors.management.reporting import FollowingCommand, describe_run, landed_nothing
from entity_vectors.management.services import check_services
from entity_vectors.models import SyncRun

# How often --batch-api --wait polls its job (at most; ENTITY_VECTORS_BATCH_API_POLL_SECONDS if shorter).
BATCH_API_POLL_SECONDS = 2.0
FIELDS = (
    "start_dt",
    "summarize_batch_size",
    "embed_batch_size",
    "max_parallel_requests",
    "insert_batch_size",
    "delay_between_batches",
)


class Command(FollowingCommand):
    help = (
        "Start a vectorization run of a domain (--domain, repeatable) or of every registered domain "
        "(--all). On the embedded store the run executes in this process; with a ClickHouse server it "
        "is queued for the Celery workers. --wait follows the run with a progress bar and prints its "
        "counts; it exits 1 if a run failed, or had work and wrote nothing (partial with nothing "
        "landed), and 0 otherwise, a run with nothing to do included."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--domain", action="append", dest="domains", default=[], help="a domain (repeatable)"
        )
        parser.add_argument(
            "--all", action="store_true", help="every registered domain, one run each (instead of --domain)"
        )
        parser.add_argument(
            "--embedding-version", type=int, default=None, help="default: the version search serves"
        )
        parser.add_argument("--start-dt", default=None, help="ISO 8601; default: now")
        parser.add_argument("--summarize-batch-size", type=int, default=None)
        parser.add_argument("--embed-batch-size", type=int, default=None)
        parser.add_argument("--max-parallel-requests", type=int, default=None)
        parser.add_argument("--insert-batch-size", type=int, default=None)
        parser.add_argument(
            "--delay-between-batches",
            type=float,
            default=None,
            help="seconds between the starts of two batches; default: 0 when the summarizer and the "
            "embedder are both local, else 60 (ENTITY_VECTORS_DELAY_BETWEEN_BATCHES sets another)",
        )
        parser.add_argument("--wait", action="store_true", help="follow the run(s) and print their counts")
        parser.add_argument(
            "--inline",
            "--eager",
            dest="inline",
            action="store_true",
            help="run in this process even when workers could take it",
        )
        parser.add_argument(
            "--timeout", type=float, default=None, help="give up waiting after this many seconds"
        )
        parser.add_argument(
            "--batch-api",
            action="store_true",
            help="send the OpenAI work through the Batch API (half price, done within 24 hours); "
            "beat polls the job, or --wait polls it from here",
        )
        parser.add_argument(
            "--dry-run",
            action="store_true",
            help="print what a run started now would do and cost; send nothing, write nothing",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        domains = registered_domains() if options["all"] else list(dict.fromkeys(options["domains"]))
        if not domains:
            raise CommandError(
                f"give --domain NAME or --all; registered domains: {', '.join(registered_domains())}"
            )
        seconds("--timeout", options["timeout"])
        # Every run's inputs are checked before the first one starts.
        try:
            runs = [
                SyncEntityVectorsInputs.from_kwargs(**self._fields(domain, options)) for domain in domains
            ]
            inline = options["inline"] or conf.inline_by_default()
        except (EntityVectorsError, ValueError) as exc:
            raise CommandError(conf.redact(str(exc))) from exc
        if options["dry_run"]:
            from entity_vectors.workflow.dry_run import describe, dry_run

            for inputs in runs:
                try:
                    self.stdout.write(describe(dry_run(inputs)))
                except (EntityVectorsError, ValueError) as exc:
                    raise CommandError(conf.redact(str(exc))) from exc
            return
        if options["batch_api"]:
            for inputs in runs:
                self._batch_api(inputs, options["wait"], options["timeout"])
            return
        if not inline:
            # One line naming ClickHouse or Redis, not a traceback or "no worker"; a chdb://
            # directory belongs to the workers, not to this process.
            check_services(clickhouse=conf.clickhouse_target().kind == "http", redis=True)
        troubled = []
        for inputs in runs:
            if inline:
                run = self._run_here(inputs, show_progress=options["wait"])
            else:
                task_id = str(uuid.uuid4())
                self._queue(inputs, task_id)
                if not options["wait"]:
                    continue
                run = self.follow(inputs.domain, task_id, options["timeout"])
            self.stdout.write(describe_run(run))
            if run.status == SyncRun.Status.FAILED or landed_nothing(run):
                troubled.append(
                    f"{inputs.domain} ({run.status}{', nothing landed' if landed_nothing(run) else ''})"
                )
        if troubled and (options["wait"] or inline):
            raise CommandError(f"run failed: {', '.join(troubled)}")

    @staticmethod
    def _fields(domain: str, options: dict[str, Any]) -> dict[str, Any]:
        version = options["embedding_version"]
        fields: dict[str, Any] = {"domain": domain}
        fields["embedding_version"] = (
            served_version(domain) if version is None and domain in registered_domains() else version
        )
        if fields["embedding_version"] is None:
            fields.pop("embedding_version")
        for name in FIELDS:
            if options[name] is not None:
                fields[name] = options[name]
        return fields

    def _run_here(self, inputs: SyncEntityVectorsInputs, show_progress: bool) -> SyncRun:
        from entity_vectors.workflow import execute_inline, start_run

        bar = self.progress_bar(inputs.domain) if show_progress else None

        def on_batch(run: SyncRun) -> None:
            if bar is not None:
                bar.update(run.batches_done, run.batches_failed, run.batches_total)

        try:
            started = start_run(inputs, task_id=str(uuid.uuid4()), mode=SyncRun.Mode.INLINE)
            if started.batch_indexes:
                on_batch(started.run)  # the bar from the start: the first batch may take a while
            run = execute_inline(
                started, on_batch=on_batch, on_wait=bar.waiting if bar is not None else None
            )
        except EntityVectorsError as exc:
            raise CommandError(f"{inputs.domain}: {conf.redact(str(exc))}") from exc
        finally:
            if bar is not None:
                bar.close()
        return run

    def _batch_api(self, inputs: SyncEntityVectorsInputs, wait: bool, timeout: float | None) -> None:
        """Start a Batch API job (or show the one in progress); with --wait, poll it until done."""
        from entity_vectors.models import BatchApiJob
        from entity_vectors.workflow.batch_api import poll as batchapi_poll
        from entity_vectors.workflow.batch_api import submit as batchapi
        from entity_vectors.workflow.batch_api.jobs import active_job
        from entity_vectors.workflow.executor import write_job_inline

        started = time.monotonic()
        try:
            existing = active_job(inputs.domain)
            job = existing or batchapi.start_job(inputs)
            if existing is not None:
                self.stdout.write(f"{inputs.domain}: a Batch API job is already in progress")
            self.stdout.write(batchapi.describe(job))
            while wait and job.status in BatchApiJob.ACTIVE:
                if timeout is not None and time.monotonic() - started > timeout:
                    raise CommandError(
                        f"{inputs.domain}: gave up waiting after {timeout:.0f}s ({batchapi.describe(job)})"
                    )
                time.sleep(min(BATCH_API_POLL_SECONDS, conf.batch_api_poll_seconds()))
                result = batchapi_poll.poll_job(job.pk, write=write_job_inline)
                job = result.job
                if result.polled:
                    self.stdout.write(result.message)
        except EntityVectorsError as exc:
            raise CommandError(f"{inputs.domain}: {conf.redact(str(exc))}") from exc
        if not wait and job.status in BatchApiJob.ACTIVE:
            self.stdout.write(
                f"{inputs.domain}: beat polls the job every {conf.batch_api_poll_seconds()}s "
                f"(or: manage.py sync_entity_vectors --domain {inputs.domain} --batch-api --wait)"
            )
        if job.status == BatchApiJob.Status.FAILED:
            raise CommandError(f"{inputs.domain}: {batchapi.describe(job)}")

    def _queue(self, inputs: SyncEntityVectorsInputs, task_id: str) -> None:
        from kombu.exceptions import OperationalError

        from entity_vectors.tasks import sync_entities

        try:
            sync_entities.apply_async(kwargs=inputs.as_dict(), task_id=task_id)
        except OperationalError as exc:
            from celery import current_app

            broker = conf.redact(str(current_app.conf.broker_url))
            raise CommandError(
                f"cannot queue the run: the broker at {broker} is unreachable ({conf.redact(str(exc))}); "
                "start Redis or set CELERY_BROKER_URL"
            ) from None
        self.stdout.write(f"{inputs.domain}: queued as task {task_id} on queue {conf.queue()}")
